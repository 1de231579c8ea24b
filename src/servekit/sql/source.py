"""The SQL request source: a server whose requests are the rows of a queue table.

``QueueServer`` is a request source like a socket (``fileno()`` and a
non-blocking ``get_request()``), so it runs on every model, and from
``make_server("sqlite:jobs.db", Handler)`` and ``servekit serve mod:Handler
--listen sqlite:jobs.db``. A handler gets a claimed row as ``self.request``
(a ``servekit.sql.Job``: ``id``, ``queue``, ``payload``, ``attempt``, ...);
when it returns, the row is done (with ``ack_batch`` above one, acknowledged
together with others: see _ack_later); when it raises, the row is retried after
a back-off, or dead after ``max_attempts``; a row ``verify_request`` refuses is
dead at once ("refused by verify_request").

Each serving process has one thread of the source's (started with the
first request), which

- claims rows ahead of the loop, up to ``claim_batch`` held but not started
  (so ``get_request()`` never waits on the database, which the async
  engine's loop must not), and waits on the backend for more (LISTEN/NOTIFY
  on PostgreSQL, a cheap poll on SQLite). A row's end claims the next in the
  transaction that acknowledges it, and on the sync loop and the pool the
  thread that ran the row takes that one itself (``holds_request()``);
- extends the lease of every row the process holds, every third of
  ``lease``, so that a row is claimed again only when its worker is gone;
- records the outcomes the database could not take when they came (it was
  down), as soon as it is back;
- with ``ack_batch``, acknowledges the rows done that have waited ACK_WITHIN.

A stop lets the handlers finish (``shutdown_timeout``), records their
outcomes, and gives back every row claimed and not finished, so none waits
for its lease to run out. Delivery is at least once: a row whose worker died
is run again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import threading
from collections import deque
from time import monotonic
from typing import TYPE_CHECKING, Any, ClassVar, Final

from servekit import concurrency
from servekit._wakeup import Waker
from servekit.aio.server import AsyncServerMixIn
from servekit.core import BaseServer
from servekit.limits import ThrottledLog
from servekit.options import QUEUE_OPTIONS, check
from servekit.sql._backend import error_text
from servekit.sql._errors import QueueUnavailable
from servekit.sql._job import DEAD, Job
from servekit.sql._url import parse_url

if TYPE_CHECKING:
    from servekit.core import RequestHandlerFactory
    from servekit.sql._backend import Backend

__all__ = ["AsyncQueueServer", "QueueServer", "is_queue_address"]

logger = logging.getLogger("servekit.sql")

#: How long the source's thread waits between tries while the database is down.
_RETRY_EVERY: Final = 1.0
#: While forked children run rows, the source's thread looks at their pipes this often.
_CHILD_POLL: Final = 0.05
#: Rows running and no claim for this long: the source's thread claims more beside them.
PREFETCH_AFTER: Final = 0.005
#: At a stop, how long the children that outlived the drain get to say how they did.
CHILD_GRACE: Final = 5.0
#: ack_batch > 1: the longest a row whose handler returned waits for its acknowledgement.
ACK_WITHIN: Final = 0.05


def is_queue_address(address: object) -> bool:
    """True for a queue's URL (``sqlite:...``, ``postgresql://...``, ``postgres://...``)."""
    return isinstance(address, str) and address.startswith(
        ("sqlite:", "postgresql://", "postgres://")
    )


