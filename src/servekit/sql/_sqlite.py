"""The SQLite backend: the embedded default, one database file on one machine.

Settings, and why:

- WAL journal: readers never block the writer, nor the writer readers.
- ``BEGIN IMMEDIATE`` for every write transaction: the write lock is taken at
  the start, so two writers wait for each other in the busy handler instead of
  one failing with "database is locked" when it upgrades a read lock.
- ``busy_timeout`` (default 5 s): how long a writer waits for the lock. If it
  is still busy after that, the transaction is tried again ``busy_retries``
  times (default 3), each logged as a warning, and only then does
  ``QueueUnavailable`` reach the caller; SQLite's "database is locked" never does.
- ``synchronous=NORMAL`` by default: with WAL, a commit is durable across a
  crash of the application (the process, or every process); only a crash of
  the operating system or a power cut can lose the last transactions (never
  corrupt the file). ``FULL`` syncs the WAL at every commit and makes that
  loss impossible too, at several times the cost per commit (measured on one
  ext4 virtual disk: a bare one-row commit 6-10x slower, this backend's
  claim-and-acknowledge 3x slower). Pass ``synchronous="FULL"`` for it.

Time is Python's: ``clock`` (default ``time.time``, Unix seconds) is read
once per transaction and compared with the times stored, so every process on
the file must share a wall clock (one machine: they do). ``wait()`` polls:
every ``poll_interval`` seconds (default 0.05) it reads ``PRAGMA
data_version``, which changes when another connection commits, and only then
looks for the next due row; a new row is seen within that interval.
"""

from __future__ import annotations

import itertools
import logging
import os
import sqlite3
import threading
import time
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar, cast

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
from servekit.sql._errors import QueueError, QueueUnavailable
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
    from collections.abc import Callable, Iterable, Sequence

    from servekit.sql._job import DeadJob, Job, JobState

__all__ = ["SQLiteBackend", "sqlite_insert"]

logger = logging.getLogger("servekit.sql")

T = TypeVar("T")
Synchronous = Literal["OFF", "NORMAL", "FULL", "EXTRA"]

_SQLITE_BUSY: Final = 5
_SQLITE_LOCKED: Final = 6
#: SQLITE_READONLY, SQLITE_IOERR, SQLITE_FULL, SQLITE_CANTOPEN, SQLITE_PROTOCOL.
_UNAVAILABLE: Final = frozenset({8, 10, 13, 14, 15})
_PURGE_BATCH: Final = 10_000


_COMPLETE: Final = (
    f"UPDATE {JOBS} SET state = 'done', lease_until = NULL, finished_at = ?, updated_at = ? "
    "WHERE id = ? AND attempt = ? AND owner = ? AND state = 'running'"
)

#: What a claim's transaction returns: the reap's rows, then the rows claimed, undecoded.
_Claimed = tuple[list[Any], list[Any]]


class _Statements:
    """The claim's statements for one set of queues, written once: a row's claim is
    the hot path, and these strings were built anew at every claim."""

    def __init__(self, queues: tuple[str, ...]) -> None:
        self._one_queue = len(queues) == 1
        self._queues = queues
        last = "attempt >= COALESCE(max_attempts, ?)"
        self.reap = (
            f"UPDATE {JOBS} SET state = CASE WHEN {last} THEN 'dead' ELSE 'pending' END, "
            f"finished_at = CASE WHEN {last} THEN ? END, "
            "last_error = 'lease expired on attempt ' || attempt || ' (worker ' || "
            "COALESCE(owner, '?') || ' stopped extending it)', "
            f"lease_until = NULL, updated_at = ? WHERE state = 'running' AND "
            f"queue IN ({_placeholders(queues)}) AND lease_until <= ? "
            f"RETURNING state, {DEAD_COLUMNS}"
        )
        self.claim = (
            f"UPDATE {JOBS} SET state = 'running', attempt = attempt + 1, owner = ?, "
            f"lease_until = ?, updated_at = ? WHERE id IN ({self._candidates()}) "
            f"RETURNING {CLAIMED}"
        )

    def _candidates(self) -> str:
        """The ids a claim takes, best first: per queue, the claim index's order
        (INDEXED BY: without statistics SQLite may pick the run_at index and sort
        every pending row), then merged across the queues."""
        one = (
            f"SELECT * FROM (SELECT id, priority, run_at FROM {JOBS} INDEXED BY {JOBS}_claim "
            "WHERE state = 'pending' AND queue = ? AND run_at <= ? "
            "ORDER BY priority DESC, run_at, id LIMIT ?)"
        )
        if self._one_queue:
            return f"SELECT id FROM ({one})"
        merged = " UNION ALL ".join([one] * len(self._queues))
        return f"SELECT id FROM ({merged}) ORDER BY priority DESC, run_at, id LIMIT ?"

    def candidate_params(self, now: float, limit: int) -> tuple[object, ...]:
        if self._one_queue:
            return (self._queues[0], now, limit)
        params: tuple[object, ...] = ()
        for queue in self._queues:
            params += (queue, now, limit)
        return (*params, limit)


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)
    return "locked" in str(exc) or "busy" in str(exc)  # pragma: no cover - Python < 3.11


