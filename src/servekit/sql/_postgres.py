"""The PostgreSQL backend (psycopg 3): any number of workers on any number of
machines drain the same queues.

- A claim is one short transaction: ``UPDATE ... FROM (SELECT ... FOR UPDATE
  SKIP LOCKED LIMIT n)``, so concurrent workers never wait for each other's
  rows nor take the same one. No transaction stays open between calls. A row's
  acknowledgement, the reap and the next claim are one statement (the step:
  see ``_Statements``), so a worker going from row to row makes one round trip
  a row.
- Time is the database's (``now()``): the workers' clocks do not matter.
- ``enqueue`` sends ``NOTIFY servekit_jobs`` with the queue's name as payload,
  in the same transaction (so it is delivered at commit, not before).
  ``wait()`` listens on a second connection, and wakes for a notification of
  one of its queues, for the next due row (``run_at``, or a lease that runs
  out), or every ``poll_interval`` seconds (default 2) to see rows inserted by
  hand, without NOTIFY.
- When the database goes away, the call in flight raises ``QueueUnavailable``
  and the next call reconnects; failed attempts back off from
  ``reconnect_backoff`` (0.5 s) doubling to ``reconnect_backoff_cap`` (10 s),
  with log lines under ``servekit.sql`` (warning when lost, info when back).

psycopg is imported when a backend is made, not before: a missing psycopg is
``DriverMissing``, naming the ``servekit[postgres]`` extra.
"""

from __future__ import annotations

import contextlib
import logging
import select
import threading
import time
from datetime import UTC, datetime, timedelta
from functools import cache, cached_property
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast

from servekit.sql._backend import (
    BackendBase,
    NewJob,
    Stats,
    add_count,
    buried,
    dead_from_row,
    empty_stats,
    error_text,
    jobs_from_rows,
)
from servekit.sql._backoff import backoff_delay
from servekit.sql._errors import DriverMissing, QueueError, QueueUnavailable
from servekit.sql._schema import (
    CLAIMED,
    DEAD_COLUMNS,
    DEDUPE_TARGET,
    JOBS,
    META,
    MIGRATIONS,
    SCHEMA_VERSION,
    check_version,
    ddl,
)
from servekit.sql._url import QueueURL, check_queue_name

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from types import ModuleType

    import psycopg

    from servekit.sql._job import DeadJob, Job, JobState

__all__ = [
    "CHANNEL",
    "PostgresBackend",
    "import_psycopg",
    "postgres_insert",
    "postgres_insert_async",
]

logger = logging.getLogger("servekit.sql")

T = TypeVar("T")

#: The NOTIFY channel; the payload of a notification is the queue's name.
CHANNEL: Final = "servekit_jobs"
_PURGE_BATCH: Final = 10_000
_REAP_BATCH: Final = 1_000
#: enqueue_many: rows a statement (its arrays stay a few megabytes at most).
_ENQUEUE_CHUNK: Final = 10_000


def import_psycopg() -> ModuleType:
    """psycopg, or DriverMissing naming the extra that brings it."""
    try:
        import psycopg
    except ImportError as exc:
        raise DriverMissing(
            f"PostgreSQL queue URLs need psycopg 3: pip install 'servekit[postgres]' ({exc})"
        ) from None
    return psycopg