class QueueServer(BaseServer):
    """Rows of the queue at ``server_address`` (a URL), each served by a handler.

    ``lease``, ``retry_backoff``, ``max_attempts``, ``claim_batch`` and
    ``ack_batch`` are the options of servekit.options.QUEUE_OPTIONS (make_server's
    keywords of those names, and ``servekit serve --lease ...``). ``server_address``
    is the URL with its password hidden; the backend opened is ``self.backend``.
    """

    #: The options of ServerConfig this source takes, beside those of any source.
    config_options: ClassVar[frozenset[str]] = QUEUE_OPTIONS

    def __init__(
        self,
        server_address: str,
        RequestHandlerClass: RequestHandlerFactory,
        *,
        lease: float = 30.0,
        retry_backoff: float = 1.0,
        max_attempts: int = 5,
        claim_batch: int = 1,
        ack_batch: int = 1,
    ) -> None:
        url = parse_url(server_address)
        super().__init__(url.redacted(), RequestHandlerClass)
        self.lease: float = check("lease", lease)
        self.claim_batch: int = check("claim_batch", claim_batch)
        self.ack_batch: int = check("ack_batch", ack_batch)
        self._url = url
        self._backend_options = {
            "max_attempts": check("max_attempts", max_attempts),
            "retry_backoff": check("retry_backoff", retry_backoff),
        }
        self.backend: Backend = self._open_backend()
        try:
            self.backend.init()  # create or migrate: a wrong URL fails here, before serving
        except BaseException:
            self.backend.close()
            raise
        self._waker = Waker()  # readable: rows in _ready that the loop is to take
        self._announced = False  # the waker was woken and not drained since
        # Sections are entered with the lock itself, a C call, not with the
        # Condition, whose __enter__ is Python code (a row takes six of them).
        self._mutex = threading.Lock()
        self._lock = threading.Condition(self._mutex)  # the source's thread waits here
        self._ready: deque[Job] = deque()  # claimed, not yet given to the loop
        self._last_move = 0.0  # when a row last came into _ready or left it
        self._unrecorded: list[tuple[Job, BaseException | str | None]] = []  # outcomes to retry
        self._acks: list[Job] = []  # ack_batch: done, their acknowledgement waiting
        self._acks_due = 0.0  # when the first of them must be acknowledged (ACK_WITHIN)
        self._failures: dict[int, BaseException] = {}  # row id -> what its handler raised
        # Rows whose handler started (else: refused) and whose outcome is not being
        # recorded yet: row id -> when the handler started (see _company_due).
        self._running: dict[int, float] = {}
        self._closing = False  # server_close() began: no more claims
        self._closed = False  # the database is closed (or being closed)
        self._cut = False  # the stop cut the rows still running (cut_requests)
        self._shut = False  # ... and every outcome recorded or set aside, the database closed
        self._thread: threading.Thread | None = None
        self._home = self._pid = os.getpid()  # the process that claims; _pid: this one
        self._held: dict[int, Job] = {}  # rows this process holds a lease on
        self._in_flight = 0  # rows given to the loop and not yet recorded
        self._claiming = False  # a claim is under way (one at a time)
        self._to_end = 0  # rows of the last claim not recorded yet (_may_claim)
        self._last_claim = 0.0  # when the last claim ended
        # Whether the loop takes another row while one runs (see _may_claim).
        self._hands_off = self._hands_off_requests or isinstance(self, AsyncServerMixIn)
        self._children: dict[int, Job] = {}  # a forked child's pipe -> the row it runs
        self._said: dict[int, bytes] = {}  # what each child wrote so far
        self._report_to: int | None = None  # in a forked child: its pipe to the parent
        self._down_log = ThrottledLog(logger, logging.WARNING, 30.0)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.server_address}>"

    # -- the request source ------------------------------------------------------------

    def fileno(self) -> int:
        self._in_this_process()
        return self._waker.fileno()

    def holds_request(self) -> bool:
        """Whether a claimed row waits for the loop (get_request() returns it at once).

        A row claimed at the end of the last one, on a model whose thread that
        ran it looks here next (the sync loop, a pool worker), is taken by that
        thread without fileno() turning readable: no wake-up and no hand-off a
        row. fileno() turns readable for the rows the source's thread claims,
        and for rows left waiting while a row has been in its handler for
        PREFETCH_AFTER (slow rows: the loop hands the next to another worker)."""
        return bool(self._ready)

    def get_request(self) -> tuple[Job, str]:
        """The next row claimed; BlockingIOError when none is (the source's thread
        claims them, and makes fileno() readable when one is there)."""
        self._in_this_process()
        with self._mutex:
            if not self._ready:
                self._unannounce()
                raise BlockingIOError("no row claimed")
            job = self._ready.popleft()
            self._in_flight += 1
            self._last_move = monotonic()
            # Where threads look for held rows (holds_request), one row a wake-up:
            # the source's thread wakes the loop again for the rest if a row stays
            # in its handler for PREFETCH_AFTER (_announce_waiting). It looks every
            # PREFETCH_AFTER while rows run (_wait), not at a notify a row: that
            # was a switch to it and back at every row.
            if not self._ready or self._takes_held_requests:
                self._unannounce()
        return job, f"{job.queue}#{job.id}"

    def _announce(self) -> None:
        """Make fileno() readable: rows in _ready are for the loop; the lock is held."""
        if not self._announced:
            self._announced = True
            self._waker.wake()

    def _unannounce(self) -> None:
        if self._announced:
            self._announced = False
            self._waker.drain()

    def finish_request(self, request: Any, client_address: Any) -> None:
        self._begin(request)
        try:
            super().finish_request(request, client_address)
        except BaseException as exc:
            self._failures[request.id] = exc
            raise

    def shutdown_request(self, request: Any) -> None:
        """Record the row's outcome: done, failed (retried or dead), or refused."""
        self._record(request)
        super().shutdown_request(request)

    def server_close(self) -> None:
        """Stop claiming and give back the rows claimed and not started. The model
        calls this before it lets the rows in flight finish (its drain), so the
        database stays open until the last of them is recorded: then (now, if
        none runs) the source's thread stops and the database is closed."""
        super().server_close()
        if os.getpid() != self._home:
            return  # a forked child: its parent closes the source
        with self._mutex:
            if self._closing:
                return
            self._closing = True
            not_started = list(self._ready)
            self._ready.clear()
            for job in not_started:
                self._held.pop(job.id, None)
            # The give-back counts as a row in flight: a row's end meanwhile must not
            # close the database under it (_close_when_idle waits for none in flight).
            self._in_flight += 1
            self._lock.notify_all()
        self.backend.wake()
        try:
            self._give_back(not_started)
        finally:
            with self._mutex:
                self._ended_one()
        self._close_when_idle()

    def _close_when_idle(self) -> None:
        """Once closing and no row is in flight: stop the source's thread, record
        what is left, give back what is still held, close the database."""
        with self._mutex:
            if not self._closing or self._in_flight or self._closed:
                return
            self._closed = True
            self._lock.notify_all()
        try:
            self.backend.wake()
            thread = self._thread
            if thread is not None and thread is not threading.current_thread():
                thread.join()
            self._hear_children(final=True)
            self._ack_waiting()
            self._record_late()
            with self._mutex:
                # Any whose handler outlived the drain; not those whose outcome could
                # not be recorded (the database is down: their leases run out instead).
                unrecorded = {job.id for job, _ in self._unrecorded}
                left = [job for job in self._held.values() if job.id not in unrecorded]
                self._held.clear()
            if unrecorded:
                logger.warning(
                    "%s: stopping with the outcome of %d row(s) not recorded (the database "
                    "is unavailable): they run again when their leases run out",
                    self, len(unrecorded),
                )  # fmt: skip
            self._give_back(left)
            self.backend.close()
            self._waker.close()
        finally:
            with self._mutex:
                self._shut = True
                self._lock.notify_all()  # a fork model's server_close() waits for this

    def cut_requests(self) -> int:
        """The stop's cut: the model ends what it can (a forked child, an async task,
        after CUT_GRACE), and those rows are given back when they end, not recorded as
        failed. A thread cannot be ended: its row is recorded if it ends, and runs
        again when its lease runs out if the process exits first."""
        self._mark_cut()
        return super().cut_requests()

    def _mark_cut(self) -> None:
        with self._mutex:
            self._cut = True

    def _cut_late_requests(self) -> None:
        with self._mutex:
            rows = sorted(self._running)
        self.cut_requests()
        if rows:
            shown = ", ".join(map(str, rows[:20])) + (", ..." if len(rows) > 20 else "")
            logger.warning(
                "%s: %d row(s) still in their handlers after shutdown_timeout=%ss (%s): "
                "each runs again, given back when the stop ends it, or when its lease runs "
                "out if the process exits first", self, len(rows), self.shutdown_timeout, shown,
            )  # fmt: skip

    def _give_back(self, jobs: list[Job]) -> None:
        if not jobs:
            return
        try:
            released = self.backend.release_many(jobs)
            logger.info("%s: gave back %d row(s) not finished", self, len(released))
        except QueueUnavailable as exc:
            logger.warning(
                "%s: could not give back %d row(s) (%s): claimed again when their "
                "leases run out", self, len(jobs), exc,
            )  # fmt: skip

    # -- rows ---------------------------------------------------------------------------

    def _begin(self, job: Job) -> None:
        """The handler starts: this process holds the row (in a forked child, anew)."""
        self._in_this_process()
        with self._mutex:
            self._held[job.id] = job
            self._running[job.id] = monotonic()

    def _finished(self, job: Job) -> tuple[bool, BaseException | None]:
        """The row's handler is over: whether it started (else: refused), and what it
        raised. The row no longer counts as running (_company_due)."""
        with self._mutex:
            started = self._running.pop(job.id, None) is not None
            error = self._failures.pop(job.id, None)
        return started, error

    def _record(self, job: Job, finished: tuple[bool, BaseException | None] | None = None) -> None:
        """Tell the database how the row went (blocking; see AsyncQueueServer).
        ``finished``: what _finished() said, if the caller asked it already."""
        started, error = self._finished(job) if finished is None else finished
        if not started:
            error = PermissionError("refused by verify_request")
        if self._report_to is not None:  # a forked child: the parent records it
            _tell_parent(self._report_to, error)
            self._report_to = None
            return
        claim_next = error is None and self._may_claim(after_one=True)
        cut = self._cut and isinstance(error, asyncio.CancelledError)  # the async engine's
        self._end(job, error, refused=not started, claim_next=claim_next, cut=cut)

    def _end(
        self,
        job: Job,
        error: BaseException | str | None,
        *,
        refused: bool = False,
        claim_next: bool = False,
        cut: bool = False,
    ) -> None:
        """Record how a row given to the loop went, and count it out of flight; if
        the database cannot take it now, the source's thread records it later.
        ``claim_next``: _may_claim() reserved a claim, made with the acknowledgement.
        ``cut``: the stop ended it (_given_back_cut), not its handler.
        With ``ack_batch`` above one, a row done otherwise waits, still held, to be
        acknowledged with others (_ack_later)."""
        later = error is None and not claim_next and self.ack_batch > 1
        try:
            if claim_next:
                self._complete_and_claim(job)
            elif later:
                self._ack_later(job)
            elif cut:
                self._given_back_cut(job)
            else:
                self._settle(job, error, refused=refused)
        except QueueUnavailable as exc:
            self._not_recorded([job], exc, error)
            with self._mutex:
                self._ended_one()
        else:
            with self._mutex:
                if not later:
                    self._held.pop(job.id, None)
                self._ended_one()
        if self._closing:
            self._close_when_idle()

    def _ended_one(self) -> None:
        """A row given to the loop is recorded (or set aside); the lock is held."""
        self._in_flight -= 1
        self._to_end -= 1
        if not self._in_flight and not self._ready:
            self._lock.notify_all()  # nothing will claim but the source's thread now

    def _may_claim(self, *, after_one: bool = False) -> bool:
        """Whether to claim rows now, and if so reserve the claim (one at a time).

        The buffer must be empty. A row's end (``after_one``) claims its successors
        in the same transaction as its acknowledgement: one commit a row where a
        worker goes from row to row. Only the last of the last claim's rows to
        be recorded does: rows that end together (a batch on the async engine)
        make one claim, not one each. The source's thread claims when nothing
        runs; or, when the model hands requests off, once no claim has come for
        PREFETCH_AFTER and a row has been in its handler as long (_company_due:
        more should run beside it, not wait for its end). Not the model's
        ready_for_request(): that is the serving thread's to call (it reaps
        children, raises flags). A row claimed while the model is full waits in
        the buffer, its lease extended: at most claim_batch of them."""
        with self._mutex:
            if self._ready or self._claiming or self._closing or os.getpid() != self._home:
                return False
            if after_one and self._to_end > 1:  # this row is not counted out yet
                return False
            if not after_one and self._in_flight:
                now = monotonic()
                if not (
                    self._hands_off
                    and now - self._last_claim >= PREFETCH_AFTER
                    and now >= self._company_due(now)
                ):
                    return False
            self._claiming = True
            return True

    def _complete_and_claim(self, job: Job) -> None:
        # The thread that ran the row may take the next itself (holds_request).
        done, _ = self._claim_acknowledging([job], announce=not self._takes_held_requests)
        if job not in done:
            self._lost(job)

    def _claim_acknowledging(
        self, rows: list[Job], *, announce: bool = True
    ) -> tuple[list[Job], list[Job]]:
        """The claim _may_claim() reserved, in one transaction with the acknowledgement
        of ``rows`` and of the rows waiting for theirs (_ack_later): (those of ``rows``
        acknowledged, the rows claimed)."""
        acks = self._take_acks() if self._acks else []
        done: list[Job] = []
        jobs: list[Job] = []
        try:
            done, jobs = self.backend.complete_and_claim(
                [*acks, *rows] if acks else rows, self.claim_batch, self.lease
            )
        except QueueUnavailable as exc:
            self._not_recorded(acks, exc)
            raise
        finally:
            late = self._claimed(jobs, announce=announce)
        if late:  # a stop began during the claim: it gave back the rows it found then
            self._give_back(late)
            jobs = []
        if acks:
            kept = self._acked(acks, done)
            done = [row for row in rows if id(row) in kept]
        return done, jobs

    def _ack_later(self, job: Job) -> None:
        """Keep a row done (and held: its lease extended) to be acknowledged with
        others: with the next claim, once ``ack_batch`` rows wait, or ACK_WITHIN
        after the first of them (the source's thread), or at the stop."""
        with self._mutex:
            if not self._acks:
                self._acks_due = monotonic() + ACK_WITHIN
                self._lock.notify_all()  # the source's thread: a time to keep
            self._acks.append(job)
            full = len(self._acks) >= self.ack_batch
        if full:
            self._ack_waiting()

    def _take_acks(self) -> list[Job]:
        with self._mutex:
            acks, self._acks = self._acks, []
        return acks

    def _ack_waiting(self) -> None:
        """Acknowledge the rows waiting for it in one transaction (not raising: the
        source's thread retries those the database does not take now)."""
        acks = self._take_acks()
        if not acks:
            return
        try:
            done = self.backend.complete_many(acks)
        except QueueUnavailable as exc:
            self._not_recorded(acks, exc)
        else:
            self._acked(acks, done)

    def _acked(self, acks: list[Job], done: list[Job]) -> set[int]:
        """The waiting rows ``acks`` were acknowledged (those in ``done``; the others
        were no longer this worker's). Returns the ``id()`` of each row in ``done``."""
        kept = {id(job) for job in done}
        with self._mutex:
            for job in acks:
                self._held.pop(job.id, None)
        for job in acks:
            if id(job) not in kept:
                self._lost(job)
        return kept

    def _not_recorded(
        self, jobs: list[Job], exc: QueueUnavailable, error: BaseException | str | None = None
    ) -> None:
        """The database could not take these rows' outcome (``error``, or done): the
        source's thread records them when it is back (_record_late)."""
        if not jobs:
            return
        self._down_log(
            "%s: cannot record %s now (%s): will retry", self,
            f"row {jobs[0].id}" if len(jobs) == 1 else f"{len(jobs)} rows", exc,
        )  # fmt: skip
        with self._mutex:
            self._unrecorded.extend((job, error) for job in jobs)

    def _claimed(self, jobs: list[Job], *, announce: bool = True) -> list[Job]:
        """End the claim _may_claim() reserved: ``jobs`` wait for the loop, which
        is woken if ``announce`` (else the thread that claimed them takes them).
        Returns them instead if a stop began meanwhile: to give back."""
        with self._mutex:
            self._claiming = False
            if self._closing:
                self._lock.notify_all()
                return jobs
            self._to_end = len(jobs)
            self._last_claim = self._last_move = monotonic()
            self._ready.extend(jobs)
            for job in jobs:
                self._held[job.id] = job
            if not jobs:
                self._lock.notify_all()  # none: the source's thread waits on the database
            elif announce:
                self._announce()
        return []

    def _settle(
        self, job: Job, error: BaseException | str | None, *, refused: bool = False
    ) -> None:
        backend = self.backend
        if error is None:
            if not backend.complete(job):
                self._lost(job)
            return
        state = backend.fail(job, error, permanent=refused)
        if state is None:
            self._lost(job)
        elif state != DEAD:
            # Due again after its back-off: a wait that began before knows nothing
            # of it (SQLite sees other connections' writes only).
            backend.wake()
        else:
            logger.warning(
                "%s: row %d of queue %r is dead after attempt %d of %d: %s", self, job.id,
                job.queue, job.attempt, job.max_attempts, _first_line(error),
            )  # fmt: skip

    def _given_back_cut(self, job: Job) -> None:
        """A row the stop cut (its forked child ended, its task cancelled) runs again:
        not a failure of its own, so no attempt is spent."""
        if not self.backend.release(job):
            self._lost(job)
            return
        logger.warning(
            "%s: row %d of queue %r was cut by the stop after shutdown_timeout: given back, "
            "it runs again", self, job.id, job.queue,
        )  # fmt: skip

    def _lost(self, job: Job) -> None:
        logger.warning(
            "%s: row %d of queue %r was no longer ours (its lease ran out and it was claimed "
            "again): this run's outcome is not recorded", self, job.id, job.queue,
        )  # fmt: skip

    def _record_late(self) -> None:
        """Record the outcomes the database did not take when they came."""
        with self._mutex:
            waiting, self._unrecorded = self._unrecorded, []
        for index, (job, error) in enumerate(waiting):
            try:
                self._settle(job, error)
            except QueueUnavailable:
                with self._mutex:
                    self._unrecorded.extend(waiting[index:])
                return
            with self._mutex:
                self._held.pop(job.id, None)
        if waiting:
            logger.info(
                "%s: recorded the outcome of %d row(s) the database could not take before",
                self, len(waiting),
            )  # fmt: skip
            self._down_log.reset()  # back: the next outage has its line at once

    # -- the source's thread ------------------------------------------------------------

    def _open_backend(self, owner: str | None = None) -> Backend:
        from servekit.sql import open_backend  # the package imports this module

        return open_backend(self._url, owner=owner, **self._backend_options)

    def _in_this_process(self) -> None:
        """Start the source's thread, if it has none (at the first call); in a child
        forked to run a row, forget the parent's state."""
        if self._thread is not None and self._pid == os.getpid():
            return
        if self._pid != os.getpid():
            self._forked()
            return
        with self._mutex:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=f"servekit-queue {self.server_address}", daemon=True
                )
                self._thread.start()

    def _forked(self) -> None:
        """In a child forked to run a row (concurrency="fork"). It touches no
        database: a thread of the parent (the source's, or the application's)
        may have been inside a database library at the fork, holding its locks
        (SQLite's allocator takes a global mutex), and the first call here would
        wait for ever. The child tells its parent how the row went, through the
        pipe the fork made (ForkingQueueServer), and the parent records it."""
        self._pid = os.getpid()
        self._mutex = threading.Lock()  # the parent's may have been held at the fork
        self._lock = threading.Condition(self._mutex)
        for fd in self._children:  # the other children's pipes are not this one's
            os.close(fd)
        self._children, self._said = {}, {}
        self._ready, self._held, self._unrecorded, self._acks = deque(), {}, [], []
        self._failures, self._running = {}, {}

    def _run(self) -> None:
        extend_at = monotonic() + self.lease / 3
        failing = False  # the database failed since rows last came
        while True:
            with self._mutex:
                if self._closed:
                    return
            try:
                if self._children:
                    self._hear_children()
                    if self._closed:  # the last child a stop waited for: it closed all
                        return
                if self._unrecorded:
                    self._record_late()
                if self._acks and monotonic() >= self._acks_due:
                    self._ack_waiting()
                if monotonic() >= extend_at:
                    self._extend()
                    extend_at = monotonic() + self.lease / 3
                self._announce_waiting()
                if self._claim():
                    if failing:  # back: the next outage has its line at once
                        failing = False
                        self._down_log.reset()
                    continue
                self._wait(extend_at - monotonic())
            except QueueUnavailable as exc:
                failing = True
                self._down_log("%s: the database is unavailable: %s", self, exc)
                with self._mutex:
                    if not self._closed:
                        self._lock.wait(_RETRY_EVERY)
            except Exception:
                logger.exception("%s: the source's thread failed; retrying", self)
                with self._mutex:
                    if not self._closed:
                        self._lock.wait(_RETRY_EVERY)

    def _claim(self) -> bool:
        """Claim rows if it is this thread's turn (_may_claim); True if some came."""
        if not self._may_claim():
            return False
        _, jobs = self._claim_acknowledging([])
        return bool(jobs)

    def _announce_waiting(self) -> None:
        """Wake the loop for the rows waiting, once it is time (_company_due)."""
        with self._mutex:
            if self._ready and not self._announced:
                now = monotonic()
                if now >= self._company_due(now):
                    self._announce()

    def _company_due(self, now: float) -> float:
        """When rows should start on other threads than those of the rows running
        (the loop woken for rows waiting, a claim beside); the lock is held.

        PREFETCH_AFTER after the oldest handler running started: a slow handler,
        and more rows should run beside it (not counted from get_request(): on a
        busy machine a row can wait that long for its thread to be scheduled,
        and each row handed on would then hand on the next). Never while the
        rows running are all being recorded, however long that takes: the database
        is one connection a process, and another thread would wait there too
        (on a SQLite file other processes write, in the busy handler's sleeps);
        their threads come back for the rows waiting (look again in
        PREFETCH_AFTER). With no row running, PREFETCH_AFTER after the last row
        moved (the thread that claimed the rows waiting did not look)."""
        if self._running:
            return min(self._running.values()) + PREFETCH_AFTER
        if self._in_flight:
            return now + PREFETCH_AFTER
        return self._last_move + PREFETCH_AFTER

    def _wait(self, timeout: float) -> None:
        """Until there may be rows to claim, room for them, leases to extend, or rows
        done to acknowledge (ACK_WITHIN); while forked children run, no longer than
        _CHILD_POLL (their outcomes)."""
        timeout = max(timeout, 0.0)
        if self._children:
            timeout = min(timeout, _CHILD_POLL)
        if self._hands_off and (self._in_flight or self._ready):
            timeout = min(timeout, PREFETCH_AFTER)  # then may claim beside them
        with self._mutex:
            if self._closed:
                return
            if self._ready and not self._announced:  # then may wake the loop for them
                now = monotonic()
                timeout = min(timeout, max(self._company_due(now) - now, 0.0))
            if self._acks:  # read under the lock: _ack_later's notify comes after
                timeout = min(timeout, max(self._acks_due - monotonic(), 0.0))
            if self._ready or self._claiming or self._in_flight or self._closing:
                # The loop has rows, a claim is under way, or a row's end claims the
                # next: until one of them calls (notify_all), or the time to look again.
                self._lock.wait(timeout)
                return
        self.backend.wait(timeout)

    def _extend(self) -> None:
        with self._mutex:
            held = list(self._held.values())
        if not held:
            return
        kept = {job.id for job in self.backend.extend(held, self.lease)}
        for job in held:
            if job.id not in kept:
                with self._mutex:
                    # Not if its outcome was recorded meanwhile: then it is not running.
                    lost = self._held.get(job.id) is job
                    if lost:
                        del self._held[job.id]
                    # Not started: another worker has it now, and it must not run here
                    # too. Done and waiting for its acknowledgement: logged once, below.
                    unstarted = lost and job in self._ready
                    if unstarted:
                        self._ready.remove(job)
                        self._to_end -= 1
                    elif lost and job in self._acks:
                        self._acks.remove(job)
                if unstarted:
                    logger.warning(
                        "%s: row %d of queue %r was no longer ours before it started (its "
                        "lease ran out and it was claimed again): not run here",
                        self, job.id, job.queue,
                    )  # fmt: skip
                elif lost:
                    self._lost(job)

    # -- forked children (ForkingQueueServer) -----------------------------------------

    def _hear_children(self, *, final: bool = False) -> None:
        """Record how the rows of the children that have ended went (what each wrote
        to its pipe before it ended). ``final``: wait for every child's end."""
        deadline = monotonic() + CHILD_GRACE
        while True:
            with self._mutex:
                pipes = list(self._children)
            if not pipes:
                return
            poller = select.poll()
            for fd in pipes:
                poller.register(fd, select.POLLIN)
            wait = max(deadline - monotonic(), 0.0) if final else 0.0
            for fd, _ in poller.poll(wait * 1000):
                self._hear(fd)
            if not final:
                return
            if monotonic() >= deadline:
                for fd in pipes:  # never ended: as if it had died
                    if fd in self._children:
                        self._child_ended(fd)
                return

    def _hear(self, fd: int) -> None:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        if data:
            self._said[fd] = self._said.get(fd, b"") + data
        else:
            self._child_ended(fd)

    def _child_ended(self, fd: int) -> None:
        with self._mutex:
            job = self._children.pop(fd)
            said = self._said.pop(fd, b"")
            self._running.pop(job.id, None)
        # Closed once out of _children: a child forked meanwhile closes what it finds
        # there, and the number may by then be that child's own pipe.
        os.close(fd)
        error: str | None = None
        if said != _DONE:
            text = said.removeprefix(_FAILED).decode(errors="replace")
            error = text or "the process running it ended without saying how it went"
        self._end(job, error, cut=self._cut and not said)


