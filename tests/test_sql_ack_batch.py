"""``ack_batch``: rows whose handlers returned, acknowledged together (servekit.sql.source).

Rows acknowledged in one transaction share its time: their ``finished_at`` is the same
(SQLite: the clock read once a transaction; PostgreSQL: ``now()``), so the groups are
read back from the database. ``ACK_WITHIN`` is set out of the way where a test counts
groups, so that they are made by count and by claim alone, whatever the machine's speed.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import servekit
from servekit import sql
from servekit.sql import source
from tests._postgres import shared_server
from tests.conftest import WAIT, serving, until
from tests.test_sql_backend import raw
from tests.test_sql_source import Runs, counts, handler_for, holding


def initialised(url: str) -> str:
    with sql.open_backend(url) as backend:
        backend.init()
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return initialised(f"sqlite:{tmp_path / 'jobs.db'}")
    return initialised(shared_server().new_database())


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return initialised(f"sqlite:{tmp_path / 'jobs.db'}")


@pytest.fixture
def by_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows wait for their acknowledgement until a claim or ``ack_batch`` of them."""
    monkeypatch.setattr(source, "ACK_WITHIN", WAIT)


def groups(url: str) -> list[int]:
    """The sizes of the groups of done rows (one transaction each), largest first."""
    times = raw(url, "SELECT finished_at FROM servekit_jobs WHERE state = 'done'")
    return sorted(Counter(times).values(), reverse=True)


def states(url: str, ids: list[int]) -> list[str]:
    found = dict(raw(url, "SELECT id, state FROM servekit_jobs"))
    return [found[row] for row in ids]


def lease_until(url: str, row: int) -> Any:
    return dict(raw(url, "SELECT id, lease_until FROM servekit_jobs"))[row]


@pytest.mark.parametrize(("ack_batch", "expected"), [(8, [8, 8, 8, 8]), (1, [1] * 32)])
def test_rows_claimed_together_are_acknowledged_together(
    url: str, by_count: None, ack_batch: int, expected: list[int]
) -> None:
    """One at a time (sync), claim_batch 8 and ack_batch 8: the first seven rows of a
    claim wait, the eighth's end acknowledges all eight and claims the next eight, in one
    transaction. Without ack_batch, each row is a transaction of its own."""

    class Job(servekit.BaseRequestHandler):
        def handle(self) -> None:
            pass

    for n in range(32):
        sql.enqueue(url, n)
    server = servekit.make_server(url, Job, concurrency="sync", claim_batch=8, ack_batch=ack_batch)
    with serving(server):
        until(lambda: counts(url)["done"] == 32, "32 rows done")
    assert groups(url) == expected


@pytest.mark.parametrize("concurrency", ["sync", "threads", "pool", "fork", "async"])
def test_every_model_acknowledges_in_batches_and_records_failures_at_once(
    concurrency: str, sqlite_url: str, tmp_path: Path
) -> None:
    """Every row done exactly once, some of them together; a row that fails is retried
    and then dead as without ack_batch (failures are not held back)."""
    runs = Runs(tmp_path / "runs")
    server = servekit.make_server(
        sqlite_url, handler_for(concurrency, runs), concurrency=concurrency, claim_batch=16,
        ack_batch=16, max_attempts=2, retry_backoff=0.05,
    )  # fmt: skip
    with sql.open_backend(sqlite_url) as backend:
        ids = backend.enqueue_many(list(range(64)))
    failing = sql.enqueue(sqlite_url, "boom")
    with serving(server):
        until(lambda: counts(sqlite_url) == {"pending": 0, "running": 0, "done": 64, "dead": 1},
              "64 done and 1 dead")  # fmt: skip
    assert runs.ids() == Counter({**dict.fromkeys(ids, 1), failing: 2})
    assert groups(sqlite_url)[0] > 1
    assert server.stats.requests == 66


def test_a_row_done_waits_at_most_ack_within(url: str) -> None:
    """Two rows claimed together, one at a time: the first is done while the second's
    handler still runs (the source's thread acknowledges it, ACK_WITHIN after its end),
    not held back until the second ends."""
    release = threading.Event()
    Job = holding(release)

    first, second = sql.enqueue(url, "quick"), sql.enqueue(url, "hold")
    server = servekit.make_server(url, Job, concurrency="sync", claim_batch=2, ack_batch=8)
    try:
        with serving(server):
            until(lambda: states(url, [first, second]) == ["done", "running"],
                  "the first done while the second runs")  # fmt: skip
            release.set()
            until(lambda: counts(url)["done"] == 2, "both done")
    finally:
        release.set()


