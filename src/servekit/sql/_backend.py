"""What every backend offers (``Backend``), and the logic they share that is
not SQL (``BackendBase``): the worker token, argument checks, back-off,
reporting rows that died."""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import traceback
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, Protocol, runtime_checkable

from servekit._wakeup import Waker
from servekit.sql._backoff import backoff_delay
from servekit.sql._job import (
    STATES,
    DeadJob,
    Job,
    JobState,
    PayloadError,
    decode_payload,
    encode_payload,
)
from servekit.sql._url import DEFAULT_QUEUE, QueueURL, check_queue_name

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

__all__ = [
    "MAX_ERROR_LENGTH",
    "Backend",
    "BackendBase",
    "NewJob",
    "Stats",
    "add_count",
    "buried",
    "dead_from_row",
    "empty_stats",
    "error_text",
    "jobs_from_rows",
    "new_job",
]

logger = logging.getLogger("servekit.sql")

#: ``last_error`` keeps at most this many characters (the end is cut, marked).
MAX_ERROR_LENGTH: Final = 16_000
#: The range of PostgreSQL's ``integer``, which ``priority`` and ``max_attempts`` use.
_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1

#: Row counts: ``stats()[queue][state]``, every state present (0 if none).
Stats = dict[str, dict[JobState, int]]


@dataclass(frozen=True, slots=True)
class NewJob:
    """A row to insert, its arguments checked (see ``new_job``)."""

    queue: str
    encoding: str
    data: bytes
    priority: int
    run_at: datetime | timedelta | None
    dedupe_key: str | None
    max_attempts: int | None


def new_job(
    url: QueueURL | None,
    payload: object,
    *,
    queue: str | None,
    priority: int,
    run_at: datetime | timedelta | None,
    dedupe_key: str | None,
    max_attempts: int | None,
) -> NewJob:
    """Check enqueue's arguments; TypeError or ValueError names the wrong one.

    ``queue=None`` is the URL's queue when it names one, ``default`` when there
    is no URL; a URL naming several queues needs ``queue`` said.
    """
    if queue is None:
        if url is None:
            queue = DEFAULT_QUEUE
        elif len(url.queues) == 1:
            queue = url.queues[0]
        else:
            raise ValueError(
                f"the URL names several queues ({', '.join(url.queues)}): say which with queue="
            )
    check_queue_name(queue)
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise TypeError(f"priority must be an int, not {priority!r}")
    if not _INT_MIN <= priority <= _INT_MAX:
        raise ValueError(f"priority must fit in 32 bits, not {priority}")
    if isinstance(run_at, datetime):
        if run_at.tzinfo is None or run_at.utcoffset() is None:
            raise ValueError(
                "run_at must be an aware datetime (datetime.now(timezone.utc) + ...), "
                "or a timedelta from now"
            )
    elif run_at is not None and not isinstance(run_at, timedelta):
        raise TypeError(f"run_at must be a datetime, a timedelta or None, not {run_at!r}")
    if dedupe_key is not None and (
        not isinstance(dedupe_key, str) or not dedupe_key or "\0" in dedupe_key
    ):
        raise ValueError(f"dedupe_key must be a non-empty str without NUL, not {dedupe_key!r}")
    _check_max_attempts(max_attempts, allow_none=True)
    encoding, data = encode_payload(payload)
    return NewJob(queue, encoding, data, priority, run_at, dedupe_key, max_attempts)


def _check_max_attempts(value: int | None, *, allow_none: bool) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= _INT_MAX:
        raise ValueError(f"max_attempts must be an int from 1, not {value!r}")


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{name} must be a number of seconds above 0, not {value!r}")
    return float(value)


def error_text(error: BaseException | str) -> str:
    """What ``last_error`` records: a str as it is, an exception with its traceback."""
    if isinstance(error, BaseException):
        text = "".join(traceback.format_exception(error)).rstrip()
    else:
        text = str(error)
    text = text.replace("\0", "\\0")  # PostgreSQL's text holds no NUL
    if len(text) > MAX_ERROR_LENGTH:
        marker = "\n[... cut by servekit]"
        text = text[: MAX_ERROR_LENGTH - len(marker)] + marker
    return text


