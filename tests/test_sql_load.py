"""The SQL request source under load, as it is run: ``servekit serve --workers N`` processes
on real databases (SQLite in a temporary folder, the suite's PostgreSQL). Many rows through
four workers, a worker killed with SIGKILL mid-stream, PostgreSQL stopped and started again
under the workers, malformed payloads and a queue the server does not listen on.

Each run of a handler is a line ``id attempt pid`` in a file of its process, written with
one ``write`` to an O_APPEND descriptor before the handler returns (so before the row's
acknowledgement): a row run twice shows twice, even when its worker was killed."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from servekit import sql
from tests._postgres import PostgresServer, shared_server
from tests.conftest import WAIT, until
from tests.test_sql_backend import raw

APP = """
import os, threading, time, servekit

_lock = threading.Lock()
_fd = None
_pid = None


def _runs_fd():
    global _fd, _pid
    with _lock:
        if _pid != os.getpid():  # opened once per process (a forked worker opens its own)
            _fd = os.open(
                os.path.join(os.environ["RUNS"], f"runs.{os.getpid()}"),
                os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644,
            )
            _pid = os.getpid()
        return _fd


class Job(servekit.BaseRequestHandler):
    def handle(self):
        row = self.request
        os.write(_runs_fd(), f"{row.id} {row.attempt} {os.getpid()}\\n".encode())
        if row.payload == "slow":
            time.sleep(0.01)
"""

#: One stats() look every this many seconds while waiting on a big queue.
POLL = 0.2


@dataclass(frozen=True)
class Run:
    id: int
    attempt: int
    pid: int


class Serve:
    """``python -m servekit serve app:Job --listen URL ...`` in ``folder``, its log in a file."""

    def __init__(self, folder: Path, url: str, *options: str) -> None:
        folder.mkdir(exist_ok=True)
        (folder / "app.py").write_text(textwrap.dedent(APP))
        self.runs = folder / "runs"
        self.runs.mkdir(exist_ok=True)
        self.log = folder / "serve.log"
        command = [sys.executable, "-m", "servekit", "serve", "app:Job", "--listen", url,
                   "--status-interval", "none", *options]  # fmt: skip
        environment = {**os.environ, "RUNS": str(self.runs), "PYTHONUNBUFFERED": "1"}
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                command, cwd=folder, env=environment, stdout=log, stderr=subprocess.STDOUT
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def started(self) -> list[tuple[int, int]]:
        """(worker number, pid) of each ``worker N started (pid P)`` line so far."""
        return [
            (int(n), int(p))
            for n, p in re.findall(r"worker (\d+) started \(pid (\d+)\)", self.text())
        ]

    def serving(self) -> list[int]:
        """Pids of the workers that said they are serving."""
        return [int(p) for p in re.findall(r"worker \d+ \(pid (\d+)\) is serving", self.text())]

    def run_list(self) -> list[Run]:
        runs = []
        for path in self.runs.iterdir():
            for line in path.read_text().splitlines():
                row, attempt, pid = line.split()
                runs.append(Run(int(row), int(attempt), int(pid)))
        return runs

    def stop(self) -> int:
        """SIGTERM, and its exit status (bounded)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(3 * WAIT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            message = f"servekit serve did not stop on SIGTERM:\n{self.text()[-3000:]}"
            raise AssertionError(message) from None

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Serve]]:
    """Start ``servekit serve`` processes; any left running at the end is killed."""
    started: list[Serve] = []

    def start(url: str, *options: str, folder: str = "serve") -> Serve:
        server = Serve(tmp_path / folder, url, *options)
        started.append(server)
        return server

    yield start
    for server in started:
        server.kill()


def new_url(kind: str, tmp_path: Path) -> str:
    url = f"sqlite:{tmp_path / 'jobs.db'}" if kind == "sqlite" else shared_server().new_database()
    with sql.open_backend(url) as backend:
        backend.init()
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return new_url(request.param, tmp_path)


def counts(url: str, queue: str = "default") -> dict[str, int]:
    with sql.open_backend(url) as backend:
        return backend.stats().get(queue, dict.fromkeys(sql.STATES, 0))


