"""The worker pool on its own, beside tests/test_pool.py: growth past the warm workers to
max_threads, extra threads leaving after EXTRA_IDLE, has_room() and on_room, close().

Jobs block on a gate the test opens, and report to a Condition, so that every wait is for
a state the pool reaches, bounded by WAIT; none is a sleep standing in for one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from time import monotonic
from typing import Any

import pytest

import servekit._pool as pool_module
from servekit._pool import WorkerPool
from tests.conftest import WAIT, LogWatcher


class Jobs:
    """The pool's ``run``: a job is (gate, value); it waits for its gate (an Event, or None
    to run at once) and counts itself started and finished, with the thread it ran on."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.started = 0
        self.finished = 0
        self.running = 0
        self.most_running = 0
        self.threads: set[str] = set()
        self.rooms = 0
        self.room_seen: list[bool] = []
        self.pool: WorkerPool | None = None

    def run(self, gate: threading.Event | None, value: Any) -> None:
        with self.cond:
            self.started += 1
            self.running += 1
            self.most_running = max(self.most_running, self.running)
            self.threads.add(threading.current_thread().name)
            self.cond.notify_all()
        try:
            if gate is not None:
                assert gate.wait(WAIT), "the test never opened the gate"
            if isinstance(value, BaseException):
                raise value
        finally:
            with self.cond:
                self.finished += 1
                self.running -= 1
                self.cond.notify_all()

    def on_room(self) -> None:
        assert self.pool is not None
        room = self.pool.has_room()
        with self.cond:
            self.rooms += 1
            self.room_seen.append(room)
            self.cond.notify_all()

    def wait(self, condition: Callable[[], bool]) -> bool:
        with self.cond:
            return self.cond.wait_for(condition, WAIT)


@pytest.fixture
def jobs() -> Jobs:
    return Jobs()


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    """Opened at the end of every test in any case, so that no job outlives its test."""
    event = threading.Event()
    yield event
    event.set()


def _pool(jobs: Jobs, **options: Any) -> WorkerPool:
    pool = WorkerPool(jobs.run, on_room=jobs.on_room, name="unit", **options)
    jobs.pool = pool
    return pool


def _pool_threads_alive(pool: WorkerPool) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(f"{pool._name} worker")]


def test_bounds_are_checked() -> None:
    with pytest.raises(ValueError, match="max_workers"):
        WorkerPool(print, max_workers=0, max_pending=0, on_room=print, name="x")
    with pytest.raises(ValueError, match="max_pending"):
        WorkerPool(print, max_workers=1, max_pending=-1, on_room=print, name="x")
    pool = WorkerPool(print, max_workers=4, max_pending=0, on_room=print, name="x", max_threads=2)
    assert pool.max_threads == 4  # never below the warm workers
    assert pool.threads == 0  # threads start with the jobs, not before
    assert pool.close(WAIT)


def test_the_pool_grows_past_max_workers_up_to_max_threads_while_all_are_busy(
    jobs: Jobs, gate: threading.Event, servekit_log: LogWatcher
) -> None:
    """2 warm workers, max_threads=5: five jobs that hold their thread all run at once
    (a pool that did not grow would run two), a sixth queues, and no sixth thread starts."""
    pool = _pool(jobs, max_workers=2, max_threads=5, max_pending=3)
    try:
        for _ in range(5):
            pool.submit(gate, None)
        assert jobs.wait(lambda: jobs.running == 5)
        assert pool.threads == 5
        assert servekit_log.wait_for("all 2 warm workers busy; starting extra threads")
        pool.submit(gate, None)
        assert pool.threads == 5  # threads start in submit(): none has, past max_threads
        assert jobs.started == 5
        assert pool.has_room()  # 5 running + 1 queued < 5 threads + 3 pending
        pool.submit(gate, None)
        pool.submit(gate, None)
        assert not pool.has_room()  # 5 running + 3 queued: full
        gate.set()
        assert jobs.wait(lambda: jobs.finished == 8 and jobs.rooms == 8)
        assert jobs.most_running == 5
        assert len(jobs.threads) == 5
        assert pool.has_room()
    finally:
        gate.set()
        assert pool.close(WAIT)
    grown = "unit: all 2 warm workers busy; starting extra threads (max_threads=5)"
    assert servekit_log.messages().count(grown) == 1  # once per growth, not once per thread