@runtime_checkable
class Backend(Protocol):
    """A work queue in a SQL table, as a worker and an operator use it.

    Every method is synchronous and may block on the database (run it in a
    thread from asyncio). A backend holds one connection (PostgreSQL: two,
    the second for LISTEN), and its methods may be called from several
    threads: they take turns. Every write is its own short transaction; no
    transaction stays open between calls (so none while a handler runs).

    Errors: ``QueueUnavailable`` (an ``OSError``) when the database cannot be
    reached; the next call tries again (PostgreSQL reconnects with back-off).
    ``SchemaError`` when the tables are missing or at another version.
    """

    @property
    def url(self) -> QueueURL:
        """The URL the backend was opened with."""
        ...

    @property
    def queues(self) -> tuple[str, ...]:
        """The queues ``claim()``, ``wait()`` and ``next_due()`` look at."""
        ...

    @property
    def owner(self) -> str:
        """This worker's token (``host:pid:random``), written on the rows it claims."""
        ...

    def init(self) -> None:
        """Create the tables, or migrate them to this servekit's version."""
        ...

    def claim(self, limit: int = 1, lease: float = 30.0) -> list[Job]:
        """Claim up to ``limit`` due rows for ``lease`` seconds, best first.

        Order: ``priority`` (higher first), ``run_at``, ``id``. Due: ``run_at``
        has come. A running row whose lease ran out is given back first (its
        attempt counted; dead with ``lease expired ...`` if it had no attempt
        left) and so claimed again. A row whose payload cannot be decoded goes
        dead with the reason and is reported (``on_dead``), not returned.
        """
        ...

    def extend(self, jobs: Iterable[Job], lease: float) -> list[Job]:
        """Push the leases of ``jobs`` to ``lease`` seconds from now; return those
        still held (a job whose lease ran out and was claimed again is not)."""
        ...

    def complete(self, job: Job) -> bool:
        """Mark ``job`` done; False if this worker no longer holds it."""
        ...

    def complete_many(self, jobs: Iterable[Job]) -> list[Job]:
        """Mark ``jobs`` done in one transaction; return those acknowledged."""
        ...

    def complete_and_claim(
        self, jobs: Iterable[Job], limit: int = 1, lease: float = 30.0
    ) -> tuple[list[Job], list[Job]]:
        """``complete_many(jobs)`` and ``claim(limit, lease)`` in one transaction (a
        worker that finished rows takes its next ones at one commit): (the jobs
        acknowledged, the jobs claimed)."""
        ...

    def fail(
        self, job: Job, error: BaseException | str, *, permanent: bool = False
    ) -> JobState | None:
        """Record a failed attempt: ``pending`` again after a back-off, or
        ``dead`` (after the last attempt, or at once if ``permanent``).

        Returns the row's new state, or None if this worker no longer holds it.
        """
        ...

    def release(self, job: Job) -> bool:
        """Give ``job`` back, pending and due, without counting the attempt."""
        ...

    def release_many(self, jobs: Iterable[Job]) -> list[Job]:
        """``release()`` of several jobs in one transaction; those given back."""
        ...

    def next_due(self) -> float | None:
        """Seconds until a row of ``queues`` may be claimed (0 if one may now:
        a due pending row, or a running row whose lease ran out); None if there
        is no pending or running row."""
        ...

    def wait(self, timeout: float | None) -> bool:
        """Block until a row may be claimable, ``timeout`` passes, or ``wake()``.

        True if work may be there (a row due, a new row, woken); False on timeout.
        Never a promise: ``claim()`` may still find nothing.
        """
        ...

    def wake(self) -> None:
        """Make a ``wait()`` running in another thread return at once (True)."""
        ...

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
        """Insert a row; return its id (the live row's id if ``dedupe_key`` matches one)."""
        ...

    def enqueue_many(
        self,
        payloads: Iterable[object],
        *,
        queue: str | None = None,
        priority: int = 0,
        run_at: datetime | timedelta | None = None,
        max_attempts: int | None = None,
    ) -> list[int]:
        """Insert several rows in one transaction; return their ids, in order."""
        ...

    def stats(self) -> Stats:
        """Row counts by queue (every queue in the table) and state."""
        ...

    def dead(self, queue: str | None = None, limit: int = 100) -> list[DeadJob]:
        """Dead rows, newest first: of ``queue``, or of every queue."""
        ...

    def retry(self, ids: Iterable[int]) -> int:
        """Bring the dead rows ``ids`` back: pending, due now, attempts from 0.
        Returns how many came back (a row that is not dead is left alone, and so
        is one whose ``dedupe_key`` a live row now holds)."""
        ...

    def retry_all(self, queue: str | None = None) -> int:
        """``retry()`` every dead row of ``queue`` (None: of every queue)."""
        ...

    def purge(self, older_than: float, queue: str | None = None) -> int:
        """Delete done rows finished more than ``older_than`` seconds ago, of ``queue``
        (None: of every queue); how many."""
        ...

    def close(self) -> None:
        """Close the connections; a ``wait()`` in another thread returns."""
        ...