def enqueue_rows(url: str, count: int, payload: object = None, chunk: int = 10_000) -> list[int]:
    ids: list[int] = []
    with sql.open_backend(url) as backend:
        for start in range(0, count, chunk):
            ids += backend.enqueue_many([payload] * min(chunk, count - start))
    return ids


def wait_done(url: str, expected: int, timeout: float, server: Serve) -> None:
    def done() -> bool:
        if server.process.poll() is not None:
            raise AssertionError(f"servekit serve exited early:\n{server.text()[-3000:]}")
        return counts(url)["done"] >= expected

    try:
        until(done, f"{expected} rows done", timeout, every=POLL)
    except AssertionError:
        raise AssertionError(f"{counts(url)}; log:\n{server.text()[-3000:]}") from None


# -- 1. many rows through four workers --------------------------------------------------

#: Rows of test 1 per backend, as issue 14 asks: 200,000 on both. The workers claim and
#: acknowledge 100 rows a transaction (--claim-batch 100 --ack-batch 100), as an operator
#: draining a backlog would: measured on a 2-CPU machine, the drain took 12 s on SQLite
#: and 14 s on PostgreSQL, against 30 s and 104 s with one acknowledgement a row (the
#: default, which test 2 runs through four workers, a kill and 20,000 rows). The enqueue
#: takes 7-10 s more.
MANY = {"sqlite": 200_000, "postgresql": 200_000}


@pytest.mark.timeout(240)
def test_many_rows_through_four_worker_processes(
    url: str, serve: Callable[..., Serve], tmp_path: Path
) -> None:
    """Every row done once, by four workers sharing them; nothing left pending,
    running or dead: 200,000 rows on each backend (see MANY)."""
    kind = "sqlite" if url.startswith("sqlite:") else "postgresql"
    total = MANY[kind]
    ids = enqueue_rows(url, total)
    assert len(set(ids)) == total
    server = serve(url, "--workers", "4", "--claim-batch", "100", "--ack-batch", "100")
    wait_done(url, total, 200, server)
    assert server.stop() == 0, server.text()[-3000:]
    assert counts(url) == {"pending": 0, "running": 0, "done": total, "dead": 0}
    runs = server.run_list()
    seen = Counter(run.id for run in runs)
    assert set(seen) == set(ids)
    assert [row for row, n in seen.items() if n > 1] == []
    assert {run.attempt for run in runs} == {1}
    workers = {pid for _, pid in server.started()}
    assert len(workers) == 4, server.text()  # none died and was replaced
    assert {run.pid for run in runs} == workers  # each of the four took rows


# -- 2. a worker killed with SIGKILL mid-stream -------------------------------------------

KILLED_ROWS = 20_000


