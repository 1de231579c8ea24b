"""The PostgreSQL backend's own cases, on a real server (tests/_postgres.py):
the server stopped and started again under a backend, a URL that points
nowhere, psycopg missing."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from servekit import sql
from servekit.sql import QueueUnavailable
from tests._postgres import PostgresServer, _free_port, shared_server
from tests.conftest import WAIT


@pytest.fixture
def server() -> PostgresServer:
    return shared_server()


@pytest.fixture
def url(server: PostgresServer) -> str:
    url = server.new_database()
    with sql.open_backend(url) as backend:
        backend.init()
    return url


@pytest.fixture
def backend(url: str) -> Iterator[Any]:
    backend = sql.open_backend(url, reconnect_backoff=0.05, reconnect_backoff_cap=0.2)
    yield backend
    backend.close()


def until_available(call: Any, what: str) -> Any:
    """Call ``call`` until it stops raising QueueUnavailable (bounded)."""
    deadline = time.monotonic() + WAIT
    while True:
        try:
            return call()
        except QueueUnavailable:
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: still unavailable after {WAIT} s") from None
            time.sleep(0.02)


@pytest.mark.timeout(60)
def test_a_restarted_server_is_reconnected_and_nothing_is_lost(
    server: PostgresServer, backend: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="servekit.sql")
    ids = backend.enqueue_many(range(10))
    held = backend.claim(limit=4, lease=60)
    assert backend.wait(0) is True  # LISTEN is up
    server.stop()
    try:
        with pytest.raises(QueueUnavailable, match="lost the connection to PostgreSQL") as lost:
            backend.claim(limit=3)
        assert isinstance(lost.value, OSError)  # a request source's get_request_failed() path
        with pytest.raises(QueueUnavailable, match=r"cannot connect|unreachable"):
            backend.stats()
        with pytest.raises(QueueUnavailable):
            backend.enqueue("while down")
        # wait() does not raise while the database is away: it sleeps until the next
        # attempt is due and says "try again".
        assert backend.wait(WAIT) is True
    finally:
        server.start()
    # The claims made before the outage are still this worker's.
    assert until_available(lambda: backend.complete_many(held), "complete") == held
    rest = backend.claim(limit=10)
    assert sorted(job.id for job in rest) == ids[4:]
    backend.complete_many(rest)
    assert backend.stats()["default"] == {"pending": 0, "running": 0, "done": 10, "dead": 0}
    messages = [record.getMessage() for record in caplog.records]
    assert any(m.startswith("lost the connection to PostgreSQL at") for m in messages)
    assert any(m.startswith("cannot connect to PostgreSQL at") for m in messages)
    assert any("again" in m and "after losing it" in m for m in messages)
    assert all(record.name == "servekit.sql" for record in caplog.records)


@pytest.mark.timeout(60)
def test_listen_comes_back_after_a_restart(server: PostgresServer, backend: Any, url: str) -> None:
    backend.wait(0)
    server.stop()
    server.start()
    # The LISTEN connection's loss is seen: wait() says "look again"...
    assert until_available(lambda: backend.wait(WAIT), "wait") is True
    until_available(backend.claim, "claim")
    backend.wait(0.01)
    # ...and notifications arrive again on the new one.
    started = time.monotonic()
    sql.enqueue(url, "after the restart")
    assert backend.wait(WAIT) is True
    assert time.monotonic() - started < WAIT / 2
    (job,) = backend.claim()
    assert job.payload == "after the restart"


def test_notify_wakes_a_waiting_worker_fast(url: str) -> None:
    worker = sql.open_backend(url, poll_interval=60)
    producer = sql.open_backend(url)
    try:
        worker.wait(0)
        latencies = []
        for n in range(5):
            producer.enqueue(n)
            started = time.monotonic()
            assert worker.wait(WAIT) is True
            latencies.append(time.monotonic() - started)
            (job,) = worker.claim()
            worker.complete(job)
        assert sorted(latencies)[2] < 0.1  # the median, far under the 60 s poll
    finally:
        worker.close()
        producer.close()


def test_a_url_that_points_nowhere_is_one_clear_error(server: PostgresServer) -> None:
    nowhere = f"postgresql://postgres@127.0.0.1:{_free_port()}/jobs"
    with pytest.raises(QueueUnavailable) as info:
        sql.open_backend(nowhere)
    message = str(info.value)
    assert message.startswith(f"cannot connect to PostgreSQL at {nowhere}: ")
    assert "refused" in message
    assert "\n" not in message
    with pytest.raises(QueueUnavailable, match="cannot connect to PostgreSQL"):
        sql.enqueue(nowhere, "x")
    with pytest.raises(QueueUnavailable, match='database "no_such_db" does not exist'):
        sql.open_backend(server.url("no_such_db"))
    with pytest.raises(QueueUnavailable, match="cannot open the SQLite database"):
        sql.open_backend("sqlite:/no/such/folder/jobs.db")


def test_psycopg_is_imported_only_for_postgresql_and_its_absence_is_clear() -> None:
    code = (
        "import sys\n"
        "from servekit import sql\n"
        "assert 'psycopg' not in sys.modules, 'imported without need'\n"
        "sys.modules['psycopg'] = None\n"
        "try:\n"
        "    sql.open_backend('postgresql://127.0.0.1/db')\n"
        "except sql.DriverMissing as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert "pip install 'servekit[postgres]'" in result.stdout


def test_a_queue_just_filled_is_claimed_through_the_claim_index(backend: Any) -> None:
    """Before the table's first ANALYZE the planner takes it for nearly empty and
    would claim through the _due index and a sort of every pending row (80 ms a claim
    at 200,000 rows); the backend's connections make the sort its last resort."""
    backend.enqueue_many([{"n": n} for n in range(50_000)])
    conn = backend._connection()
    (analyzed,) = conn.execute(
        "SELECT last_analyze IS NULL AND last_autoanalyze IS NULL "
        "FROM pg_stat_user_tables WHERE relname = 'servekit_jobs'"
    ).fetchone()
    plan = "\n".join(
        row[0]
        for row in conn.execute(
            "EXPLAIN SELECT id FROM servekit_jobs WHERE state = 'pending' AND queue = 'default' "
            "AND run_at <= now() ORDER BY priority DESC, run_at, id LIMIT 100 "
            "FOR UPDATE SKIP LOCKED"
        )
    )
    assert analyzed, "the table was analyzed already: this test sees nothing"
    assert "servekit_jobs_claim" in plan, plan
    assert "Sort" not in plan, plan
    assert len(backend.claim(100, 30)) == 100
