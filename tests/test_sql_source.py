"""The SQL request source (servekit.sql.source) on real databases: rows served by handlers on
every model, their outcomes recorded (done, retried, dead, refused), leases extended while
a handler runs, a stop that gives back what it did not start, a worker killed with SIGKILL in
the middle of a row, and the configuration refused before anything is served."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sqlite3
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
from servekit.aio import AsyncBaseRequestHandler
from tests._postgres import shared_server
from tests.conftest import WAIT, serving, until
from tests.test_sql_backend import raw

MODELS = ["sync", "threads", "pool", "fork", "async"]


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:{tmp_path / 'jobs.db'}"
    return shared_server().new_database()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:{tmp_path / 'jobs.db'}"


def counts(url: str) -> dict[str, int]:
    with sql.open_backend(url) as backend:
        return backend.stats().get("default", dict.fromkeys(sql.STATES, 0))


class Runs:
    """Each run of a handler, as a line in a file: the fork model's children write too."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.touch()

    def add(self, job: sql.Job) -> None:
        with open(self.path, "a") as file:
            file.write(f"{job.id} {job.attempt}\n")

    def ids(self) -> Counter[int]:
        return Counter(int(line.split()[0]) for line in self.path.read_text().splitlines())


def handler_for(concurrency: str, runs: Runs) -> type[Any]:
    def work(job: sql.Job) -> None:
        runs.add(job)
        if job.payload == "boom":
            raise RuntimeError(f"boom on attempt {job.attempt}")

    if concurrency == "async":

        class AsyncJob(AsyncBaseRequestHandler):
            async def handle(self) -> None:
                work(self.request)

        return AsyncJob

    class Job(servekit.BaseRequestHandler):
        def handle(self) -> None:
            work(self.request)

    return Job


def holding(
    release: threading.Event, started: threading.Event | None = None
) -> type[servekit.BaseRequestHandler]:
    """A handler that holds the row whose payload is "hold" until ``release`` is set
    (``started`` is set when it starts); any other row ends at once."""

    class Hold(servekit.BaseRequestHandler):
        def handle(self) -> None:
            if self.request.payload == "hold":
                if started is not None:
                    started.set()
                assert release.wait(WAIT)

    return Hold


@pytest.mark.parametrize("concurrency", MODELS)
def test_rows_are_served_on_every_model_and_their_outcomes_recorded(
    concurrency: str, url: str, tmp_path: Path
) -> None:
    runs = Runs(tmp_path / "runs")
    server = servekit.make_server(
        url, handler_for(concurrency, runs), concurrency=concurrency, max_attempts=2,
        retry_backoff=0.05,
    )  # fmt: skip
    ids = [sql.enqueue(url, {"n": n}) for n in range(30)]
    failing = sql.enqueue(url, "boom")
    with serving(server):
        until(lambda: counts(url)["done"] == 30 and counts(url)["dead"] == 1, "30 done, 1 dead")
        assert server.stats.requests == 32  # 30, and the failing row twice
    assert runs.ids() == Counter({**dict.fromkeys(ids, 1), failing: 2})
    with sql.open_backend(url) as backend:
        (dead,) = backend.dead()
    assert (dead.id, dead.attempt) == (failing, 2)
    assert "RuntimeError: boom on attempt 2" in dead.last_error


@pytest.mark.parametrize("concurrency", ["threads", "pool", "async"])
def test_rows_run_beside_a_slow_one_where_the_model_has_room(
    concurrency: str, sqlite_url: str
) -> None:
    """The first row waits for the second to start: served one after the other,
    it would wait for ever (here: WAIT)."""
    second_started = threading.Event()

    def work(job: sql.Job) -> None:
        if job.payload == "first":
            assert second_started.wait(WAIT), "the second row never ran beside the first"
        else:
            second_started.set()

    class Job(servekit.BaseRequestHandler):
        def handle(self) -> None:
            work(self.request)

    class AsyncJob(AsyncBaseRequestHandler):
        async def handle(self) -> None:
            if self.request.payload == "first":
                await asyncio.get_running_loop().run_in_executor(None, work, self.request)
            else:
                work(self.request)

    handler = AsyncJob if concurrency == "async" else Job
    server = servekit.make_server(sqlite_url, handler, concurrency=concurrency)
    sql.enqueue(sqlite_url, "first", priority=1)
    sql.enqueue(sqlite_url, "second")
    with serving(server):
        until(lambda: counts(sqlite_url)["done"] == 2, "both rows done")
    assert counts(sqlite_url)["dead"] == 0