def _is_unavailable(exc: sqlite3.OperationalError) -> bool:
    """The database file cannot be used (I/O, disk full, cannot open, read-only), as
    opposed to an error of the statement (which is a bug: raised as it is)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in _UNAVAILABLE


def _timestamp(run_at: datetime | timedelta | None, now: float) -> float:
    if run_at is None:
        return now
    if isinstance(run_at, timedelta):
        return now + run_at.total_seconds()
    return run_at.timestamp()


def _placeholders(values: Sequence[object]) -> str:
    return ",".join("?" * len(values))


def sqlite_insert(conn: sqlite3.Connection, job: NewJob, now: float) -> int:
    """Insert ``job`` through ``conn``, in whatever transaction it is in (no
    BEGIN, no COMMIT); return the new row's id, or the live row's with the same
    ``dedupe_key``. ``now`` is the clock's time (Unix seconds)."""
    params = (
        job.queue, job.data, job.encoding, job.priority, _timestamp(job.run_at, now),
        job.max_attempts, job.dedupe_key, now, now,
    )  # fmt: skip
    insert = (
        f"INSERT INTO {JOBS} (queue, payload, encoding, priority, run_at, max_attempts, "
        "dedupe_key, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )
    try:
        if job.dedupe_key is None:
            return int(conn.execute(insert + " RETURNING id", params).fetchone()[0])
        row = conn.execute(
            f"{insert} ON CONFLICT {DEDUPE_TARGET} DO NOTHING RETURNING id", params
        ).fetchone()
        if row is None:
            row = conn.execute(
                f"SELECT id FROM {JOBS} WHERE queue = ? AND dedupe_key = ? "
                "AND state IN ('pending', 'running')",
                (job.queue, job.dedupe_key),
            ).fetchone()
        return int(row[0])
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            check_version(None, "the SQLite database")
        raise


class SQLiteBackend(BackendBase):
    """The queue in a SQLite file (see the module's docstring for the settings).

    ``url`` is a ``sqlite:`` URL (parsed or not). The file is opened (created
    if missing) at once: ``QueueUnavailable`` if it cannot be. The tables are
    checked at the first operation other than ``init()``. Options beyond
    ``BackendBase``'s: ``busy_timeout`` and ``busy_retries``, ``synchronous``,
    ``poll_interval`` (seconds between two looks of ``wait()``) and ``clock``.
    """

    def __init__(
        self,
        url: QueueURL,
        *,
        busy_timeout: float = 5.0,
        busy_retries: int = 3,
        synchronous: Synchronous = "NORMAL",
        poll_interval: float = 0.05,
        clock: Callable[[], float] = time.time,
        **options: Any,
    ) -> None:
        if url.scheme != "sqlite":
            raise ValueError(f"{url} is not a sqlite: URL")
        super().__init__(url, **options)
        if synchronous not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"synchronous must be OFF, NORMAL, FULL or EXTRA, not {synchronous!r}")
        if not busy_timeout >= 0 or not poll_interval > 0:
            raise ValueError("busy_timeout must be >= 0 and poll_interval > 0")
        if busy_retries < 0:
            raise ValueError("busy_retries must be >= 0")
        self._busy_timeout = float(busy_timeout)
        self._busy_retries = busy_retries
        self._synchronous = synchronous
        self._poll_interval = float(poll_interval)
        self._clock = clock
        self._lock = threading.RLock()
        self._checked = False
        self._conn: sqlite3.Connection | None = None
        path = self._path()
        if os.path.exists(path):
            self._conn = self._open()  # a file we cannot use fails here, not at first use
        elif not os.path.isdir(os.path.dirname(path) or "."):
            raise QueueUnavailable(
                f"cannot open the SQLite database {path!r}: its folder does not exist"
            )

    # -- connection -----------------------------------------------------------------------

    def _path(self) -> str:
        return os.path.expanduser(self._url.path)

    def _open(self, *, create: bool = False) -> sqlite3.Connection:
        """A connection to the file; only init() (``create``) may make the file: a
        producer or a command with a mistyped path must not leave an empty one."""
        path = self._path()
        if not create and not os.path.exists(path):
            check_version(None, self._url.redacted())  # raises: run init
        try:
            conn = sqlite3.connect(
                path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise QueueUnavailable(
                f"cannot open the SQLite database {path!r}: {exc} (does its directory exist?)"
            ) from None
        try:
            mode = self._retrying(lambda: conn.execute("PRAGMA journal_mode=WAL").fetchone()[0])
            if str(mode).lower() != "wal":
                logger.warning("%s: journal_mode is %s, not wal (not a file?)", path, mode)
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _connection(self, *, check: bool = True) -> sqlite3.Connection:
        if self._closed:
            raise QueueError(f"{self!r} is closed")
        if self._forked() or self._conn is None:
            # A connection must not cross a fork: the child opens its own and leaves
            # the parent's alone (closing it could disturb the parent's locks).
            self._conn = None
            self._checked = False
            self._conn = self._open(create=not check)
        if check and not self._checked:
            check_version(self._version(self._conn), self._url.redacted())
            self._checked = True
        return self._conn

    def _version(self, conn: sqlite3.Connection) -> int | None:
        def read() -> int | None:
            if not conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (META,)
            ).fetchone():
                return None
            row = conn.execute(f"SELECT value FROM {META} WHERE key = 'schema_version'").fetchone()
            return None if row is None else int(row[0])

        return self._retrying(read)

    def _retrying(self, operation: Callable[[], T]) -> T:
        """Run ``operation``, again when SQLite stayed busy past busy_timeout."""
        for attempt in itertools.count(1):
            try:
                return operation()
            except sqlite3.OperationalError as exc:
                if _is_busy(exc) and attempt <= self._busy_retries:
                    logger.warning(
                        "%s still locked by another writer after %.1f s; trying again (%d of %d)",
                        self._url.path, self._busy_timeout, attempt, self._busy_retries,
                    )  # fmt: skip
                    continue
                if _is_busy(exc):
                    raise QueueUnavailable(
                        f"{self._url.path} stayed locked by another writer for "
                        f"{(self._busy_retries + 1) * self._busy_timeout:.0f} s"
                    ) from None
                if _is_unavailable(exc):
                    raise QueueUnavailable(f"SQLite error on {self._url.path}: {exc}") from exc
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _write(self, body: Callable[[sqlite3.Connection, float], T], *, check: bool = True) -> T:
        """Run ``body(conn, now)`` in one ``BEGIN IMMEDIATE`` transaction."""
        with self._lock:
            conn = self._connection(check=check)

            def transaction() -> T:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    result = body(conn, self._clock())
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                return result

            return self._retrying(transaction)

    def _read(self, body: Callable[[sqlite3.Connection, float], T]) -> T:
        with self._lock:
            conn = self._connection()
            return self._retrying(lambda: body(conn, self._clock()))

    def _queue_filter(self) -> tuple[str, tuple[str, ...]]:
        return f"queue IN ({_placeholders(self._queues)})", self._queues

    # -- schema ---------------------------------------------------------------------------

    def init(self) -> None:
        def body(conn: sqlite3.Connection, now: float) -> None:
            found = self._version(conn)
            if found is not None and found > SCHEMA_VERSION:
                check_version(found, self._url.redacted())
            for version in range(found or SCHEMA_VERSION, SCHEMA_VERSION):
                for statement in MIGRATIONS[version]["sqlite"]:
                    conn.execute(statement)
            for statement in ddl("sqlite"):
                conn.execute(statement)
            conn.execute(
                f"INSERT INTO {META} (key, value) VALUES ('schema_version', ?) "
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
        lease = self._check_claim(limit, lease)
        jobs = list(jobs)

        def body(conn: sqlite3.Connection, now: float) -> tuple[list[Job], _Claimed]:
            return self._complete_in(conn, now, jobs), self._claim_in(conn, now, limit, lease)

        done, claimed = self._write(body)
        return done, self._jobs(limit, lease, claimed)

    def _claim_in(self, conn: sqlite3.Connection, now: float, limit: int, lease: float) -> _Claimed:
        """The reap and the claim, in the caller's transaction: the rows, undecoded.
        The write lock is held until COMMIT, and every other worker on the file waits
        on it (and sleeps, in SQLite's busy handler, at least a millisecond): the rows
        become Jobs after the commit, in _jobs()."""
        statements = self._statements
        reaped = conn.execute(
            statements.reap, (self._max_attempts, self._max_attempts, now, now, *self._queues, now)
        ).fetchall()
        claimed = conn.execute(
            statements.claim,
            (self._owner, now + lease, now, *statements.candidate_params(now, limit)),
        ).fetchall()
        return reaped, claimed

    def _jobs(self, limit: int, lease: float, claimed: _Claimed) -> list[Job]:
        """The Jobs of a claim. When every row claimed was buried, claim again: an
        empty claim means an empty queue to the caller."""
        while True:
            jobs = self._decoded(claimed)
            if jobs or not claimed[1]:
                return jobs
            claimed = self._write(lambda conn, now: self._claim_in(conn, now, limit, lease))

    def _decoded(self, claimed: _Claimed) -> list[Job]:
        """A claim's rows as Jobs, best first; the reap's dead rows and those whose
        payload cannot be decoded (buried now) reported."""
        reaped, rows = claimed
        dead = [self._dead(row[1:]) for row in reaped if row[0] == "dead"]
        jobs, undecodable = jobs_from_rows(rows, self._max_attempts, _utc)
        if undecodable:
            dead += self._write(lambda conn, now: self._bury(conn, now, undecodable))
        self._report_dead(dead)
        return jobs

    @cached_property
    def _statements(self) -> _Statements:
        return _Statements(self._queues)

    def _bury(
        self, conn: sqlite3.Connection, now: float, rows: list[tuple[Any, str]]
    ) -> list[DeadJob]:
        """Send claimed rows (with the reason for each) to the dead state, if this
        worker still holds them; return those."""
        return [
            buried(row, reason, _utc(now), _utc)
            for row, reason in rows
            if conn.execute(
                f"UPDATE {JOBS} SET state = 'dead', last_error = ?, lease_until = NULL, "
                "finished_at = ?, updated_at = ? WHERE id = ? AND attempt = ? AND owner = ? "
                "AND state = 'running'",
                (reason, now, now, row[0], row[4], self._owner),
            ).rowcount
        ]

    @staticmethod
    def _dead(row: Any) -> DeadJob:
        return dead_from_row(row, _utc)

    def extend(self, jobs: Iterable[Job], lease: float) -> list[Job]:
        lease = self._check_lease(lease)
        jobs = list(jobs)

        def body(conn: sqlite3.Connection, now: float) -> list[Job]:
            return [
                job
                for job in jobs
                if conn.execute(
                    f"UPDATE {JOBS} SET lease_until = ?, updated_at = ? WHERE id = ? "
                    "AND attempt = ? AND owner = ? AND state = 'running'",
                    (now + lease, now, job.id, job.attempt, self._owner),
                ).rowcount
            ]

        return self._write(body) if jobs else []

    def complete(self, job: Job) -> bool:
        return bool(self.complete_many([job]))

    def complete_many(self, jobs: Iterable[Job]) -> list[Job]:
        jobs = list(jobs)
        return self._write(lambda conn, now: self._complete_in(conn, now, jobs)) if jobs else []

    def _complete_in(self, conn: sqlite3.Connection, now: float, jobs: list[Job]) -> list[Job]:
        return [
            job
            for job in jobs
            if conn.execute(_COMPLETE, (now, now, job.id, job.attempt, self._owner)).rowcount
        ]

    def fail(
        self, job: Job, error: BaseException | str, *, permanent: bool = False
    ) -> JobState | None:
        text = error_text(error)
        delay = self._retry_delay(job.attempt)
        final = "(? OR attempt >= COALESCE(max_attempts, ?))"
        flags = (bool(permanent), self._max_attempts)

        def body(conn: sqlite3.Connection, now: float) -> JobState | None:
            row = conn.execute(
                f"UPDATE {JOBS} SET state = CASE WHEN {final} THEN 'dead' ELSE 'pending' END, "
                f"run_at = CASE WHEN {final} THEN run_at ELSE ? END, "
                f"finished_at = CASE WHEN {final} THEN ? END, "
                "last_error = ?, lease_until = NULL, updated_at = ? "
                "WHERE id = ? AND attempt = ? AND owner = ? AND state = 'running' RETURNING state",
                (*flags, *flags, now + delay, *flags, now, text, now, job.id, job.attempt,
                 self._owner),
            ).fetchone()  # fmt: skip
            return None if row is None else cast("JobState", row[0])

        state = self._write(body)
        if state == "dead":
            logger.info("queue %s: row %d is dead after attempt %d", job.queue, job.id, job.attempt)
        return state

    def release(self, job: Job) -> bool:
        return bool(self.release_many([job]))

    def release_many(self, jobs: Iterable[Job]) -> list[Job]:
        jobs = list(jobs)

        def body(conn: sqlite3.Connection, now: float) -> list[Job]:
            return [
                job
                for job in jobs
                if conn.execute(
                    f"UPDATE {JOBS} SET state = 'pending', attempt = attempt - 1, owner = NULL, "
                    "lease_until = NULL, updated_at = ? WHERE id = ? AND attempt = ? "
                    "AND owner = ? AND state = 'running'",
                    (now, job.id, job.attempt, self._owner),
                ).rowcount
            ]

        released = self._write(body) if jobs else []
        if released:
            self._waker.wake()
        return released

    def next_due(self) -> float | None:
        def body(conn: sqlite3.Connection, now: float) -> float | None:
            where, queues = self._queue_filter()
            (when,) = conn.execute(
                f"SELECT MIN(t) FROM (SELECT MIN(run_at) AS t FROM {JOBS} WHERE "
                f"state = 'pending' AND {where} UNION ALL SELECT MIN(lease_until) FROM "
                f"{JOBS} WHERE state = 'running' AND {where})",
                (*queues, *queues),
            ).fetchone()
            return None if when is None else max(0.0, float(when) - now)

        return self._read(body)

    def wait(self, timeout: float | None) -> bool:
        """See ``Backend.wait``. Polls every ``poll_interval`` seconds: a cheap
        ``PRAGMA data_version`` read, and the next due time when it changed."""
        start = time.monotonic()
        deadline = None if timeout is None else start + max(0.0, timeout)
        version = self._data_version()
        due = self.next_due()
        due_at = None if due is None else start + due
        while not self._closed:
            now = time.monotonic()
            if due_at is not None and now >= due_at:
                return True
            if deadline is not None and now >= deadline:
                return False
            pause = self._poll_interval
            for limit in (due_at, deadline):
                if limit is not None:
                    pause = min(pause, limit - now)
            if self._sleep(pause):
                return not self._closed
            latest = self._data_version()
            if latest != version:
                version = latest
                due = self.next_due()
                due_at = None if due is None else time.monotonic() + due
        return False

    def _data_version(self) -> int:
        return self._read(lambda conn, now: int(conn.execute("PRAGMA data_version").fetchone()[0]))

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
        row_id = self._write(lambda conn, now: sqlite_insert(conn, job, now))
        self._waker.wake()
        return row_id

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
        ids = self._write(lambda conn, now: [sqlite_insert(conn, job, now) for job in jobs])
        if ids:
            self._waker.wake()
        return ids

    # -- operator -------------------------------------------------------------------------

    def stats(self) -> Stats:
        def body(conn: sqlite3.Connection, now: float) -> Stats:
            stats = empty_stats(self._queues)
            for queue, state, count in conn.execute(
                f"SELECT queue, state, COUNT(*) FROM {JOBS} GROUP BY queue, state"
            ):
                add_count(stats, queue, state, count)
            return stats

        return self._read(body)

    def dead(self, queue: str | None = None, limit: int = 100) -> list[DeadJob]:
        if queue is not None:
            check_queue_name(queue)
        sql = f"SELECT {DEAD_COLUMNS} FROM {JOBS} WHERE state = 'dead'"
        params: tuple[object, ...] = ()
        if queue is not None:
            sql += " AND queue = ?"
            params = (queue,)
        sql += " ORDER BY id DESC LIMIT ?"
        return self._read(
            lambda conn, now: [self._dead(row) for row in conn.execute(sql, (*params, limit))]
        )

    def retry(self, ids: Iterable[int]) -> int:
        ids = [int(i) for i in ids]
        if not ids:
            return 0
        return self._retry(f"id IN ({_placeholders(ids)})", tuple(ids))

    def retry_all(self, queue: str | None = None) -> int:
        if queue is None:
            return self._retry("1", ())
        return self._retry("queue = ?", (check_queue_name(queue),))

    def _retry(self, where: str, params: tuple[object, ...]) -> int:
        def body(conn: sqlite3.Connection, now: float) -> int:
            return conn.execute(
                f"UPDATE {JOBS} SET state = 'pending', attempt = 0, run_at = ?, owner = NULL, "
                "lease_until = NULL, finished_at = NULL, updated_at = ? WHERE id IN ("
                f"SELECT id FROM (SELECT id, queue, dedupe_key, ROW_NUMBER() OVER ("
                "PARTITION BY queue, dedupe_key ORDER BY id DESC) AS n FROM "
                f"{JOBS} WHERE state = 'dead' AND {where}) AS d WHERE d.dedupe_key IS NULL "
                f"OR (d.n = 1 AND NOT EXISTS (SELECT 1 FROM {JOBS} AS a WHERE a.queue = d.queue "
                "AND a.dedupe_key = d.dedupe_key AND a.state IN ('pending', 'running'))))",
                (now, now, *params),
            ).rowcount

        count = self._write(body)
        if count:
            self._waker.wake()
        return count

    def purge(self, older_than: float, queue: str | None = None) -> int:
        if not older_than >= 0:
            raise ValueError(f"older_than must be seconds >= 0, not {older_than!r}")
        where = ""
        params: tuple[str, ...] = ()
        if queue is not None:
            where, params = " AND queue = ?", (check_queue_name(queue),)
        total = 0
        while True:

            def body(conn: sqlite3.Connection, now: float) -> int:
                return conn.execute(
                    f"DELETE FROM {JOBS} WHERE id IN (SELECT id FROM {JOBS} "
                    f"WHERE state = 'done' AND finished_at < ?{where} LIMIT ?)",
                    (now - older_than, *params, _PURGE_BATCH),
                ).rowcount

            count = self._write(body)
            total += count
            if count < _PURGE_BATCH:
                return total

    def close(self) -> None:
        if self._closed:
            return
        self._close_waker()
        with self._lock:
            if self._conn is not None and not self._forked():
                self._conn.close()
            self._conn = None