def test_a_stop_acknowledges_the_rows_waiting(url: str, by_count: None) -> None:
    """Rows done and waiting for their acknowledgement when a stop comes are done when it
    returns; the row claimed and not started is given back, no attempt spent."""
    started, release = threading.Event(), threading.Event()
    ids = [sql.enqueue(url, payload) for payload in ("a", "b", "hold", "d")]
    server = servekit.make_server(
        url, holding(release, started), concurrency="sync", claim_batch=4, ack_batch=4
    )
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        assert started.wait(WAIT)
        # The first two wait for their acknowledgement: a worker killed now runs them again.
        assert states(url, ids) == ["running"] * 4
        stopping = threading.Thread(target=server.shutdown)
        stopping.start()
        release.set()
        stopping.join(WAIT)
        thread.join(WAIT)
    finally:
        release.set()
        server.server_close()
    assert states(url, ids) == ["done", "done", "done", "pending"]
    with sql.open_backend(url) as backend:
        (again,) = backend.claim(limit=4)
    assert (again.id, again.attempt) == (ids[3], 1)


def test_a_fork_models_stop_returns_once_the_rows_waiting_are_acknowledged(
    sqlite_url: str, by_count: None, tmp_path: Path
) -> None:
    """On the fork model the source's thread records the children's rows, and acknowledges
    those waiting when the last has ended. server_close() once returned at that end, before
    the acknowledgement: a program that then exits left the rows running until their leases
    ran out. The acknowledgement is made slow here (0.3 s), so that such a stop is seen."""
    release = tmp_path / "release"  # files: the children see them too
    runs = Runs(tmp_path / "runs")

    class Job(servekit.BaseRequestHandler):
        def handle(self) -> None:
            runs.add(self.request)
            if self.request.payload == "hold":
                until(release.exists, "the stop to begin")

    class SlowAcks(sql.QueueServer):
        def _ack_waiting(self) -> None:
            time.sleep(0.3)
            super()._ack_waiting()

    ids = [sql.enqueue(sqlite_url, payload) for payload in ("a", "b", "c", "hold")]
    config = servekit.ServerConfig(concurrency="fork", claim_batch=4, ack_batch=8)
    server = servekit.make_source_server(SlowAcks, sqlite_url, Job, config=config)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        until(lambda: len(runs.ids()) == 4, "four rows started")
        stopping = threading.Thread(target=server.shutdown)
        stopping.start()
        release.touch()
        stopping.join(WAIT)
        thread.join(WAIT)
    finally:
        release.touch()
        server.server_close()
    assert states(sqlite_url, ids) == ["done"] * 4


def test_the_rows_waiting_keep_their_leases(sqlite_url: str, by_count: None) -> None:
    """A row done and waiting stays this worker's: its lease is extended with the others'
    (lease 0.6 s, extended every 0.2 s), and it is acknowledged, not claimed again."""
    release = threading.Event()
    Job = holding(release)

    ids = [sql.enqueue(sqlite_url, payload) for payload in ("a", "hold")]
    server = servekit.make_server(
        sqlite_url, Job, concurrency="sync", claim_batch=2, ack_batch=2, lease=0.6
    )
    try:
        with serving(server):
            first_lease = until(lambda: lease_until(sqlite_url, ids[0]), "the claim")
            until(lambda: lease_until(sqlite_url, ids[0]) > first_lease, "an extension")
            assert states(sqlite_url, ids) == ["running", "running"]
            release.set()
            until(lambda: counts(sqlite_url)["done"] == 2, "both done")
    finally:
        release.set()
    attempts = dict(raw(sqlite_url, "SELECT id, attempt FROM servekit_jobs"))
    assert [attempts[row] for row in ids] == [1, 1]


APP = """
import servekit

class Job(servekit.BaseRequestHandler):
    def handle(self):
        pass
"""


def test_servekit_serve_takes_ack_batch(tmp_path: Path) -> None:
    """``--ack-batch`` through the command line and two worker processes: every row done,
    in groups; SIGTERM stops both workers cleanly; ``--ack-batch 0`` is one error line."""
    (tmp_path / "app.py").write_text(textwrap.dedent(APP))
    url = f"sqlite:{tmp_path / 'jobs.db'}"
    with sql.open_backend(url) as backend:
        backend.init()
        backend.enqueue_many(list(range(400)))
    command = [sys.executable, "-m", "servekit", "serve", "app:Job", "--listen", url,
               "--status-interval", "none"]  # fmt: skip
    refused = subprocess.run(
        [*command, "--ack-batch", "0"], cwd=tmp_path, capture_output=True, text=True,
        timeout=WAIT,
    )  # fmt: skip
    assert refused.returncode == 2
    assert "--ack-batch" in refused.stderr
    assert "Traceback" not in refused.stderr
    server = subprocess.Popen(
        [*command, "--workers", "2", "--claim-batch", "32", "--ack-batch", "32"],
        cwd=tmp_path, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        until(lambda: counts(url)["done"] == 400, "400 rows done")
        server.send_signal(signal.SIGTERM)
        _, log = server.communicate(timeout=WAIT)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert server.returncode == 0, log
    assert counts(url) == {"pending": 0, "running": 0, "done": 400, "dead": 0}
    assert groups(url)[0] > 1