@pytest.mark.timeout(180)
def test_a_worker_killed_mid_stream_loses_no_row(
    url: str, serve: Callable[..., Serve], tmp_path: Path
) -> None:
    """kill -9 of one of four workers while they drain a big queue: the supervisor starts
    another, the dead worker's rows are claimed again when their three-second leases run
    out, and every row is done. (A lease of one second, extended every third of it, was
    lost under CI's load by a live worker busy behind slow claims on an unanalysed
    PostgreSQL table: at-least-once allows that second run, this test's exact count not.)
    A row runs twice only if the killed worker had run it (its line written) without its
    acknowledgement: the row's second run is the next attempt,
    by another worker, and that is the attempt the database acknowledged."""
    ids = enqueue_rows(url, KILLED_ROWS)
    server = serve(url, "--workers", "4", "--claim-batch", "10", "--lease", "3")
    until(lambda: len(server.serving()) == 4, "four workers serving")
    (victim,) = [pid for number, pid in server.started() if number == 2]
    until(lambda: counts(url)["done"] >= KILLED_ROWS // 10, "a tenth of the rows done", every=POLL)
    until(lambda: (server.runs / f"runs.{victim}").exists(), "the victim ran rows")
    os.kill(victim, signal.SIGKILL)
    until(lambda: f"(pid {victim}) killed by SIGKILL" in server.text(), "the kill seen")
    until(lambda: len(server.started()) == 5, "a fifth worker started")
    assert counts(url)["done"] < KILLED_ROWS, "killed too late: the queue was drained"
    wait_done(url, KILLED_ROWS, 120, server)
    assert server.stop() == 0, server.text()[-3000:]
    assert counts(url) == {"pending": 0, "running": 0, "done": KILLED_ROWS, "dead": 0}

    runs = server.run_list()
    by_row: dict[int, list[Run]] = {}
    for run in runs:
        by_row.setdefault(run.id, []).append(run)
    assert set(by_row) == set(ids)  # none lost
    twice = {row: rows for row, rows in by_row.items() if len(rows) > 1}
    for row, rows in twice.items():
        assert len(rows) == 2, rows
        first, second = sorted(rows, key=lambda run: run.attempt)
        assert first.pid == victim, f"row {row} ran twice, not first by the killed worker: {rows}"
        assert second.pid != victim, rows
        assert second.attempt == first.attempt + 1, rows
    # (How many: the rows the killed worker was running; on the pool model that is not
    # bounded by --claim-batch, since the source claims more beside rows still running.)
    attempts = dict(raw(url, "SELECT id, attempt FROM servekit_jobs"))
    for row, rows in by_row.items():
        assert attempts[row] == max(run.attempt for run in rows), (row, rows)
    workers = {pid for _, pid in server.started()}
    assert {run.pid for run in runs} <= workers


# -- 3. PostgreSQL stopped and started again under the workers ------------------------------


class Producer(threading.Thread):
    """Enqueues a row every few milliseconds, each tagged with the phase it was made in
    (``before``, ``during``, ``after`` the outage); a row the database refused is tried
    again until it is taken. ``taken``: the payloads the database confirmed."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.phase = "before"
        self.taken: list[list[Any]] = []
        self.refused = 0
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            backend = sql.open_backend(self.url, reconnect_backoff=0.05, reconnect_backoff_cap=0.2)
            try:
                count = 0
                while not self.stopping.is_set():
                    payload = [self.phase, count]
                    count += 1
                    while True:
                        try:
                            backend.enqueue(payload)
                        except sql.QueueUnavailable:
                            self.refused += 1
                            if self.stopping.wait(0.02):  # the producer's pace of retries
                                return
                        else:
                            self.taken.append(payload)
                            break
                    self.stopping.wait(0.005)
            finally:
                backend.close()
        except BaseException as exc:
            self.error = exc

    def phase_taken(self, phase: str) -> int:
        return sum(1 for payload in list(self.taken) if payload[0] == phase)


@pytest.mark.timeout(120)
def test_postgresql_stopped_and_started_again_under_the_workers(
    serve: Callable[..., Serve], tmp_path: Path
) -> None:
    """Rows flowing through two workers; PostgreSQL stopped (fast: every client cut) for
    about two seconds and started again: the workers say the database is unavailable,
    reconnect without restarting, and serve on; every row enqueued before, during (the
    producer retries until the database takes it) and after the outage is done, once."""
    database: PostgresServer = shared_server()
    url = new_url("postgresql", tmp_path)
    server = serve(url, "--workers", "2", "--lease", "10")
    until(lambda: len(server.serving()) == 2, "two workers serving")
    producer = Producer(url)
    producer.start()
    try:
        until(lambda: counts(url)["done"] >= 100, "rows flowing", every=POLL)
        producer.phase = "during"
        database.stop()
        try:
            time.sleep(2)  # the outage itself (the scenario, not a wait for anything)
        finally:
            database.start()
        until(lambda: producer.refused, "an enqueue refused during the outage")
        producer.phase = "after"
        until(lambda: producer.phase_taken("after") >= 100, "rows enqueued after", every=POLL)
    finally:
        producer.stopping.set()
        producer.join(WAIT)
    assert producer.error is None, producer.error
    assert not producer.is_alive()
    taken = len(producer.taken)
    wait_done(url, taken, 60, server)
    assert server.stop() == 0, server.text()[-3000:]

    log = server.text()
    assert "lost the connection to PostgreSQL" in log, log[-3000:]
    # Which thread meets the outage first is the race's: the source's thread says the
    # database is unavailable, a reconnection attempt that it cannot connect.
    assert re.search(r"the database is unavailable|cannot connect to PostgreSQL", log), log[-3000:]
    assert re.search(r"connected to PostgreSQL at .* again", log), log[-3000:]
    assert len(server.started()) == 2, log[-3000:]  # no worker restarted
    assert "Traceback" not in log, log[-3000:]

    rows = raw(url, "SELECT id, payload, state FROM servekit_jobs")
    assert {state for _, _, state in rows} == {"done"}
    stored = Counter(bytes(payload).decode() for _, payload, _ in rows)
    confirmed = Counter(json.dumps(payload, separators=(",", ":")) for payload in producer.taken)
    assert not confirmed - stored  # every row the database took is there (and done)
    runs = server.run_list()
    assert Counter(run.id for run in runs) == Counter({row: 1 for row, _, _ in rows})
    # The workers that served before the outage serve after it.
    after = {row for row, payload, _ in rows if bytes(payload).startswith(b'["after"')}
    assert {run.pid for run in runs if run.id in after} <= set(server.serving())
    assert {run.pid for run in runs if run.id in after}


# -- 4. malformed payloads and a queue the server does not listen on ----------------------


@pytest.mark.timeout(60)
def test_malformed_payloads_go_dead_with_the_reason_and_the_worker_serves_on(
    url: str, serve: Callable[..., Serve], tmp_path: Path
) -> None:
    good = enqueue_rows(url, 3, "good")
    not_utf8, not_json, unknown = enqueue_rows(url, 3, "to be spoiled")
    more = enqueue_rows(url, 3, "good")
    raw(url, "UPDATE servekit_jobs SET payload = ? WHERE id = ?", (b"\xff\xfe", not_utf8))
    raw(url, "UPDATE servekit_jobs SET payload = ? WHERE id = ?", (b'{"open', not_json))
    raw(url, "UPDATE servekit_jobs SET encoding = 'yaml' WHERE id = ?", (unknown,))
    server = serve(url)
    until(lambda: counts(url)["done"] == 6 and counts(url)["dead"] == 3, "6 done, 3 dead")
    later = enqueue_rows(url, 3, "good")  # the worker is still serving
    until(lambda: counts(url)["done"] == 9, "the later rows done")
    assert server.stop() == 0, server.text()[-3000:]
    assert counts(url) == {"pending": 0, "running": 0, "done": 9, "dead": 3}
    assert Counter(run.id for run in server.run_list()) == Counter(good + more + later)
    with sql.open_backend(url) as backend:
        reasons = {dead.id: dead.last_error for dead in backend.dead()}
    assert set(reasons) == {not_utf8, not_json, unknown}
    assert "payload is not UTF-8" in reasons[not_utf8]
    assert "payload is not JSON" in reasons[not_json]
    assert "unknown payload encoding 'yaml'" in reasons[unknown]
    log = server.text()
    for row in (not_utf8, not_json, unknown):
        assert re.search(rf"row {row} .*dead.*payload", log), log
    assert "Traceback" not in log, log


@pytest.mark.timeout(60)
def test_a_server_on_another_queue_leaves_the_default_rows_alone(
    url: str, serve: Callable[..., Serve], tmp_path: Path
) -> None:
    default = enqueue_rows(url, 5, "default's")
    with sql.open_backend(url) as backend:
        other = backend.enqueue_many(["other's"] * 5, queue="other")
    server = serve(f"{url}?queue=other")
    until(lambda: counts(url, "other")["done"] == 5, "the other queue's rows done")
    with sql.open_backend(url) as backend:
        other.append(backend.enqueue("other's, later", queue="other"))
    until(lambda: counts(url, "other")["done"] == 6, "the later row done")
    assert server.stop() == 0, server.text()[-3000:]
    assert counts(url) == {"pending": 5, "running": 0, "done": 0, "dead": 0}
    assert Counter(run.id for run in server.run_list()) == Counter(other)
    assert not set(default) & {run.id for run in server.run_list()}
