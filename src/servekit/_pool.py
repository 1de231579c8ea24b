"""A pool of reusable threads, warm ones and extra ones, fed by a bounded queue.

Not ``concurrent.futures.ThreadPoolExecutor``: its queue has no bound, it
keeps a Future per job that nobody reads, and it cannot tell the accept loop
that a slot has freed. This pool does what a server needs: it starts threads
only as jobs need them, it says when it is full (``has_room``), and it calls
``on_room`` when a job finishes.

Up to ``max_workers`` threads stay once started (warm). When a job comes and
every thread is taken, the pool starts an extra one rather than queue it, up
to ``max_threads``: a job that waits on a slow client holds a thread, and a
fixed pool of them is stalled by as many slow clients (docs/performance.md
has the measurement). Extra threads leave
after ``EXTRA_IDLE`` seconds without a job, so the pool shrinks back to its
warm workers once the crowd is gone. Jobs queue (``max_pending``) only when
``max_threads`` are all taken.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from time import monotonic
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["PoolLoad", "WorkerPool"]

logger = logging.getLogger(__name__)

#: An extra thread (past max_workers) idle this long leaves. Long enough that a
#: burst's threads serve the next burst, short enough to give memory back soon.
EXTRA_IDLE = 10.0


class PoolLoad(NamedTuple):
    """A pool's state at one moment (``servekit serve --metrics`` exports it)."""

    threads: int
    busy: int
    queued: int