def test_rows_held_while_the_database_is_busy_stay_with_the_thread_that_ran_the_last(
    sqlite_url: str,
) -> None:
    """The first row's handler leaves the file write-locked for 200 ms (another
    writer), so its acknowledgement waits: the seven rows claimed with it stay
    with the thread that ran it, as a second thread would wait on the same
    database. Until the source told a row in its handler from one being
    recorded, rows that waited PREFETCH_AFTER went to other threads whatever
    held them up: on four workers of a busy file, a row a thread."""
    threads: list[int] = []
    writer = sqlite3.connect(
        sqlite_url.removeprefix("sqlite:"), isolation_level=None, check_same_thread=False
    )

    class Job(servekit.BaseRequestHandler):
        def handle(self) -> None:
            threads.append(threading.get_ident())
            if len(threads) == 1:
                writer.execute("BEGIN IMMEDIATE")
                threading.Timer(0.2, writer.execute, ("ROLLBACK",)).start()

    server = servekit.make_server(sqlite_url, Job, concurrency="pool", claim_batch=8)
    for n in range(8):
        sql.enqueue(sqlite_url, n)
    try:
        with serving(server):
            until(lambda: counts(sqlite_url)["done"] == 8, "the eight rows done")
    finally:
        writer.close()
    assert len(threads) == 8
    # One thread; two if the machine kept a handler off the CPU for PREFETCH_AFTER
    # (then that row did look slow). Before, all eight ran on eight.
    assert len(set(threads)) <= 2


def test_a_batch_that_ends_together_on_the_async_engine_brings_one_claim(
    url: str, tmp_path: Path
) -> None:
    """Sixteen rows claimed together end together. Each row's end claimed the next
    sixteen (only the last of a claim's rows was meant to), so the rows in flight
    multiplied until max_in_flight (1,024) stopped the loop: peaks of 300 to 1,039 rows
    held on 2,000. Here max_in_flight is eight claims' worth: one claim a batch, and the
    claims beside that come when a handler looks slow (the loop's thread kept off the CPU
    or waiting for the GIL for PREFETCH_AFTER), stay below it."""
    batch, runs = 16, Runs(tmp_path / "runs")
    server = servekit.make_server(
        url, handler_for("async", runs), concurrency="async", claim_batch=batch
    )
    server.max_in_flight = 8 * batch  # type: ignore[attr-defined]
    with sql.open_backend(url) as backend:
        ids = backend.enqueue_many([None] * 2000)
    with serving(server):
        until(lambda: counts(url)["done"] == 2000, "the 2,000 rows done")
    assert server.stats.limits == {}
    assert runs.ids() == dict.fromkeys(ids, 1)