class _Statements:
    """The claim's statement for one set of queues, written once: a row's claim is
    the hot path, and these strings were built anew at every claim.

    ``step`` is a row's end and the next claim in one statement (one round trip,
    its own transaction): acknowledge the rows ``%(ids)s``/``%(attempts)s`` (none
    for a claim alone), give back the rows whose lease ran out (the reap; not
    those being acknowledged: one statement must not update a row twice), and
    claim ``%(limit)s`` rows. Its sub-statements share one snapshot, so the rows
    the reap makes pending are claimed by the next step, not this one. It returns
    a row per row claimed (``'claimed'`` and the CLAIMED columns), per row the
    reap made dead (``'dead'``, read by ``_dead_from_step``) and per row
    acknowledged (``'done'`` and its id)."""

    def __init__(self, queue_filter: tuple[str, dict[str, object]]) -> None:
        where, self.params = queue_filter
        claimed = [column.strip() for column in CLAIMED.split(",")]
        #: complete()'s statement (benchmarks/sql_ceiling.py runs it too).
        self.ack = acked = _held_sql(_DONE)
        last = "j.attempt >= COALESCE(j.max_attempts, %(max)s)"
        expired = (
            f"SELECT id FROM {JOBS} WHERE state = 'running' AND {where} "
            "AND lease_until <= now() AND id <> ALL(%(ids)s::bigint[]) "
            f"ORDER BY lease_until LIMIT {_REAP_BATCH} FOR UPDATE SKIP LOCKED"
        )
        reaped = (
            f"UPDATE {JOBS} AS j SET state = CASE WHEN {last} THEN 'dead' ELSE 'pending' END, "
            f"finished_at = CASE WHEN {last} THEN now() END, "
            "last_error = 'lease expired on attempt ' || j.attempt || ' (worker ' || "
            "COALESCE(j.owner, '?') || ' stopped extending it)', "
            "lease_until = NULL, updated_at = now() FROM expired WHERE j.id = expired.id "
            "RETURNING j.state, " + ", ".join(_dead_columns("j"))
        )
        candidates = (
            f"SELECT id FROM {JOBS} WHERE state = 'pending' AND {where} AND run_at <= now() "
            "ORDER BY priority DESC, run_at, id LIMIT %(limit)s FOR UPDATE SKIP LOCKED"
        )
        claim = (
            f"UPDATE {JOBS} AS j SET state = 'running', attempt = j.attempt + 1, "
            "owner = %(owner)s, lease_until = now() + %(lease)s, updated_at = now() "
            "FROM next WHERE j.id = next.id RETURNING "
            + ", ".join(f"j.{column}" for column in claimed)
        )
        # The dead rows in the CLAIMED columns' places (types must match), their
        # finished_at in lease_until's, and last_error after.
        dead = [
            "id", "queue", "payload", "encoding", "attempt", "max_attempts", "priority",
            "NULL", "created_at", "finished", "dedupe_key", "last_error",
        ]  # fmt: skip
        #: The step's sub-statements (benchmarks/sql_ceiling.py runs them too).
        self.ctes = (
            f"WITH acked AS ({acked}), expired AS MATERIALIZED ({expired}), "
            f"reaped ({', '.join(['state', *_DEAD_NAMES])}) AS ({reaped}), "
            f"next AS MATERIALIZED ({candidates}), claimed AS ({claim})"
        )
        self.step = (
            f"{self.ctes} SELECT 'claimed', {', '.join(claimed)}, NULL FROM claimed "
            f"UNION ALL SELECT 'dead', {', '.join(dead)} FROM reaped WHERE state = 'dead' "
            f"UNION ALL SELECT 'done', id{', NULL' * (len(dead) - 1)} FROM acked"
        )


#: DEAD_COLUMNS' names in the step's reaped rows.
_DEAD_NAMES: Final = (
    "id", "queue", "attempt", "max_attempts", "priority", "created_at", "finished",
    "last_error", "encoding", "payload", "dedupe_key",
)  # fmt: skip


def _dead_from_step(row: Any) -> DeadJob:
    """A ``DeadJob`` from a ``'dead'`` row of the step (see _Statements)."""
    return dead_from_row(
        (row[1], row[2], row[5], row[6], row[7], row[9], row[10], row[12], row[4], row[3],
         row[11]),
        _utc,
    )  # fmt: skip


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


def _run_at(job: NewJob) -> tuple[str, dict[str, object]]:
    """The SQL of ``job``'s run_at, and its parameter (if any)."""
    if job.run_at is None:
        return "now()", {}
    if isinstance(job.run_at, timedelta):
        return "now() + %(delay)s", {"delay": job.run_at}
    return "%(run_at)s", {"run_at": job.run_at}


def _insert_sql(job: NewJob) -> tuple[str, dict[str, object]]:
    run_at, params = _run_at(job)
    params |= {
        "queue": job.queue,
        "payload": job.data,
        "encoding": job.encoding,
        "priority": job.priority,
        "max_attempts": job.max_attempts,
        "dedupe_key": job.dedupe_key,
        "channel": CHANNEL,
    }
    conflict = "" if job.dedupe_key is None else f" ON CONFLICT {DEDUPE_TARGET} DO NOTHING"
    sql = (
        f"WITH ins AS (INSERT INTO {JOBS} (queue, payload, encoding, priority, run_at, "
        "max_attempts, dedupe_key) VALUES (%(queue)s, %(payload)s, %(encoding)s, "
        f"%(priority)s, {run_at}, %(max_attempts)s, %(dedupe_key)s){conflict} RETURNING id) "
        "SELECT id, pg_notify(%(channel)s, %(queue)s)::text FROM ins"
    )
    return sql, params


_EXISTING: Final = (
    f"SELECT id FROM {JOBS} WHERE queue = %(queue)s AND dedupe_key = %(dedupe_key)s "
    "AND state IN ('pending', 'running')"
)


def _undefined_table(exc: BaseException) -> bool:
    return getattr(exc, "sqlstate", None) == "42P01"


def postgres_insert(conn: psycopg.Connection[Any], job: NewJob) -> int:
    """Insert ``job`` through ``conn`` in whatever transaction it is in (none of
    ours, no commit), with its NOTIFY; return its id, or the live row's with
    the same ``dedupe_key``."""
    sql, params = _insert_sql(job)
    try:
        for _ in range(10):
            row = conn.execute(sql, params).fetchone()
            if row is None:  # a live row holds the dedupe_key
                row = conn.execute(_EXISTING, params).fetchone()
            if row is not None:
                return int(row[0])
    except Exception as exc:
        if _undefined_table(exc):
            check_version(None, "the PostgreSQL database")
        raise
    raise QueueError(f"could not insert nor find the row of dedupe_key {job.dedupe_key!r}")


async def postgres_insert_async(conn: psycopg.AsyncConnection[Any], job: NewJob) -> int:
    """``postgres_insert`` on an ``AsyncConnection``."""
    sql, params = _insert_sql(job)
    try:
        for _ in range(10):
            row = await (await conn.execute(sql, params)).fetchone()
            if row is None:
                row = await (await conn.execute(_EXISTING, params)).fetchone()
            if row is not None:
                return int(row[0])
    except Exception as exc:
        if _undefined_table(exc):
            check_version(None, "the PostgreSQL database")
        raise
    raise QueueError(f"could not insert nor find the row of dedupe_key {job.dedupe_key!r}")


def _reason(exc: BaseException) -> str:
    """A driver error on one line."""
    return " ".join(str(exc).split()) or type(exc).__name__


#: What completing a row sets.
_DONE = "state = 'done', lease_until = NULL, finished_at = now()"


@cache
def _held_sql(assignment: str) -> str:
    """``UPDATE ... SET assignment`` on the rows ``%(ids)s``/``%(attempts)s`` that
    ``%(owner)s`` still holds (same attempt, running), returning their ids; made once
    for each of the few assignments (complete, extend, release)."""
    return (
        f"UPDATE {JOBS} AS j SET {assignment}, updated_at = now() "
        "FROM unnest(%(ids)s::bigint[], %(attempts)s::integer[]) AS h(id, attempt) "
        "WHERE j.id = h.id AND j.attempt = h.attempt AND j.owner = %(owner)s "
        "AND j.state = 'running' RETURNING j.id"
    )