def test_without_max_threads_the_pool_always_has_room(jobs: Jobs, gate: threading.Event) -> None:
    pool = _pool(jobs, max_workers=1, max_threads=None, max_pending=0)
    try:
        for _ in range(6):
            pool.submit(gate, None)
        assert jobs.wait(lambda: jobs.running == 6)  # each got a thread of its own
        # At least 6, not exactly: two workers that have both arrived and not yet taken a
        # job are not counted as coming, so the first to take one may start a spare
        # thread for the job the second is about to take (seen in ~1 run in 10).
        assert pool.threads >= 6
        assert pool.has_room()
    finally:
        gate.set()
        assert pool.close(WAIT)


def test_extra_threads_leave_after_extra_idle_and_the_warm_ones_stay(
    jobs: Jobs, gate: threading.Event, servekit_log: LogWatcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pool_module, "EXTRA_IDLE", 0.05)
    pool = _pool(jobs, max_workers=2, max_threads=6, max_pending=0)
    try:
        for _ in range(6):
            pool.submit(gate, None)
        assert jobs.wait(lambda: jobs.running == 6)
        assert pool.threads == 6
        gate.set()
        assert jobs.wait(lambda: jobs.finished == 6)
        # The pool logs the moment the last extra thread leaves.
        assert servekit_log.wait_for("unit: back to 2 warm workers")
        assert pool.threads == 2
        assert len(_pool_threads_alive(pool)) >= 2
        # The warm workers still serve, without growing again.
        pool.submit(None, None)
        assert jobs.wait(lambda: jobs.finished == 7)
        assert pool.threads <= 2
    finally:
        gate.set()
        assert pool.close(WAIT)


def test_on_room_is_called_after_each_job_with_its_slot_free(
    jobs: Jobs, gate: threading.Event
) -> None:
    """A full pool: the on_room of the job that finishes sees has_room() True. (Called
    before the job's slot was given back, it would see the pool still full.)"""
    pool = _pool(jobs, max_workers=1, max_threads=1, max_pending=1)
    try:
        assert pool.has_room()
        pool.submit(gate, None)
        assert jobs.wait(lambda: jobs.running == 1)
        assert pool.has_room()  # one running, none queued: one may still queue
        pool.submit(gate, None)
        assert not pool.has_room()
        assert jobs.rooms == 0  # no job has finished
        gate.set()
        assert jobs.wait(lambda: jobs.rooms == 2)
        assert jobs.room_seen == [True, True]
    finally:
        gate.set()
        assert pool.close(WAIT)


def test_a_job_that_raises_keeps_its_thread_and_calls_on_room(
    jobs: Jobs, servekit_log: LogWatcher
) -> None:
    pool = _pool(jobs, max_workers=1, max_threads=1, max_pending=5)
    try:
        pool.submit(None, SystemExit(3))  # a handler's sys.exit(): not the pool's end
        pool.submit(None, None)
        assert jobs.wait(lambda: jobs.finished == 2 and jobs.rooms == 2)
        assert servekit_log.wait_for("unit: a request escaped its error handling")
        assert pool.threads == 1
        assert len(jobs.threads) == 1  # the same thread ran both
    finally:
        assert pool.close(WAIT)


def test_close_returns_false_while_a_job_runs_and_true_once_it_is_done(
    jobs: Jobs, gate: threading.Event
) -> None:
    pool = _pool(jobs, max_workers=1, max_threads=1, max_pending=3)
    pool.submit(gate, None)
    pool.submit(gate, None)  # queued behind it
    pool.submit(gate, None)
    assert jobs.wait(lambda: jobs.running == 1)
    started = monotonic()
    assert pool.close(0.1) is False  # a bound: close() gives up after it
    assert 0.09 <= monotonic() - started < WAIT
    with pytest.raises(RuntimeError, match="closed"):
        pool.submit(None, None)
    assert jobs.finished == 0
    gate.set()
    assert pool.close(WAIT) is True
    assert jobs.finished == 3  # the queued jobs ran before close() said done
    assert _pool_threads_alive(pool) == []  # and the threads are gone


def test_close_with_nothing_running_is_true_at_once(jobs: Jobs) -> None:
    pool = _pool(jobs, max_workers=3, max_threads=3, max_pending=0)
    for _ in range(3):
        pool.submit(None, None)
    assert jobs.wait(lambda: jobs.rooms == 3)  # on_room: after the job's slot is free
    assert pool.close(0) is True  # nothing to wait for: no time needed
    assert pool.close(WAIT) is True  # twice is harmless (and joins the threads)
    assert _pool_threads_alive(pool) == []