class WorkerPool:
    """Run ``job(*args)`` on ``max_workers`` warm threads, growing to ``max_threads``
    (None: no bound) while all are taken, then queueing ``max_pending`` more."""

    def __init__(
        self,
        run: Callable[[Any, Any], None],
        *,
        max_workers: int,
        max_pending: int,
        on_room: Callable[[], None],
        name: str,
        max_threads: int | None = None,
        take_next: Callable[[], tuple[Any, Any] | None] | None = None,
    ) -> None:
        if max_workers < 1:
            raise ValueError(f"max_workers must be at least 1, not {max_workers}")
        if max_pending < 0:
            raise ValueError(f"max_pending must be 0 or more, not {max_pending}")
        self._run = run
        self._take_next = take_next
        self._on_room = on_room
        self._name = name
        self.max_workers = max_workers
        self.max_threads = None if max_threads is None else max(max_threads, max_workers)
        self.max_pending = max_pending
        self._grown_logged = False
        self._jobs: deque[tuple[Any, Any]] = deque()
        # Sections are entered with the lock itself, never `with self._cond`:
        # Condition.__enter__ is Python code, and a KeyboardInterrupt in the
        # serving thread (which calls has_room, submit and close) between its
        # acquire and its return would leave the lock held forever, and the
        # server hung at server_close() (seen once in 25 Ctrl-Cs under load).
        self._lock = lock = threading.Lock()
        self._cond = threading.Condition(lock)  # idle workers wait here for a job
        # close() waits here for the last job. Not on _cond: a notify_all() there
        # at every finished job would wake every idle worker for nothing, which
        # with 64 workers cost more than the requests (measured on churn).
        self._emptied = threading.Condition(lock)
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._busy = 0
        self._coming = 0  # workers woken or started for a job that have not looked yet
        self._closing = False

    @property
    def threads(self) -> int:
        """Threads now, warm and extra."""
        return len(self._threads)

    def load(self) -> PoolLoad:
        """Threads now, those running a request, and requests waiting for one."""
        with self._lock:
            return PoolLoad(len(self._threads), self._busy, len(self._jobs))

    def has_room(self) -> bool:
        """True if submit() would not exceed the bounds."""
        if self.max_threads is None:
            return True
        with self._lock:
            return self._busy + len(self._jobs) < self.max_threads + self.max_pending

    def submit(self, a: Any, b: Any) -> None:
        with self._lock:
            if self._closing:
                raise RuntimeError(f"{self._name}: the pool is closed")
            self._jobs.append((a, b))
            self._call_worker()

    def _call_worker(self) -> None:
        """Get one worker coming for the queued jobs, unless one already is.

        One at a time: the worker that comes takes a job and, if more wait,
        calls the next. A burst of short jobs (connection churn) is then served
        by a few threads in turn, where waking a thread per job would make as
        many threads take turns at the GIL, a context switch at each: with 64
        workers that was 1.7 times the CPU per connection of 4 workers.
        Long jobs still get a thread each, the next called as soon as the last
        has started.
        """
        if self._coming:
            # Past the warm workers, a job waits for a thread that is busy with a
            # request of unknown length: it gets a thread of its own at once.
            # Chained, each start waits for the GIL (up to its switch interval):
            # a thousand slow clients' threads took seconds to come.
            if (
                not self._idle
                and len(self._jobs) > self._coming
                and len(self._threads) >= self.max_workers
                and (self.max_threads is None or len(self._threads) < self.max_threads)
            ):
                self._start_thread()
                self._coming += 1
            return
        if self._idle:
            self._cond.notify()
        elif self.max_threads is None or len(self._threads) < self.max_threads:
            self._start_thread()
        else:
            return  # every thread taken: the first to finish takes the job
        self._coming += 1

    def _start_thread(self) -> None:
        count = len(self._threads) + 1
        if count > self.max_workers and not self._grown_logged:
            self._grown_logged = True  # once per growth, not per thread
            logger.info(
                "%s: all %d warm workers busy; starting extra threads (max_threads=%s)",
                self._name, self.max_workers, self.max_threads,
            )  # fmt: skip
        thread = threading.Thread(
            target=self._work, name=f"{self._name} worker {count}", daemon=True
        )
        self._threads.append(thread)
        thread.start()

    def _work(self) -> None:
        lock, cond, jobs = self._lock, self._cond, self._jobs
        with lock:
            self._arrived()
        while True:
            with lock:
                while not jobs and not self._closing:
                    self._idle += 1
                    extra = len(self._threads) > self.max_workers
                    woken = cond.wait(EXTRA_IDLE if extra else None)
                    self._idle -= 1
                    # Even when the wait timed out: a notify() that raced the timeout
                    # is consumed by a waiter that returns False, and the job it was
                    # for would wait for ever beside idle workers (_coming stuck).
                    # Counting a worker that was not called costs at most an extra
                    # wake-up later.
                    self._arrived()
                    if not woken and not jobs and len(self._threads) > self.max_workers:
                        self._leave()
                        return
                if not jobs:
                    return  # closing, and nothing left to do
                a, b = jobs.popleft()
                self._busy += 1
                if jobs:
                    self._call_worker()
            try:
                self._run_from(a, b)
            finally:
                with lock:
                    self._busy -= 1
                    if self._closing:
                        self._emptied.notify_all()
                self._on_room()

    def _run_from(self, a: Any, b: Any) -> None:
        """Run the job, then each that ``take_next()`` hands this thread: a job
        ready when this one ends runs here, with no hand-off through the queue
        (and the thread that feeds it) and back."""
        job: tuple[Any, Any] | None = (a, b)
        while job is not None:
            try:
                self._run(*job)
                job = None if self._closing or self._take_next is None else self._take_next()
            except BaseException:
                # A handle_error() that re-raises, a SystemExit in a handler:
                # the request is over, but the pool must not lose a thread.
                logger.exception("%s: a request escaped its error handling", self._name)
                return

    def _leave(self) -> None:
        """An extra thread idle for EXTRA_IDLE goes (the lock is held)."""
        self._threads.remove(threading.current_thread())
        if len(self._threads) <= self.max_workers and self._grown_logged:
            self._grown_logged = False
            logger.info("%s: back to %d warm workers", self._name, len(self._threads))

    def _arrived(self) -> None:
        """A called worker is here (close() wakes them all, called or not)."""
        if self._coming:
            self._coming -= 1

    def close(self, timeout: float | None) -> bool:
        """Refuse new jobs, let queued and running ones finish; True if all did in time."""
        deadline = None if timeout is None else monotonic() + timeout
        with self._lock:
            self._closing = True
            self._cond.notify_all()
            while self._jobs or self._busy:
                remaining = None if deadline is None else deadline - monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._emptied.wait(remaining)
        for thread in list(self._threads):
            thread.join(None if deadline is None else max(0.0, deadline - monotonic()))
        return True