class BackendBase:
    """Shared by the backends: options, the worker token, reporting dead rows.

    Options (both backends):

    - ``queues``: the queues to claim from (default: the URL's).
    - ``max_attempts``: the limit of rows enqueued without one (default 5).
    - ``retry_backoff``: the delay before the first retry of a failed row, in
      seconds (default 1), doubling at each attempt up to ``retry_backoff_cap``
      (default 600), less a random jitter of up to 25 %.
    - ``on_dead``: called with each ``DeadJob`` that ``claim()`` sends to the
      dead state (undecodable payload, lease expired on the last attempt),
      after the transaction; each is logged as a warning under ``servekit.sql``
      too. An exception it raises is logged, not raised.
    - ``owner``: the worker's token, which its claims carry (default: a new
      one, host:pid:random); a process finishing rows another backend claimed
      (a forked child) passes that backend's ``owner``.
    """

    def __init__(
        self,
        url: QueueURL,
        *,
        queues: Sequence[str] | None = None,
        max_attempts: int = 5,
        retry_backoff: float = 1.0,
        retry_backoff_cap: float = 600.0,
        on_dead: Callable[[DeadJob], Any] | None = None,
        owner: str | None = None,
    ) -> None:
        self._url = url
        if queues is None:
            self._queues = url.queues
        else:
            if isinstance(queues, str):
                raise TypeError("queues is a sequence of names, not one str")
            self._queues = tuple(dict.fromkeys(check_queue_name(q) for q in queues))
            if not self._queues:
                raise ValueError("queues must name at least one queue")
        _check_max_attempts(max_attempts, allow_none=False)
        self._max_attempts = max_attempts
        self._retry_backoff = float(retry_backoff)
        self._retry_backoff_cap = float(retry_backoff_cap)
        if not 0 <= self._retry_backoff <= self._retry_backoff_cap:
            raise ValueError("retry_backoff must be >= 0 and at most retry_backoff_cap")
        self._on_dead = on_dead
        self._claim_checked: tuple[object, object, float] = (None, None, 0.0)  # _check_claim
        self._pid = os.getpid()
        if owner is not None and (not isinstance(owner, str) or not owner):
            raise ValueError(f"owner must be a non-empty str, not {owner!r}")
        self._owner = owner or _new_token()
        self._closed = False
        self._waker = Waker()
        self._waker_lock = threading.Lock()  # wait()'s sleep against close()

    @property
    def url(self) -> QueueURL:
        return self._url

    @property
    def queues(self) -> tuple[str, ...]:
        return self._queues

    @property
    def owner(self) -> str:
        return self._owner

    @property
    def max_attempts(self) -> int:
        """The limit of rows enqueued without one."""
        return self._max_attempts

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._url.redacted()} queues={','.join(self._queues)}>"

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:  # pragma: no cover - every backend defines it
        raise NotImplementedError

    def wake(self) -> None:
        """Make a ``wait()`` in another thread return at once (True); if none is
        waiting, the next one returns at once."""
        self._waker.wake()

    def _sleep(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True if woken (``wake()``, ``close()``)."""
        with self._waker_lock:
            if self._closed:
                return True
            return self._waker.wait(max(seconds, 0.0))

    def _close_waker(self) -> None:
        """Mark the backend closed and end a ``wait()`` in another thread."""
        self._closed = True
        self._waker.wake()
        with self._waker_lock:
            self._waker.close()

    # -- shared by the backends' methods ------------------------------------------------

    def _forked(self) -> bool:
        """True once in a child forked after the backend opened: the child must
        not use (nor close) its parent's connections. It keeps the parent's
        token: a child of the fork model finishes the rows its parent claimed
        (an acknowledgement matches the attempt too, so no claim is mistaken
        for another)."""
        pid = os.getpid()
        if pid == self._pid:
            return False
        self._pid = pid
        return True

    def _check_claim(self, limit: int, lease: float) -> float:
        checked = self._claim_checked
        if limit is checked[0] and lease is checked[1]:
            return checked[2]  # the same objects as the last claim's (a server's): checked
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be an int from 1, not {limit!r}")
        seconds = _positive("lease", lease)
        self._claim_checked = (limit, lease, seconds)
        return seconds

    def _check_lease(self, lease: float) -> float:
        return _positive("lease", lease)

    def _retry_delay(self, attempt: int) -> float:
        return backoff_delay(max(attempt, 1), self._retry_backoff, self._retry_backoff_cap)

    def _new_job(
        self,
        payload: object,
        queue: str | None,
        priority: int,
        run_at: datetime | timedelta | None,
        dedupe_key: str | None,
        max_attempts: int | None,
    ) -> NewJob:
        return new_job(
            self._url,
            payload,
            queue=queue,
            priority=priority,
            run_at=run_at,
            dedupe_key=dedupe_key,
            max_attempts=max_attempts,
        )

    def _report_dead(self, rows: list[DeadJob]) -> None:
        for row in rows:
            logger.warning(
                "queue %s: row %d is dead after attempt %d: %s",
                row.queue, row.id, row.attempt, row.last_error,
            )  # fmt: skip
            if self._on_dead is not None:
                try:
                    self._on_dead(row)
                except Exception:
                    logger.exception("on_dead callback failed for row %d", row.id)


def empty_stats(queues: Iterable[str] = ()) -> Stats:
    """Stats with every state at 0 for each of ``queues``."""
    return {queue: dict.fromkeys(STATES, 0) for queue in queues}


def add_count(stats: Stats, queue: str, state: str, count: int) -> None:
    """Add a ``(queue, state, count)`` row of a GROUP BY to ``stats``."""
    counts = stats.setdefault(queue, dict.fromkeys(STATES, 0))
    if state in counts:
        counts[state] += count


def job_from_row(row: Any, default_max_attempts: int, when: Callable[[Any], datetime]) -> Job:
    """A ``Job`` from a row of ``CLAIMED`` columns; ``when`` converts a stored time.
    PayloadError if the payload cannot be decoded."""
    # Positional: a row's claim is the hot path (Job's fields, in order). A row
    # enqueued to run at once has run_at == created_at: one conversion for both.
    created_at = when(row[8])
    return Job(
        row[0], row[1], decode_payload(row[3], row[2]), row[4],
        row[5] if row[5] is not None else default_max_attempts, row[6],
        created_at if row[7] == row[8] else when(row[7]), created_at, when(row[9]), row[10],
    )  # fmt: skip


def dead_from_row(row: Any, when: Callable[[Any], datetime]) -> DeadJob:
    """A ``DeadJob`` from a row of ``DEAD_COLUMNS``."""
    return DeadJob(
        row[0], row[1], row[2], row[3], row[4], when(row[5]), when(row[6]), row[7],
        row[8], bytes(row[9]), row[10],
    )  # fmt: skip


def buried(row: Any, reason: str, failed_at: datetime, when: Callable[[Any], datetime]) -> DeadJob:
    """The ``DeadJob`` of a claimed row (``CLAIMED`` columns) sent to the dead state."""
    return DeadJob(
        row[0], row[1], row[4], row[5], row[6], when(row[8]), failed_at, reason,
        row[3], bytes(row[2]), row[10],
    )  # fmt: skip


def claim_order(job: Job) -> tuple[int, datetime, int]:
    """The order of a claim's result: priority (higher first), run_at, id."""
    return (-job.priority, job.run_at, job.id)


def jobs_from_rows(
    rows: list[Any], default_max_attempts: int, when: Callable[[Any], datetime]
) -> tuple[list[Job], list[tuple[Any, str]]]:
    """A claim's rows (``CLAIMED`` columns) as Jobs, best first, and the rows whose
    payload cannot be decoded, each with the reason its backend buries it for."""
    jobs = []
    undecodable = []
    for row in rows:
        try:
            jobs.append(job_from_row(row, default_max_attempts, when))
        except PayloadError as exc:
            undecodable.append((row, f"undecodable payload: {exc}"))
    if len(jobs) > 1:
        jobs.sort(key=claim_order)
    return jobs, undecodable


def _new_token() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