#: What a forked child writes its parent: _DONE, or _FAILED and the error's text.
_DONE: Final = b"done"
_FAILED: Final = b"failed\n"


def _tell_parent(fd: int, error: BaseException | None) -> None:
    message = _DONE if error is None else _FAILED + error_text(error).encode()
    try:
        with memoryview(message) as rest:
            while rest:
                rest = rest[os.write(fd, rest) :]
    except OSError:
        pass  # the parent is gone: its rows' leases run out, and they run again
    finally:
        os.close(fd)


if hasattr(os, "fork"):

    class ForkingQueueServer(concurrency.ForkingMixIn, QueueServer):
        """The queue with a child process per row; the child tells the parent how
        its row went through a pipe, and the parent records it (the child calls no
        database: see QueueServer._forked). The parent holds the row, extending
        its lease, until the child has ended."""

        def process_request(self, request: Any, client_address: Any) -> None:
            read, write = os.pipe()
            os.set_blocking(read, False)
            self._report_to = write
            try:
                super().process_request(request, client_address)  # the child never returns
            except BaseException:
                os.close(read)
                raise
            finally:
                self._report_to = None
                os.close(write)
            with self._mutex:
                self._children[read] = request
                self._running[request.id] = monotonic()  # its handler, in the child
                self._lock.notify_all()  # the source's thread listens to its children now

        def cut_requests(self) -> int:
            self._mark_cut()  # (ForkingMixIn's, which ends the children, comes first)
            return super().cut_requests()

        def server_close(self) -> None:
            super().server_close()  # and the drain: the children have ended
            # The source's thread hears how their rows went (within CHILD_GRACE), and
            # closes the source once the last is recorded (_close_when_idle, whose
            # database calls have bounds of their own): a stop returns with every one
            # of them recorded, those waiting for their acknowledgement too.
            with self._mutex:
                if self._lock.wait_for(lambda: not self._in_flight, CHILD_GRACE):
                    self._lock.wait_for(lambda: self._shut)

    __all__ += ["ForkingQueueServer"]


class AsyncQueueServer(AsyncServerMixIn, QueueServer):
    """The queue on the async engine: the database is called from a thread, not
    from the loop (handlers may be ``async def``)."""

    async def finish_request(self, request: Any, client_address: Any) -> None:  # type: ignore[override]
        self._begin(request)
        try:
            await AsyncServerMixIn.finish_request(self, request, client_address)
        except BaseException as exc:
            self._failures[request.id] = exc
            raise

    async def shutdown_request(self, request: Any) -> None:  # type: ignore[override]
        # Out of _running before the executor takes it, which may be a while when many
        # rows end together: a row waiting there is not a slow handler, and must not
        # bring claims beside it (_company_due), each claim more rows to wait there.
        finished = self._finished(request)
        await asyncio.get_running_loop().run_in_executor(None, self._record, request, finished)


def _first_line(error: object) -> str:
    text = str(error).strip()
    lines = text.splitlines()
    return lines[-1] if lines else text
