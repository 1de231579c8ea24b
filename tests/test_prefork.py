"""Prefork: real worker processes, real signals, every wait bounded."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

import pytest

from tests.conftest import WAIT, ProcessLog, connect, recv_until, running, until

SRC = Path(__file__).parent.parent / "src"

APP = """
import os, threading, servekit
VERSION = "{version}"
class Handler(servekit.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            if line == b"hang\\n":
                threading.Event().wait()  # a handler that never returns
            self.wfile.write(f"{{VERSION}} {{os.getpid()}} ".encode() + line)
"""


MODULE = ([sys.executable, "-m", "servekit"], {
    "PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1",
})  # fmt: skip


@contextlib.contextmanager
def prefork(
    tmp: Path,
    *args: str,
    app: str | None = None,
    target: str = "app:Handler",
    launcher: tuple[list[str], dict[str, str]] = MODULE,
) -> Iterator[tuple[Any, ProcessLog, int]]:
    """Run ``servekit serve app:Handler --workers ...`` in ``tmp``; yield proc, log, port."""
    if app is not None or not (tmp / "app.py").exists():
        (tmp / "app.py").write_text(APP.format(version="v1") if app is None else app)
    command, env = launcher
    with running(
        [*command, "serve", target, "--listen", "127.0.0.1:0", "--status-interval", "none",
         *args],
        cwd=tmp, start_new_session=True, env=env,
    ) as served:  # fmt: skip
        yield served


def _ask(port: int, line: bytes = b"hi\n") -> tuple[str, int]:
    """One request on a new connection: (version, pid of the worker that answered)."""
    with connect(("127.0.0.1", port)) as client:
        client.sendall(line)
        version, pid, _ = recv_until(client).split(b" ", 2)
    return version.decode(), int(pid)


def _worker_pids(log: ProcessLog, count: int) -> list[int]:
    return [int(m.group(1)) for m in log.wait_for(r"worker \d+ \(pid (\d+)\) is serving", count)]


class Load:
    """Client threads each holding one connection and asking on it in a loop."""

    def __init__(self, port: int, clients: int = 8) -> None:
        self.port = port
        self.stop = threading.Event()
        self.answered: dict[int, int] = {}  # client -> answers
        self.owner: dict[int, int] = {}  # client -> worker pid
        self.errors: dict[int, BaseException] = {}
        self._threads = [threading.Thread(target=self._run, args=(n,)) for n in range(clients)]

    def __enter__(self) -> Self:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(WAIT)

    def _run(self, n: int) -> None:
        try:
            with connect(("127.0.0.1", self.port)) as client:
                while not self.stop.is_set():
                    client.sendall(b"%d\n" % n)
                    _, pid, rest = recv_until(client).split(b" ", 2)
                    assert rest == b"%d\n" % n
                    self.owner[n] = int(pid)
                    self.answered[n] = self.answered.get(n, 0) + 1
        except (OSError, ValueError, AssertionError) as exc:
            self.errors[n] = exc

    def progressed(self, clients: list[int], since: dict[int, int]) -> bool:
        """True once each of ``clients`` has been answered more times than ``since`` says."""
        for _ in range(int(WAIT / 0.01)):
            if all(self.answered.get(n, 0) > since.get(n, 0) for n in clients):
                return True
            self.stop.wait(0.01)  # sampling the clients' own counters
        return False

    def served_at_least(self, count: int) -> bool:
        for _ in range(int(WAIT / 0.01)):
            if len(self.answered) == len(self._threads) and min(self.answered.values()) >= count:
                return True
            self.stop.wait(0.01)  # sampling the clients' own counters
        return False


@pytest.mark.timeout(60)
def test_workers_serve_and_stop_on_sigterm(tmp_path: Path) -> None:
    with prefork(tmp_path, "--workers", "2") as (proc, log, port):
        pids = set(_worker_pids(log, 2))
        answers = {_ask(port, b"%d\n" % i) for i in range(20)}
        assert {version for version, _ in answers} == {"v1"}
        assert {pid for _, pid in answers} <= pids
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0
        log.wait_for(r"supervisor \d+: stopped")


@pytest.mark.timeout(60)
def test_kill_9_of_one_worker(tmp_path: Path) -> None:
    with prefork(tmp_path, "--workers", "2") as (_, log, port), Load(port, 16) as load:
        pids = _worker_pids(log, 2)
        assert load.served_at_least(3)
        owners = dict(load.owner)
        victim = max(pids, key=lambda pid: sum(owner == pid for owner in owners.values()))
        survivors = [n for n, pid in owners.items() if pid != victim]
        before = dict(load.answered)
        os.kill(victim, signal.SIGKILL)
        log.wait_for(rf"worker \d+ \(pid {victim}\) killed by SIGKILL")
        replacement = _worker_pids(log, 3)[2]
        assert replacement not in pids
        # The other worker's clients go on being served through the kill.
        assert load.progressed(survivors, before)
        assert _ask(port)[0] == "v1"  # and a new client is served
        load.stop.set()
    assert set(load.errors) <= {n for n, pid in owners.items() if pid == victim}
    for n in survivors:
        assert n not in load.errors
        assert load.answered[n] > before[n]


@pytest.mark.timeout(60)
def test_sighup_replaces_workers_without_refusing_anyone(tmp_path: Path) -> None:
    with prefork(tmp_path, "--workers", "2") as (proc, log, port):
        old = set(_worker_pids(log, 2))
        (tmp_path / "app.py").write_text(APP.format(version="v2-new"))
        errors: list[BaseException] = []
        versions: list[str] = []
        stop = threading.Event()

        def clients() -> None:
            while not stop.is_set():
                try:
                    versions.append(_ask(port)[0])
                except (OSError, ValueError) as exc:
                    errors.append(exc)

        threads = [threading.Thread(target=clients, daemon=True) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            proc.send_signal(signal.SIGHUP)
            log.wait_for("SIGHUP: all workers replaced")
            for pid in old:
                log.wait_for(rf"\(pid {pid}\) exited with status 0")
        finally:
            stop.set()
            for t in threads:
                t.join(WAIT)
        assert errors == []
        assert len(versions) > 10  # served throughout the roll
        version, pid = _ask(port)
        assert version == "v2-new"
        assert pid not in old


@pytest.mark.timeout(60)
def test_hung_worker_is_replaced_after_worker_timeout(tmp_path: Path) -> None:
    with prefork(tmp_path, "--workers", "1", "--concurrency", "sync", "--worker-timeout", "1") as (
        _proc,
        log,
        port,
    ):
        (hung,) = _worker_pids(log, 1)
        stuck = connect(("127.0.0.1", port))
        stuck.sendall(b"hang\n")
        log.wait_for(rf"pid {hung}\): no heartbeat for")
        replacement = _worker_pids(log, 2)[1]
        assert _ask(port)[1] == replacement
        stuck.close()


@pytest.mark.timeout(60)
def test_ttin_and_ttou_change_the_worker_count(tmp_path: Path) -> None:
    with prefork(tmp_path, "--workers", "1") as (proc, log, port):
        _worker_pids(log, 1)
        proc.send_signal(signal.SIGTTIN)
        log.wait_for("SIGTTIN: 2 worker")
        _worker_pids(log, 2)
        proc.send_signal(signal.SIGTTOU)
        log.wait_for(r"stopping \(fewer workers asked for\)")
        log.wait_for(r"worker 2 \(pid \d+\) exited with status 0")
        assert _ask(port)[0] == "v1"


@pytest.mark.timeout(60)
def test_max_requests_restarts_a_worker(tmp_path: Path) -> None:
    with prefork(tmp_path, "--workers", "1", "--max-requests", "5") as (_, log, port):
        (first,) = _worker_pids(log, 1)
        pids = [_ask(port)[1] for _ in range(5)]
        assert set(pids) == {first}
        log.wait_for("served max_requests=5; asking for a replacement")
        replacement = _worker_pids(log, 2)[1]
        log.wait_for(rf"\(pid {first}\) exited with status 0")  # once the new one serves
        assert _ask(port)[1] == replacement


@pytest.mark.parametrize(
    ("target", "extra", "message"),
    [
        ("app:Missing", [], "has no attribute 'Missing'"),
        ("app:Handler", ["--concurrency", "async"], "is a sync handler"),
    ],
    ids=["missing", "sync-handler-for-async"],
)
def test_a_target_that_cannot_serve_stops_with_status_2(
    tmp_path: Path, target: str, extra: list[str], message: str
) -> None:
    (tmp_path / "app.py").write_text(APP.format(version="v1"))
    done = subprocess.run(
        [sys.executable, "-m", "servekit", "serve", target, "--workers", "2",
         "--listen", "127.0.0.1:0", *extra],
        cwd=tmp_path, capture_output=True, text=True, timeout=WAIT * 3,
        env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_socket_is_shared_not_reuseport(tmp_path: Path) -> None:
    """Both workers accept from the one socket the supervisor bound."""
    with prefork(tmp_path, "--workers", "2") as (_, log, port), socket.socket() as probe:
        _worker_pids(log, 2)
        # The port is taken by a socket without SO_REUSEPORT: a second bind fails.
        with pytest.raises(OSError):
            probe.bind(("127.0.0.1", port))


@pytest.mark.timeout(60)
def test_sigterm_under_load_answers_everything_accepted(tmp_path: Path) -> None:
    with prefork(tmp_path, "--workers", "2", "--shutdown-timeout", "20") as (proc, log, port):
        _worker_pids(log, 2)
        with Load(port, 8) as load:
            assert load.served_at_least(3)
            proc.send_signal(signal.SIGTERM)
            log.wait_for("SIGTERM: stopping the workers gracefully")
            # Connections the workers accepted keep being answered while they drain ...
            assert load.progressed(list(load.owner), dict(load.answered))
        # ... until their clients leave; then the workers and the supervisor exit 0.
        assert load.errors == {}
        assert proc.wait(WAIT) == 0
        log.wait_for(r"supervisor \d+: stopped")
        assert len(log.wait_for(r"exited with status 0", 2)) == 2


ASYNC_APP = """
import os
from servekit.aio import AsyncStreamRequestHandler
class Handler(AsyncStreamRequestHandler):
    async def handle(self):
        async for line in self:
            self.write(f"async {os.getpid()} ".encode() + line)
            await self.drain()
"""


@pytest.mark.timeout(60)
def test_async_workers(tmp_path: Path) -> None:
    with prefork(tmp_path, "--workers", "2", "--concurrency", "async", app=ASYNC_APP) as (
        proc,
        log,
        port,
    ):
        _worker_pids(log, 2)
        answers = {_ask(port, b"%d\n" % i) for i in range(10)}
        assert {version for version, _ in answers} == {"async"}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0


@pytest.mark.timeout(120)
def test_every_launcher_serves_workers_from_the_working_directory(
    tmp_path: Path, launcher: tuple[list[str], dict[str, str]]
) -> None:
    """The console script's sys.path starts with its bin/, not the working directory:
    the workers must still import the application from where servekit was started."""
    with prefork(tmp_path, "--workers", "2", launcher=launcher) as (proc, log, port):
        _worker_pids(log, 2)
        assert _ask(port)[0] == "v1"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0


@pytest.mark.timeout(60)
def test_readme_prefork_command_from_the_checkout() -> None:
    """The README's command, as printed: the console script, from the checkout's root."""
    root = SRC.parent
    script = Path(sys.executable).parent / "servekit"
    with running(
        [str(script), "serve", "examples.echo:LineEcho", "--listen", "127.0.0.1:0",
         "--workers", "2", "--status-interval", "none"],
        cwd=root, start_new_session=True, env={"PATH": "/usr/bin:/bin"},
    ) as (proc, log, port):  # fmt: skip
        _worker_pids(log, 2)
        with connect(("127.0.0.1", port)) as client:
            client.sendall(b"hello\n")
            assert recv_until(client) == b"hello\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0


BROKEN_APP = "import servekit\nclass Handler(servekit.StreamRequestHandler:  # a typo\n"


@pytest.mark.timeout(90)
def test_sighup_with_code_that_does_not_import_keeps_the_old_workers(tmp_path: Path) -> None:
    with prefork(tmp_path, "--workers", "2") as (proc, log, port):
        old = set(_worker_pids(log, 2))
        with Load(port, 4) as load:
            assert load.served_at_least(2)
            (tmp_path / "app.py").write_text(BROKEN_APP)
            proc.send_signal(signal.SIGHUP)
            log.wait_for(r"SIGHUP: a new worker cannot start the application \(cannot import 'app'")
            # The old workers serve on, their clients and new ones alike; nothing was cut.
            assert load.progressed(list(load.owner), dict(load.answered))
            version, pid = _ask(port)
            assert (version, pid in old) == ("v1", True)
            assert proc.poll() is None
        assert load.errors == {}
        started = len(log.wait_for(r"worker \d+ started"))
        # Fixed code rolls on the next SIGHUP (the load's connections are closed,
        # so the old workers drain at once).
        (tmp_path / "app.py").write_text(APP.format(version="v2"))
        proc.send_signal(signal.SIGHUP)
        log.wait_for("SIGHUP: all workers replaced")
        for pid in old:  # the last old one stops accepting only as it exits
            log.wait_for(rf"\(pid {pid}\) exited with status 0")
        assert len(log.wait_for(r"worker \d+ started")) == started + 2  # no retry before
        assert _ask(port)[0] == "v2"
    text = "".join(log.lines)
    assert text.count("cannot import 'app'") == 1  # logged once
    assert "Traceback" not in text


@pytest.mark.timeout(60)
def test_bad_application_at_start_is_one_error_line_not_one_per_worker(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(BROKEN_APP)
    command, env = MODULE
    done = subprocess.run(
        [*command, "serve", "app:Handler", "--workers", "4", "--listen", "127.0.0.1:0"],
        cwd=tmp_path, capture_output=True, text=True, timeout=WAIT * 3, env=env,
    )  # fmt: skip
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("servekit: error:")]
    assert len(errors) == 1, done.stderr
    assert "cannot import 'app'" in errors[0]
    assert done.stderr.count("started (pid") == 1  # the first worker alone, no restart loop
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGQUIT])
@pytest.mark.timeout(60)
def test_workers_stop_gracefully_when_the_supervisor_dies(tmp_path: Path, how: int) -> None:
    # faulthandler: if the workers do not say they stop, SIGABRT makes each say where
    # its threads are (failed once in .ci/run, at stop 22, not reproduced).
    launcher = (MODULE[0], {**MODULE[1], "PYTHONFAULTHANDLER": "1"})
    with prefork(tmp_path, "--workers", "2", launcher=launcher) as (proc, log, port):
        pids = _worker_pids(log, 2)
        held = connect(("127.0.0.1", port))
        held.sendall(b"before\n")
        assert recv_until(held).endswith(b"before\n")
        proc.send_signal(how)
        assert proc.wait(WAIT) == -how
        try:
            log.wait_for("stopping gracefully", 2)
        except AssertionError:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGABRT)
            for pid in pids:
                _exits(pid)
            pytest.fail("the workers did not both stop gracefully:\n" + "".join(log.lines))
        # Draining: the connection it holds is still answered ...
        held.sendall(b"after\n")
        assert recv_until(held).endswith(b"after\n")
        held.close()
        # ... and then every worker exits, and the port is closed.
        for pid in pids:
            assert _exits(pid)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=WAIT).close()


def _exits(pid: int) -> bool:
    """True once ``pid`` (not our child: a reparented worker) no longer runs."""
    gone = threading.Event()
    for _ in range(int(WAIT / 0.01)):
        try:
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().rpartition(")")[2].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        gone.wait(0.01)  # no event tells us a process we did not start has exited
    return False


PACKAGE_INIT = "from .server import Handler\n"


@pytest.mark.timeout(60)
def test_sighup_reloads_a_module_its_package_imports(tmp_path: Path) -> None:
    """The supervisor imports nothing of the application, not even the target's package."""
    package = tmp_path / "myapp"
    package.mkdir()
    (package / "__init__.py").write_text(PACKAGE_INIT)
    (package / "server.py").write_text(APP.format(version="v1"))
    with prefork(tmp_path, "--workers", "2", target="myapp.server:Handler") as (proc, log, port):
        old = _worker_pids(log, 2)
        assert _ask(port)[0] == "v1"
        (package / "server.py").write_text(APP.format(version="v2"))
        proc.send_signal(signal.SIGHUP)
        log.wait_for("SIGHUP: all workers replaced")
        for pid in old:
            log.wait_for(rf"\(pid {pid}\) exited with status 0")
        assert _ask(port)[0] == "v2"


@pytest.mark.timeout(60)
def test_max_requests_restart_is_logged_as_planned(tmp_path: Path) -> None:
    with prefork(tmp_path, "--workers", "1", "--max-requests", "2") as (_, log, port):
        (first,) = _worker_pids(log, 1)
        for _ in range(2):
            _ask(port)
        (line,) = [m.string for m in log.wait_for(rf"\(pid {first}\) exited with status 0")]
        assert " INFO " in line, line


def test_the_supervisor_does_not_claim_to_serve(tmp_path: Path) -> None:
    with prefork(tmp_path, "--workers", "1") as (_, log, _port):
        (line,) = [m.string for m in log.wait_for(r"listening on tcp://")]
        assert "1 worker(s), pool" in line
        assert "TCPServer" not in line


@pytest.mark.timeout(60)
def test_max_requests_with_code_that_does_not_import_keeps_the_worker(tmp_path: Path) -> None:
    """A worker that served max_requests is retired only once its replacement serves:
    with a bad deploy on disk, it serves on rather than leave no worker."""
    with prefork(tmp_path, "--workers", "1", "--max-requests", "3") as (proc, log, port):
        (first,) = _worker_pids(log, 1)
        (tmp_path / "app.py").write_text(BROKEN_APP)
        for _ in range(3):
            assert _ask(port) == ("v1", first)
        log.wait_for("served max_requests=3; asking for a replacement")
        log.wait_for(r"the replacement for worker 1 \(it served max_requests\) cannot start")
        for _ in range(5):  # served on, by the same worker
            assert _ask(port) == ("v1", first)
        assert proc.poll() is None
        # Fixed code: the next SIGHUP replaces it.
        (tmp_path / "app.py").write_text(APP.format(version="v2"))
        proc.send_signal(signal.SIGHUP)
        log.wait_for("SIGHUP: all workers replaced")
        log.wait_for(rf"\(pid {first}\) exited with status 0")
        assert _ask(port)[0] == "v2"


SLOW_IMPORT = """
import os, pathlib, time, servekit
pathlib.Path("importing").touch()
deadline = time.monotonic() + 30
while not pathlib.Path("go").exists() and time.monotonic() < deadline:
    time.sleep(0.01)  # the import the test holds: until it says go
class Handler(servekit.StreamRequestHandler):
    def handle(self):
        self.wfile.write(self.rfile.readline())
"""


def test_a_sigterm_while_a_worker_imports_the_application_is_a_graceful_stop(
    tmp_path: Path,
) -> None:
    """The worker notes the SIGTERM from the fork on, as a single process does from
    before its first bind: it ended on the default action, mid-import ("killed by
    SIGTERM"), where a roll or a stop meets a worker just started."""
    with prefork(tmp_path, "--workers", "1", app=SLOW_IMPORT) as (proc, log, _):
        log.wait_for(r"worker 1 started")
        until((tmp_path / "importing").exists, "the worker importing the application")
        proc.send_signal(signal.SIGTERM)
        log.wait_for("stopping the workers gracefully")
        (tmp_path / "go").touch()
        assert proc.wait(WAIT) == 0
    output = "".join(log.lines)
    assert "killed by SIGTERM" not in output, output
    assert re.search(r"worker 1 \(pid \d+\) exited with status 0", output), output


def _most_not_retiring(lines: list[str]) -> int:
    """The most workers alive and not retiring at once (started, and neither told to
    stop nor ended), from the log's lines."""
    live: set[str] = set()
    most = 0
    for line in lines:
        if started := re.search(r"worker \d+ started \(pid (\d+)\)", line):
            live.add(started.group(1))
            most = max(most, len(live))
        elif gone := re.search(r"worker \d+ \(pid (\d+)\)(: stopping| exited| killed)", line):
            live.discard(gone.group(1))
    return most


@pytest.mark.timeout(60)
def test_a_burst_of_sighups_runs_one_new_worker_at_a_time(tmp_path: Path) -> None:
    """Each SIGHUP of a burst started the roll over with the new worker the last one was
    waiting for among the workers to replace, and started another at once: ten SIGHUPs
    20 ms apart had 13 workers alive for two asked. The roll now waits for that one
    first: beside the workers retiring (each drains on its own), the two asked and the
    one starting."""
    with prefork(tmp_path, "--workers", "2") as (proc, log, port):
        old = set(_worker_pids(log, 2))
        (tmp_path / "app.py").write_text(APP.format(version="v2-new"))
        for _ in range(10):
            proc.send_signal(signal.SIGHUP)
            time.sleep(0.02)  # the burst's pace (the scenario, not a wait for anything)
        log.wait_for("SIGHUP: replacing", count=10)
        log.wait_for("SIGHUP: all workers replaced")
        for pid in old:
            log.wait_for(rf"\(pid {pid}\) exited with status 0")
        assert _ask(port)[0] == "v2-new"
    assert _most_not_retiring(log.lines) <= 2 + 1, "".join(log.lines)