class PostgresBackend(BackendBase):
    """The queue in a PostgreSQL database (see the module's docstring).

    ``url`` is a ``postgresql://`` URL. The backend connects at once:
    ``QueueUnavailable`` if it cannot, ``DriverMissing`` without psycopg.
    Options beyond ``BackendBase``'s: ``connect_timeout`` (seconds, default 5;
    libpq rounds it to whole seconds, at least 2), ``poll_interval`` (default 2),
    ``reconnect_backoff`` and ``reconnect_backoff_cap``.
    """

    def __init__(
        self,
        url: QueueURL,
        *,
        connect_timeout: float = 5.0,
        poll_interval: float = 2.0,
        reconnect_backoff: float = 0.5,
        reconnect_backoff_cap: float = 10.0,
        **options: Any,
    ) -> None:
        if url.scheme != "postgresql":
            raise ValueError(f"{url} is not a postgresql:// URL")
        self._pg = import_psycopg()
        super().__init__(url, **options)
        if not poll_interval > 0 or not connect_timeout > 0:
            raise ValueError("poll_interval and connect_timeout must be above 0")
        self._connect_timeout = max(2, round(connect_timeout))
        self._poll_interval = float(poll_interval)
        self._reconnect_backoff = float(reconnect_backoff)
        self._reconnect_backoff_cap = float(reconnect_backoff_cap)
        self._lock = threading.RLock()
        self._listen_lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None
        self._listener: psycopg.Connection[Any] | None = None
        self._checked = False
        self._failures = 0  # connection attempts failed in a row
        self._retry_at = 0.0  # monotonic time before which no attempt is made
        self._lost_at: float | None = None
        with self._lock:
            self._connection(check=False)

    # -- connections ----------------------------------------------------------------------

    def _connect(self) -> psycopg.Connection[Any]:
        """A new autocommit connection; QueueUnavailable (with back-off) if none."""
        now = time.monotonic()
        where = self._url.redacted()
        if now < self._retry_at:
            raise QueueUnavailable(
                f"PostgreSQL at {where} is unreachable; next attempt in "
                f"{self._retry_at - now:.1f} s"
            )
        extra: dict[str, Any] = {}
        if "connect_timeout=" not in self._url.conninfo:
            extra["connect_timeout"] = self._connect_timeout
        if "application_name=" not in self._url.conninfo:
            extra["application_name"] = "servekit"
        try:
            conn = self._pg.connect(self._url.conninfo, autocommit=True, **extra)
        except self._pg.Error as exc:
            self._failures += 1
            delay = backoff_delay(
                self._failures, self._reconnect_backoff, self._reconnect_backoff_cap
            )
            self._retry_at = time.monotonic() + delay
            logger.warning(
                "cannot connect to PostgreSQL at %s (attempt %d): %s; next attempt in %.1f s",
                where, self._failures, _reason(exc), delay,
            )  # fmt: skip
            raise QueueUnavailable(
                f"cannot connect to PostgreSQL at {where}: {_reason(exc)}"
            ) from None
        try:
            # Until the table is first analyzed the planner believes it nearly empty
            # and claims through the _due index and a sort of every pending row (80 ms
            # a claim at 200,000 rows, against 0.1 ms on the claim index): a queue
            # just filled is exactly that table. The backend's queries have indexes
            # in their order; this makes a sort the planner's last resort, not
            # forbidden (a query with no such index still sorts).
            conn.execute("SET enable_sort = off")
        except self._pg.Error as exc:
            conn.close()
            raise QueueUnavailable(f"PostgreSQL at {where}: {_reason(exc)}") from None
        if self._failures or self._lost_at is not None:
            since = "" if self._lost_at is None else f" {time.monotonic() - self._lost_at:.1f} s"
            logger.info("connected to PostgreSQL at %s again%s after losing it", where, since)
            self._lost_at = None
        self._failures = 0
        self._retry_at = 0.0
        return cast("psycopg.Connection[Any]", conn)

    def _connection(self, *, check: bool = True) -> psycopg.Connection[Any]:
        if self._closed:
            raise QueueError(f"{self!r} is closed")
        if self._forked():
            # The parent's connections are its own: a child that closed them would
            # end the parent's sessions too. Forget them; connect anew.
            self._conn = self._listener = None
            self._checked = False
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            self._conn = conn = None
            self._checked = False
            conn = self._connect()
            self._conn = conn
        if check and not self._checked:
            try:
                found = self._version(conn)
            except self._pg.Error as exc:
                raise self._lost(exc) from None
            check_version(found, self._url.redacted())
            self._checked = True
        return conn

    def _version(self, conn: psycopg.Connection[Any]) -> int | None:
        row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (META,)).fetchone()
        if row is None or not row[0]:
            return None
        row = conn.execute(f"SELECT value FROM {META} WHERE key = 'schema_version'").fetchone()
        return None if row is None else int(row[0])

    def _lost(self, exc: BaseException) -> QueueUnavailable:
        """Forget the connection after ``exc``; the error to raise."""
        conn, self._conn = self._conn, None
        self._checked = False
        if conn is not None:
            with contextlib.suppress(Exception):  # it is broken already
                conn.close()
        where = self._url.redacted()
        if self._lost_at is None:
            self._lost_at = time.monotonic()
        logger.warning("lost the connection to PostgreSQL at %s: %s", where, _reason(exc))
        return QueueUnavailable(f"lost the connection to PostgreSQL at {where}: {_reason(exc)}")

    def _run(self, body: Callable[[psycopg.Connection[Any]], T], *, check: bool = True) -> T:
        """Run ``body(conn)`` (which opens its own transaction if it needs one);
        a lost connection becomes QueueUnavailable."""
        with self._lock:
            conn = self._connection(check=check)
            try:
                return body(conn)
            except (self._pg.OperationalError, self._pg.InterfaceError) as exc:
                # The connection is gone (server shut down, network, idle timeout...),
                # or in a state no one can trust: start again from a new one.
                raise self._lost(exc) from None
            except self._pg.errors.UndefinedTable:
                self._checked = False
                check_version(None, self._url.redacted())
                raise  # pragma: no cover - check_version raised

    def _write(self, body: Callable[[psycopg.Connection[Any]], T], *, check: bool = True) -> T:
        """``_run`` in one transaction."""

        def transaction(conn: psycopg.Connection[Any]) -> T:
            with conn.transaction():
                return body(conn)

        return self._run(transaction, check=check)

    def _queue_filter(self) -> tuple[str, dict[str, object]]:
        if len(self._queues) == 1:
            return "queue = %(queue)s", {"queue": self._queues[0]}
        return "queue = ANY(%(queues)s)", {"queues": list(self._queues)}

    # -- schema ---------------------------------------------------------------------------

    def init(self) -> None:
        def body(conn: psycopg.Connection[Any]) -> None:
            # One init at a time: CREATE ... IF NOT EXISTS races with itself.
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (JOBS,))
            found = self._version(conn)
            if found is not None and found > SCHEMA_VERSION:
                check_version(found, self._url.redacted())
            for version in range(found or SCHEMA_VERSION, SCHEMA_VERSION):
                for statement in MIGRATIONS[version]["postgresql"]:
                    conn.execute(statement)
            for statement in ddl("postgresql"):
                conn.execute(statement)
            conn.execute(
                f"INSERT INTO {META} (key, value) VALUES ('schema_version', %s) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(SCHEMA_VERSION),),
            )

        self._write(body, check=False)
        self._checked = True

    # -- worker ---------------------------------------------------------------------------

    def claim(self, limit: int = 1, lease: float = 30.0) -> list[Job]:
        return self.complete_and_claim([], limit, lease)[1]

    def complete_and_claim(
        self, jobs: Iterable[Job], limit: int = 1, lease: float = 30.0
    ) -> tuple[list[Job], list[Job]]:
        lease_for = timedelta(seconds=self._check_claim(limit, lease))
        jobs = list(jobs)
        dead: list[DeadJob] = []
        done, claimed = self._run(lambda conn: self._step(conn, jobs, limit, lease_for, dead))
        self._report_dead(dead)
        return done, claimed

    def _step(
        self,
        conn: psycopg.Connection[Any],
        jobs: list[Job],
        limit: int,
        lease: timedelta,
        dead: list[DeadJob],
    ) -> tuple[list[Job], list[Job]]:
        """The step statement (see _Statements): ``jobs`` done, then the rows claimed;
        the rows buried (the reap's, an undecodable payload's) go to ``dead``."""
        statements = self._statements
        params = {
            **statements.params, "owner": self._owner, "lease": lease, "limit": limit,
            "max": self._max_attempts, "ids": [job.id for job in jobs],
            "attempts": [job.attempt for job in jobs],
        }  # fmt: skip
        done: set[int] = set()
        while True:
            claimed = []
            for row in conn.execute(statements.step, params).fetchall():
                kind = row[0]
                if kind == "claimed":
                    claimed.append(row[1:12])
                elif kind == "done":
                    done.add(row[1])
                else:
                    dead.append(_dead_from_step(row))
            new, undecodable = jobs_from_rows(claimed, self._max_attempts, _utc)
            if undecodable:
                dead.extend(self._bury(conn, undecodable))
            if new or not claimed:
                return [job for job in jobs if job.id in done], new
            params["ids"] = params["attempts"] = []  # done: claim again, alone

    @cached_property
    def _statements(self) -> _Statements:
        return _Statements(self._queue_filter())

    def _bury(self, conn: psycopg.Connection[Any], rows: list[tuple[Any, str]]) -> list[DeadJob]:
        """Send claimed rows (with the reason for each) to the dead state, if this
        worker still holds them (the step has committed: a lease that ran out since
        would make the row another's); return those."""
        dead = []
        for row, reason in rows:
            found = conn.execute(
                f"UPDATE {JOBS} SET state = 'dead', last_error = %s, lease_until = NULL, "
                "finished_at = now(), updated_at = now() WHERE id = %s AND attempt = %s "
                "AND owner = %s AND state = 'running' RETURNING finished_at",
                (reason, row[0], row[4], self._owner),
            ).fetchone()
            if found is not None:
                dead.append(buried(row, reason, _utc(cast("datetime", found[0])), _utc))
        return dead

    def _held(
        self, jobs: list[Job], assignment: str, extra: dict[str, object] | None = None
    ) -> list[Job]:
        """``UPDATE ... SET assignment`` on the rows of ``jobs`` this worker still
        holds (same attempt, same owner, running); return those."""
        if not jobs:
            return []
        return self._run(lambda conn: self._held_in(conn, jobs, assignment, extra))

    def _held_in(
        self,
        conn: psycopg.Connection[Any],
        jobs: list[Job],
        assignment: str,
        extra: dict[str, object] | None = None,
    ) -> list[Job]:
        """_held's statement, in the caller's transaction."""
        if not jobs:
            return []
        params: dict[str, object] = {
            "ids": [job.id for job in jobs],
            "attempts": [job.attempt for job in jobs],
            "owner": self._owner,
            **(extra or {}),
        }
        held = {row[0] for row in conn.execute(_held_sql(assignment), params).fetchall()}
        return [job for job in jobs if job.id in held]

    def extend(self, jobs: Iterable[Job], lease: float) -> list[Job]:
        lease_for = timedelta(seconds=self._check_lease(lease))
        return self._held(list(jobs), "lease_until = now() + %(lease)s", {"lease": lease_for})

    def complete(self, job: Job) -> bool:
        return bool(self.complete_many([job]))

    def complete_many(self, jobs: Iterable[Job]) -> list[Job]:
        return self._held(list(jobs), _DONE)

    def fail(
        self, job: Job, error: BaseException | str, *, permanent: bool = False
    ) -> JobState | None:
        final = "(%(permanent)s OR attempt >= COALESCE(max_attempts, %(max)s))"
        params = {
            "permanent": bool(permanent),
            "max": self._max_attempts,
            "delay": timedelta(seconds=self._retry_delay(job.attempt)),
            "error": error_text(error),
            "id": job.id,
            "attempt": job.attempt,
            "owner": self._owner,
        }
        sql = (
            f"UPDATE {JOBS} SET state = CASE WHEN {final} THEN 'dead' ELSE 'pending' END, "
            f"run_at = CASE WHEN {final} THEN run_at ELSE now() + %(delay)s END, "
            f"finished_at = CASE WHEN {final} THEN now() END, last_error = %(error)s, "
            "lease_until = NULL, updated_at = now() WHERE id = %(id)s AND attempt = %(attempt)s "
            "AND owner = %(owner)s AND state = 'running' RETURNING state"
        )
        row = self._run(lambda conn: conn.execute(sql, params).fetchone())
        state = None if row is None else cast("JobState", row[0])
        if state == "dead":
            logger.info("queue %s: row %d is dead after attempt %d", job.queue, job.id, job.attempt)
        return state

    def release(self, job: Job) -> bool:
        return bool(self.release_many([job]))

    def release_many(self, jobs: Iterable[Job]) -> list[Job]:
        released = self._held(
            list(jobs),
            "state = 'pending', attempt = j.attempt - 1, owner = NULL, lease_until = NULL",
        )
        if released:
            self._notify({job.queue for job in released})
        return released

    def next_due(self) -> float | None:
        where, params = self._queue_filter()
        sql = (
            # Not GREATEST(0, ...): it ignores a NULL (no row) and would answer 0.
            "SELECT EXTRACT(EPOCH FROM LEAST("
            f"(SELECT min(run_at) FROM {JOBS} WHERE state = 'pending' AND {where}), "
            f"(SELECT min(lease_until) FROM {JOBS} WHERE state = 'running' AND {where})"
            ") - now())::float8"
        )
        row = self._run(lambda conn: conn.execute(sql, params).fetchone())
        return None if row is None or row[0] is None else max(0.0, float(row[0]))

    def wait(self, timeout: float | None) -> bool:
        """See ``Backend.wait``: LISTEN/NOTIFY, the next due row, and a poll
        every ``poll_interval`` seconds. While the database is unreachable it
        sleeps until the next reconnection attempt (or ``timeout``) and returns
        True, so that the caller's next call tries again."""
        start = time.monotonic()
        deadline = None if timeout is None else start + max(0.0, timeout)
        with self._listen_lock:
            try:
                listener = self._listening()
                if self._drain(listener):
                    return True
                due = self.next_due()
            except QueueUnavailable:
                pause = max(self._retry_at - time.monotonic(), self._reconnect_backoff)
                if deadline is not None:
                    pause = min(pause, deadline - time.monotonic())
                self._sleep(pause)
                return True
            if due is not None and due <= 0:
                return True
            due_at = None if due is None else start + due
            poll_at = start + self._poll_interval
            while not self._closed:
                now = time.monotonic()
                if due_at is not None and now >= due_at:
                    return True
                if deadline is not None and now >= deadline:
                    return False
                if now >= poll_at:
                    due = self.next_due()
                    if due is not None and due <= 0:
                        return True
                    due_at = None if due is None else now + due
                    poll_at = now + self._poll_interval
                pause = min(x for x in (due_at, deadline, poll_at) if x is not None) - now
                readable = self._poll(listener, pause)
                if readable is None:  # woken: wake() or close()
                    return True
                if readable and self._drain(listener):
                    return True
            return False

    def _listening(self) -> psycopg.Connection[Any]:
        """The LISTEN connection, (re)connected if need be."""
        if self._forked():
            self._conn = self._listener = None
            self._checked = False
        listener = self._listener
        if listener is None or listener.closed or listener.broken:
            self._listener = None
            with self._lock:
                listener = self._connect()
            try:
                listener.execute(f"LISTEN {CHANNEL}")
            except self._pg.Error as exc:
                listener.close()
                raise QueueUnavailable(f"LISTEN failed: {_reason(exc)}") from None
            self._listener = listener
        return listener

    def _poll(self, listener: psycopg.Connection[Any], seconds: float) -> bool | None:
        """Wait up to ``seconds`` for the listener's socket or the waker: True if
        the socket is readable, False on timeout, None if woken."""
        with self._waker_lock:
            if self._closed:
                return None
            poller = select.poll()
            poller.register(listener.fileno(), select.POLLIN)
            poller.register(self._waker.fileno(), select.POLLIN)
            events = dict(poller.poll(max(seconds, 0.0) * 1000))
            if self._waker.fileno() in events:
                self._waker.drain()
                return None
            return bool(events)

    def _drain(self, listener: psycopg.Connection[Any]) -> bool:
        """Read the notifications received; True if one is for our queues, or if
        the connection dropped (something may have been missed)."""
        pgconn = listener.pgconn
        try:
            pgconn.consume_input()
        except self._pg.OperationalError as exc:
            logger.warning("lost the LISTEN connection to %s: %s", self._url, _reason(exc))
            self._listener = None
            with contextlib.suppress(Exception):  # it is broken already
                listener.close()
            return True
        ours = False
        while (notify := pgconn.notifies()) is not None:
            if notify.extra.decode(errors="replace") in self._queues:
                ours = True
        return ours

    def _notify(self, queues: Iterable[str]) -> None:
        names = sorted(queues)

        def body(conn: psycopg.Connection[Any]) -> None:
            for name in names:
                conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, name))

        self._run(body)

    # -- producer -------------------------------------------------------------------------

    def enqueue(
        self,
        payload: object,
        *,
        queue: str | None = None,
        priority: int = 0,
        run_at: datetime | timedelta | None = None,
        dedupe_key: str | None = None,
        max_attempts: int | None = None,
    ) -> int:
        job = self._new_job(payload, queue, priority, run_at, dedupe_key, max_attempts)
        return self._write(lambda conn: postgres_insert(conn, job))

    def enqueue_many(
        self,
        payloads: Iterable[object],
        *,
        queue: str | None = None,
        priority: int = 0,
        run_at: datetime | timedelta | None = None,
        max_attempts: int | None = None,
    ) -> list[int]:
        jobs = [
            self._new_job(payload, queue, priority, run_at, None, max_attempts)
            for payload in payloads
        ]
        if not jobs:
            return []
        # One statement a chunk: the payloads as arrays, unnested in their order. An
        # identity column numbers rows in the order the INSERT takes them (ORDER BY n),
        # so the ids sorted are the payloads' ids in order, whatever order RETURNING
        # gives them in (which PostgreSQL does not promise).
        first = jobs[0]
        run_at_sql, params = _run_at(first)
        params |= {
            "queue": first.queue,
            "priority": first.priority,
            "max_attempts": first.max_attempts,
        }
        sql = (
            f"INSERT INTO {JOBS} (queue, payload, encoding, priority, run_at, max_attempts) "
            f"SELECT %(queue)s, p.payload, p.encoding, %(priority)s, {run_at_sql}, "
            "%(max_attempts)s FROM unnest(%(payloads)s::bytea[], %(encodings)s::text[]) "
            "WITH ORDINALITY AS p(payload, encoding, n) ORDER BY p.n RETURNING id"
        )

        def body(conn: psycopg.Connection[Any]) -> list[int]:
            ids: list[int] = []
            for start in range(0, len(jobs), _ENQUEUE_CHUNK):
                chunk = jobs[start : start + _ENQUEUE_CHUNK]
                params["payloads"] = [job.data for job in chunk]
                params["encodings"] = [job.encoding for job in chunk]
                rows = conn.execute(sql, params).fetchall()
                ids.extend(sorted(int(row[0]) for row in rows))
            # Once: PostgreSQL folds a transaction's identical notifications anyway.
            conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, first.queue))
            return ids

        return self._write(body)

    # -- operator -------------------------------------------------------------------------

    def stats(self) -> Stats:
        def body(conn: psycopg.Connection[Any]) -> Stats:
            stats = empty_stats(self._queues)
            for queue, state, count in conn.execute(
                f"SELECT queue, state, count(*) FROM {JOBS} GROUP BY queue, state"
            ):
                add_count(stats, queue, state, count)
            return stats

        return self._run(body)

    def dead(self, queue: str | None = None, limit: int = 100) -> list[DeadJob]:
        sql = f"SELECT {DEAD_COLUMNS} FROM {JOBS} WHERE state = 'dead'"
        params: dict[str, object] = {"limit": limit}
        if queue is not None:
            sql += " AND queue = %(queue)s"
            params["queue"] = check_queue_name(queue)
        sql += " ORDER BY id DESC LIMIT %(limit)s"
        return self._run(
            lambda conn: [dead_from_row(row, _utc) for row in conn.execute(sql, params)]
        )

    def retry(self, ids: Iterable[int]) -> int:
        ids = [int(i) for i in ids]
        if not ids:
            return 0
        return self._retry("id = ANY(%(ids)s)", {"ids": ids})

    def retry_all(self, queue: str | None = None) -> int:
        if queue is None:
            return self._retry("true", {})
        return self._retry("queue = %(queue)s", {"queue": check_queue_name(queue)})

    def _retry(self, where: str, params: dict[str, object]) -> int:
        sql = (
            f"UPDATE {JOBS} SET state = 'pending', attempt = 0, run_at = now(), owner = NULL, "
            "lease_until = NULL, finished_at = NULL, updated_at = now() WHERE id IN ("
            "SELECT id FROM (SELECT id, queue, dedupe_key, row_number() OVER ("
            "PARTITION BY queue, dedupe_key ORDER BY id DESC) AS n FROM "
            f"{JOBS} WHERE state = 'dead' AND {where}) AS d WHERE d.dedupe_key IS NULL "
            f"OR (d.n = 1 AND NOT EXISTS (SELECT 1 FROM {JOBS} AS a WHERE a.queue = d.queue "
            "AND a.dedupe_key = d.dedupe_key AND a.state IN ('pending', 'running')))) "
            "RETURNING queue"
        )

        def body(conn: psycopg.Connection[Any]) -> list[str]:
            queues = [row[0] for row in conn.execute(sql, params)]
            for queue in sorted(set(queues)):
                conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, queue))
            return queues

        return len(self._write(body))

    def purge(self, older_than: float, queue: str | None = None) -> int:
        if not older_than >= 0:
            raise ValueError(f"older_than must be seconds >= 0, not {older_than!r}")
        where = "" if queue is None else " AND queue = %(queue)s"
        sql = (
            f"DELETE FROM {JOBS} WHERE id IN (SELECT id FROM {JOBS} WHERE state = 'done' "
            f"AND finished_at < now() - %(age)s{where} LIMIT {_PURGE_BATCH})"
        )
        params: dict[str, object] = {"age": timedelta(seconds=older_than)}
        if queue is not None:
            params["queue"] = check_queue_name(queue)
        total = 0
        while True:
            count = self._run(lambda conn: conn.execute(sql, params).rowcount)
            total += count
            if count < _PURGE_BATCH:
                return total

    def close(self) -> None:
        if self._closed:
            return
        self._close_waker()
        forked = self._forked()
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None and not forked:
                conn.close()
        with self._listen_lock:
            listener, self._listener = self._listener, None
            if listener is not None and not forked:
                listener.close()


def _dead_columns(alias: str) -> list[str]:
    """DEAD_COLUMNS qualified by ``alias`` (the UPDATE ... FROM of a reap names two tables)."""
    return [
        f"{alias}.id", f"{alias}.queue", f"{alias}.attempt", f"{alias}.max_attempts",
        f"{alias}.priority", f"{alias}.created_at",
        f"COALESCE({alias}.finished_at, {alias}.updated_at)",
        f"COALESCE({alias}.last_error, '')", f"{alias}.encoding", f"{alias}.payload",
        f"{alias}.dedupe_key",
    ]  # fmt: skip
