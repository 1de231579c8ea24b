"""The worker pool on its own: growth past the warm workers, and the wake-up accounting."""

from __future__ import annotations

import random
import threading
import time

import pytest

import servekit._pool as pool_module
from servekit._pool import WorkerPool


@pytest.mark.timeout(60)
def test_a_notify_racing_an_extra_threads_timeout_loses_no_job(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An extra thread's idle wait times out just as a job calls it: the job must still
    run. Before the fix, the pool then left every later job queued beside idle workers
    (seen within a few rounds)."""
    monkeypatch.setattr(pool_module, "EXTRA_IDLE", 0.02)
    done = threading.Semaphore(0)

    def run(pause: float, _: object) -> None:
        if pause:
            time.sleep(pause)  # a job that takes a while, so that the pool grows
        done.release()

    pool = WorkerPool(run, max_workers=1, max_pending=100, on_room=lambda: None, name="t",
                      max_threads=50)  # fmt: skip
    deadline = time.monotonic() + 5
    rounds = 0
    try:
        while time.monotonic() < deadline:
            rounds += 1
            for _ in range(8):
                pool.submit(0.002, None)
            for _ in range(8):
                assert done.acquire(timeout=5), f"round {rounds}: a job never ran"
            # The next job lands around the moment the extra threads give up waiting.
            time.sleep(pool_module.EXTRA_IDLE * random.uniform(0.8, 1.2))
            pool.submit(0, None)
            assert done.acquire(timeout=5), f"round {rounds}: a job never ran"
    finally:
        assert pool.close(5)
    assert rounds > 20