def test_a_row_lost_before_it_started_is_not_run(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Four rows claimed together; while the first runs, another worker takes the other
    three (in the database, as its claim after their leases ran out would). The lease's
    extension finds them gone: they are dropped, not run here as well (they were)."""
    release, started = threading.Event(), threading.Event()
    server = servekit.make_server(
        url, holding(release, started), concurrency="sync", claim_batch=4, lease=0.6
    )
    sql.enqueue(url, "hold", priority=1)
    others = [sql.enqueue(url, n) for n in range(3)]
    with serving(server):
        assert started.wait(WAIT)
        raw(url, "UPDATE servekit_jobs SET owner = 'another', attempt = attempt + 1 "
                 "WHERE id IN (?, ?, ?)", tuple(others))  # fmt: skip
        until(lambda: caplog.text.count("not run here") == 3, "the three rows dropped")
        release.set()
        until(lambda: counts(url)["done"] == 1, "the first row done")
    assert server.stats.requests == 1  # the first row's: none of the three ran here
    assert counts(url)["running"] == 3  # the other worker's
    assert "was no longer ours (its lease ran out" not in caplog.text  # logged once each


@pytest.mark.timeout(60)
def test_a_stop_while_postgresql_is_down_keeps_the_row_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The fork model (the parent records its children's rows): a stop begins while a
    row runs and PostgreSQL is down, then the row ends. The stop returns and says it
    could not record that row, which stays running in the database, to run again when
    its lease runs out. Before, the stop said nothing of it, and the source's thread,
    which had closed the source on hearing the child, failed on the closed database
    with a traceback."""
    database = shared_server()
    url = database.new_database()

    class Hold(servekit.BaseRequestHandler):
        def handle(self) -> None:  # in a child process: files, not events
            (tmp_path / "started").touch()
            until(lambda: (tmp_path / "release").exists(), "released")

    server = servekit.make_server(url, Hold, concurrency="fork", lease=30)
    sql.enqueue(url, "hold")
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.start()
    try:
        until(lambda: (tmp_path / "started").exists(), "the row started")
        database.stop()
        server.shutdown()
        stopping = threading.Thread(target=server.server_close)
        stopping.start()
        until(lambda: server._closing, "the stop begun")  # its drain waits for the child
        (tmp_path / "release").touch()
        stopping.join(WAIT)
        assert not stopping.is_alive(), "the stop did not return"
    finally:
        (tmp_path / "release").touch()
        thread.join(WAIT)
        database.start()
    assert "stopping with the outcome of 1 row(s) not recorded" in caplog.text
    assert "the source's thread failed" not in caplog.text, caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert counts(url)["running"] == 1


def test_a_row_verify_request_refuses_is_dead_at_once(sqlite_url: str, tmp_path: Path) -> None:
    runs = Runs(tmp_path / "runs")

    class Picky(servekit.sql.QueueServer):
        def verify_request(self, request: Any, client_address: Any) -> bool:
            return bool(request.payload != "no")

    server = servekit.make_source_server(Picky, sqlite_url, handler_for("pool", runs))
    refused = sql.enqueue(sqlite_url, "no")
    taken = sql.enqueue(sqlite_url, "yes")
    with serving(server):
        until(lambda: counts(sqlite_url)["dead"] == 1 and counts(sqlite_url)["done"] == 1, "both")
    assert runs.ids() == Counter({taken: 1})
    with sql.open_backend(sqlite_url) as backend:
        (dead,) = backend.dead()
    assert dead.id == refused
    assert "refused by verify_request" in dead.last_error


def test_a_lease_is_extended_while_its_handler_runs(sqlite_url: str, tmp_path: Path) -> None:
    """The handler works three leases long; another worker on the queue meanwhile must
    not get the row (it would, were the lease not extended)."""
    runs = Runs(tmp_path / "runs")

    class Slow(servekit.BaseRequestHandler):
        def handle(self) -> None:
            runs.add(self.request)
            time.sleep(0.9)  # the work

    first = servekit.make_server(sqlite_url, Slow, lease=0.3)
    other = servekit.make_server(sqlite_url, handler_for("pool", runs), lease=0.3)
    row = sql.enqueue(sqlite_url, "slow")
    with serving(first):
        until(lambda: runs.ids(), "the slow row started")
        with serving(other):
            until(lambda: counts(sqlite_url)["done"] == 1, "the slow row done")
            assert runs.ids() == Counter({row: 1})
            after = sql.enqueue(sqlite_url, "next")  # the other worker is alive and claiming
            until(lambda: counts(sqlite_url)["done"] == 2, "the next row done")
    assert runs.ids() == Counter({row: 1, after: 1})


def test_a_stop_finishes_the_row_running_and_gives_back_those_not_started(
    sqlite_url: str, tmp_path: Path
) -> None:
    started, release = threading.Event(), threading.Event()

    class Held(servekit.BaseRequestHandler):
        def handle(self) -> None:
            started.set()
            assert release.wait(WAIT)

    server = servekit.make_server(sqlite_url, Held, concurrency="sync", claim_batch=5)
    ids = [sql.enqueue(sqlite_url, n) for n in range(5)]
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    assert started.wait(WAIT)  # one row running, four claimed with it and not started
    assert counts(sqlite_url)["running"] == 5
    stopping = threading.Thread(target=server.shutdown)
    stopping.start()
    release.set()
    stopping.join(WAIT)
    thread.join(WAIT)
    server.server_close()
    assert counts(sqlite_url) == {"pending": 4, "running": 0, "done": 1, "dead": 0}
    with sql.open_backend(sqlite_url) as backend:
        again = backend.claim(limit=10)
    assert sorted(job.id for job in again) == sorted(ids)[1:]
    assert {job.attempt for job in again} == {1}  # given back: no attempt spent


def test_rows_a_claim_brings_after_a_stop_began_are_given_back_at_once(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A claim beside a slow row waits on the database (another writer holds the file)
    while a stop begins; the row it brings is given back at once, not held until the
    slow row ends (nor, if that row outlived the drain, left for its lease to run out)."""
    caplog.set_level(logging.INFO, logger="servekit")
    release, locked = threading.Event(), threading.Event()
    writer = sqlite3.connect(
        sqlite_url.removeprefix("sqlite:"), isolation_level=None, check_same_thread=False
    )

    class Slow(servekit.BaseRequestHandler):
        def handle(self) -> None:
            if self.request.payload == "hold":
                writer.execute("BEGIN IMMEDIATE")  # the claim beside it waits on this
                locked.set()
                assert release.wait(2 * WAIT)  # past the test's own waits

    server = servekit.make_server(sqlite_url, Slow, concurrency="pool")
    sql.enqueue(sqlite_url, "hold", priority=1)
    sql.enqueue(sqlite_url, "next")
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.start()
    stopping = threading.Thread(target=server.server_close)
    try:
        assert locked.wait(WAIT)
        until(lambda: server._claiming, "a claim beside it, waiting on the file")
        server.shutdown()
        stopping.start()
        until(lambda: server._closing, "the stop begun")
        writer.execute("ROLLBACK")  # the claim lands
        until(lambda: "gave back 1 row(s)" in caplog.text, "the row claimed given back")
        assert counts(sqlite_url)["pending"] == 1
        assert counts(sqlite_url)["running"] == 1  # the slow row, still in its handler
    finally:
        release.set()
        stopping.join(WAIT)
        thread.join(WAIT)
        writer.close()
    assert counts(sqlite_url) == {"pending": 1, "running": 0, "done": 1, "dead": 0}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("concurrency", ["fork", "async"])
def test_a_row_the_stop_cuts_is_given_back_without_spending_an_attempt(
    concurrency: str, sqlite_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A row still in its handler when shutdown_timeout runs out is cut (its forked
    child ended; its task cancelled, after CUT_GRACE): it is given back, pending with
    no attempt spent, and the log names it. It was recorded as failed: dead here, on
    its one attempt, with the cancellation's traceback for its error."""
    started = tmp_path / "started"  # a file: the fork model runs the row in a child

    class Hang(servekit.BaseRequestHandler):
        def handle(self) -> None:
            started.touch()
            time.sleep(3 * WAIT)

    class AsyncHang(AsyncBaseRequestHandler):
        async def handle(self) -> None:
            started.touch()
            await asyncio.sleep(3 * WAIT)

    server = servekit.make_server(
        sqlite_url, AsyncHang if concurrency == "async" else Hang, concurrency=concurrency,
        shutdown_timeout=0.2, max_attempts=1,
    )  # fmt: skip
    row = sql.enqueue(sqlite_url, "hang")
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.start()
    try:
        until(started.exists, "the row started")
    finally:
        server.shutdown()
        thread.join(WAIT)
        server.server_close()
    assert counts(sqlite_url) == {"pending": 1, "running": 0, "done": 0, "dead": 0}
    assert raw(sqlite_url, "SELECT attempt FROM servekit_jobs") == [(0,)]
    assert f"1 row(s) still in their handlers after shutdown_timeout=0.2s ({row})" in caplog.text
    assert f"row {row} of queue 'default' was cut by the stop" in caplog.text


def test_a_row_that_ends_while_a_stop_gives_rows_back_leaves_the_database_open(
    sqlite_url: str,
) -> None:
    """server_close() gives back the rows claimed and not started, before the rows in
    flight finish. A row that ended during that give-back once closed the database under
    it: server_close() raised QueueError, and the rows it was giving back stayed running
    until their leases ran out. Here the give-back lets the running row end, then takes
    0.3 s, so that the row's end falls inside it."""
    started, release = threading.Event(), threading.Event()

    class SlowGiveBack(sql.QueueServer):
        def _give_back(self, jobs: list[sql.Job]) -> None:
            if jobs:  # server_close()'s, of the three rows not started
                release.set()
                time.sleep(0.3)
            super()._give_back(jobs)

    # One pool thread, no queue: the other three wait in the source, not started.
    config = servekit.ServerConfig(concurrency="pool", claim_batch=4, max_workers=1, max_pending=0)
    server = servekit.make_source_server(
        SlowGiveBack, sqlite_url, holding(release, started), config=config
    )
    ids = [sql.enqueue(sqlite_url, payload) for payload in ("hold", "a", "b", "c")]
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        assert started.wait(WAIT)
        server.shutdown()
        thread.join(WAIT)
    finally:
        release.set()
        server.server_close()
    assert counts(sqlite_url) == {"pending": 3, "running": 0, "done": 1, "dead": 0}, ids


@pytest.mark.parametrize("concurrency", ["threads", "pool", "fork"])
def test_a_stop_records_the_rows_that_finish_during_its_drain(
    concurrency: str, sqlite_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The thread models and fork call server_close() first and drain after (the
    async engine drains in its loop, before): the database must stay open until the
    rows in flight are recorded (it once closed under them)."""
    release = tmp_path / "release"  # files: fork's children see them too
    started = tmp_path / "started"
    started.touch()

    def work() -> None:
        with open(started, "a") as file:
            file.write("1\n")
        deadline = time.monotonic() + WAIT
        while not release.exists():  # the stop has begun: finish now
            assert time.monotonic() < deadline
            time.sleep(0.01)

    class Job(servekit.BaseRequestHandler):
        def handle(self) -> None:
            work()

    class Stopping(servekit.sql.QueueServer):
        def server_close(self) -> None:
            release.touch()  # before the source's own server_close and the drain
            super().server_close()

    config = servekit.ServerConfig(concurrency=concurrency, claim_batch=4)
    server = servekit.make_source_server(Stopping, sqlite_url, Job, config=config)
    ids = [sql.enqueue(sqlite_url, n) for n in range(4)]
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    until(lambda: len(started.read_text().split()) == 4, "four handlers running")
    server.shutdown()
    thread.join(WAIT)
    server.server_close()
    assert counts(sqlite_url) == {"pending": 0, "running": 0, "done": 4, "dead": 0}, ids
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "WARNING")]


APP = """
import os, time, servekit

class Job(servekit.BaseRequestHandler):
    def handle(self):
        with open(os.environ["RUNS"], "a") as file:
            file.write(f"{self.request.id} {self.request.attempt} {os.getpid()}\\n")
        if self.request.payload == "hang":
            time.sleep(3600)  # killed in the middle of it
"""


@pytest.mark.timeout(60)
def test_a_worker_killed_in_the_middle_of_a_row_loses_nothing(url: str, tmp_path: Path) -> None:
    """kill -9 of the serving process while it runs a row: once its lease runs out,
    another worker runs the row (attempt 2), once; every other row done once."""
    (tmp_path / "app.py").write_text(textwrap.dedent(APP))
    runs = tmp_path / "runs"
    runs.touch()
    with sql.open_backend(url) as backend:
        backend.init()
    hung = sql.enqueue(url, "hang")
    environment = {**os.environ, "RUNS": str(runs)}
    command = [sys.executable, "-m", "servekit", "serve", "app:Job", "--listen", url,
               "--lease", "1", "--status-interval", "none"]  # fmt: skip
    worker = subprocess.Popen(command, cwd=tmp_path, env=environment,
                              stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        until(lambda: runs.read_text(), "the row to hang started")
        os.kill(worker.pid, signal.SIGKILL)
        assert worker.wait(WAIT) == -signal.SIGKILL
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    others = [sql.enqueue(url, n) for n in range(20)]
    survivor_runs = Runs(tmp_path / "survivor")

    class Finish(servekit.BaseRequestHandler):
        def handle(self) -> None:
            survivor_runs.add(self.request)

    survivor = servekit.make_server(url, Finish, lease=1)
    with serving(survivor):
        until(lambda: counts(url)["done"] == 21, "every row done")
    assert survivor_runs.ids() == Counter(dict.fromkeys([hung, *others], 1))
    attempts = dict(line.split() for line in survivor_runs.path.read_text().splitlines())
    assert attempts[str(hung)] == "2"


def test_the_configuration_is_refused_before_serving(sqlite_url: str, tmp_path: Path) -> None:
    runs = Runs(tmp_path / "runs")
    handler = handler_for("pool", runs)
    with pytest.raises(ValueError, match="idle_timeout applies to sockets"):
        servekit.make_server(sqlite_url, handler, idle_timeout=5)
    with pytest.raises(ValueError, match=r"lease applies to a queue \(a sqlite: or postgresql"):
        servekit.make_server("127.0.0.1:0", handler, lease=5)
    with pytest.raises(ValueError, match="lease must be a number of seconds > 0"):
        servekit.make_server(sqlite_url, handler, lease=0)
    with pytest.raises(TypeError, match="sync handler: the async engine"):
        servekit.make_server(sqlite_url, handler, concurrency="async")
    with pytest.raises(ValueError, match="queue name"):
        servekit.make_server(sqlite_url + "?queue=no%20spaces", handler)
    with pytest.raises(sql.QueueUnavailable, match="no-such-folder"):
        servekit.make_server(f"sqlite:{tmp_path / 'no-such-folder' / 'jobs.db'}", handler)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--listen", "sqlite:jobs.db", "--idle-timeout", "5"],
         "--idle-timeout: socket options do nothing for a queue"),
        (["--listen", "127.0.0.1:0", "--lease", "5"],
         "--lease: queue options do nothing without a queue to serve"),
        (["--listen", "sqlite:jobs.db", "--listen", "127.0.0.1:0"],
         "a queue's rows and a socket's requests are not served by one handler"),
        (["--listen", "sqlite:no-such-folder/jobs.db"],
         "cannot serve sqlite:no-such-folder/jobs.db"),
        (["--listen", "postgresql://127.0.0.1:1/nowhere"],
         "cannot serve postgresql://127.0.0.1:1/nowhere"),
    ],
)  # fmt: skip
def test_servekit_serve_refuses_a_wrong_queue_configuration_in_one_line(
    arguments: list[str], message: str, tmp_path: Path
) -> None:
    (tmp_path / "app.py").write_text(textwrap.dedent(APP))
    done = subprocess.run(
        [sys.executable, "-m", "servekit", "serve", "app:Job", *arguments],
        cwd=tmp_path, capture_output=True, text=True, timeout=WAIT,
    )  # fmt: skip
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr
