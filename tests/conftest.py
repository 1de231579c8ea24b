"""Shared helpers: run a server in a thread, bounded, and talk to it on loopback."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

#: Upper bound on any single wait in a test; generous, because CI machines stall.
WAIT = 10.0

# An RPC program's server registers itself with the host's rpcbind: in the tests
# (and the servers they start as processes), with none, unless a test points it at
# one of its own. A developer's rpcbind is not the tests' to change.
os.environ["SERVEKIT_RPCBIND_SOCKET"] = "unix:" + os.path.join(
    tempfile.gettempdir(), "servekit-tests-no-rpcbind.sock"
)
os.environ["SERVEKIT_RPCBIND_PORTMAP"] = "tcp://127.0.0.1:1"


def _has_ipv6() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


HAS_IPV6 = _has_ipv6()
requires_ipv6 = pytest.mark.skipif(not HAS_IPV6, reason="no IPv6 loopback on this machine")


@contextlib.contextmanager
def serving(server: Any, poll_interval: float = 0.5) -> Iterator[Any]:
    """Run ``server.serve_forever`` in a thread; stop and close it on exit, bounded."""
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": poll_interval}, daemon=True
    )
    thread.start()
    try:
        yield server
    finally:
        stopper = threading.Thread(target=server.shutdown, daemon=True)
        stopper.start()
        stopper.join(WAIT)
        thread.join(WAIT)
        server.server_close()
        assert not thread.is_alive(), "serve_forever did not stop within the bound"


def until(
    condition: Callable[[], Any], what: str, timeout: float = WAIT, every: float = 0.02
) -> Any:
    """Poll ``condition`` until it returns something true (that value), bounded: what
    has no event to wait on (a database's rows, a file another process writes)."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {timeout} s")
        time.sleep(every)
    return value


def connect(address: Any, family: int = socket.AF_INET) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(WAIT)
    sock.connect(address)
    return sock


def recv_until(sock: socket.socket, end: bytes = b"\n") -> bytes:
    data = b""
    while not data.endswith(end):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short directory for Unix sockets (their paths are limited to ~108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="sk", dir="/tmp"))
    yield path
    shutil.rmtree(path)


class LogWatcher(logging.Handler):
    """Collects servekit's log records; ``wait_for(text)`` blocks until one contains text."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._changed = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self._changed:
            self.records.append(record)
            self._changed.notify_all()

    def messages(self) -> list[str]:
        with self._changed:
            return [r.getMessage() for r in self.records]

    def wait_for(self, text: str, count: int = 1) -> bool:
        with self._changed:
            return self._changed.wait_for(
                lambda: sum(text in r.getMessage() for r in self.records) >= count, WAIT
            )


@pytest.fixture
def servekit_log() -> Iterator[LogWatcher]:
    watcher = LogWatcher()
    logger = logging.getLogger("servekit")
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(watcher)
    yield watcher
    logger.removeHandler(watcher)
    logger.setLevel(old_level)


class ProcessLog:
    """Reads a process's stderr on a thread; wait_for(pattern) returns the first match."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()

    def wait_for(self, pattern: str, count: int = 1, timeout: float = WAIT) -> list[re.Match[str]]:
        def found() -> list[re.Match[str]]:
            return [m for line in self.lines if (m := re.search(pattern, line))]

        with self._cond:
            assert self._cond.wait_for(lambda: len(found()) >= count, timeout), self.lines
            return found()


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, signed by it."""
    d = tmp_path_factory.mktemp("pki")
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-subj",
        "/CN=servekit test CA",
        cwd=d,
    )
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN={name}",
            cwd=d,
        )
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "2", "-out", f"{name}.pem",
                 "-extfile", "san.ext", cwd=d)  # fmt: skip
    return {p.stem + p.suffix.replace(".", "_"): p for p in d.iterdir()}


@contextlib.contextmanager
def running(
    command: list[str],
    *,
    listening: str = r"listening on \w+://127\.0\.0\.1:(\d+)",
    timeout: float = WAIT,
    **popen: Any,
) -> Iterator[tuple[subprocess.Popen[str], ProcessLog, int]]:
    """Start ``command``, wait for its "listening on ...:PORT" log line, and yield
    (process, log, port); the process is killed and reaped on the way out."""
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, **popen)
    log = ProcessLog(proc)
    try:
        port = int(log.wait_for(listening, timeout=timeout)[0].group(1))
        yield proc, log, port
    finally:
        if popen.get("start_new_session"):  # its children (workers) go with it
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
        proc.wait(WAIT)


@contextlib.contextmanager
def trickling(sock: socket.socket, interval: float) -> Iterator[None]:
    """Send a byte on ``sock`` every ``interval`` seconds, as a slow client does,
    until the block ends or the server closes the connection."""
    stop = threading.Event()

    def trickle() -> None:
        while not stop.wait(interval):  # the attack's pace, not a synchronisation
            try:
                sock.sendall(b"x")
            except OSError:
                return

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(WAIT)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Show what tests measured (``record_property("peak_rss_kib", ...)``) in the summary,
    so that a CI log carries the figures without a JUnit file."""
    rows = [
        (report.nodeid, name, value)
        for report in terminalreporter.stats.get("passed", [])
        for name, value in report.user_properties
    ]
    if rows:
        terminalreporter.section("measured")
        for nodeid, name, value in rows:
            terminalreporter.write_line(f"{nodeid}: {name} = {value}")


ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="session")
def wheel_servekit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``servekit`` script of a wheel built from this checkout, installed in a new
    virtual environment: servekit as a user gets it, with no checkout on its path."""
    where = tmp_path_factory.mktemp("wheel")
    source, dist, venv = where / "source", where / "dist", where / "venv"
    # Built from a copy: setuptools leaves build/ and *.egg-info in the tree it builds.
    shutil.copytree(
        ROOT, source,
        ignore=shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__",
                                      ".*_cache", ".hypothesis"),
    )  # fmt: skip
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(dist), str(source)],
        check=True, capture_output=True, timeout=180,
    )  # fmt: skip
    subprocess.run(
        [sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=180
    )
    (wheel,) = dist.glob("servekit-*.whl")
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-index",
         "--disable-pip-version-check", str(wheel)],
        check=True, capture_output=True, timeout=180,
    )  # fmt: skip
    return venv / "bin" / "servekit"


#: How users start servekit: ``python -m servekit`` from the checkout, the
#: console script of the development install, and an installed wheel.
LAUNCHERS = ("module", "script", "wheel")


@pytest.fixture(params=LAUNCHERS)
def launcher(request: pytest.FixtureRequest) -> tuple[list[str], dict[str, str]]:
    """(command prefix, environment) to run ``servekit ...`` as each launcher does."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"}
    if request.param == "module":
        return [sys.executable, "-m", "servekit"], env | {"PYTHONPATH": str(ROOT / "src")}
    if request.param == "script":
        return [str(Path(sys.executable).parent / "servekit")], env
    return [str(request.getfixturevalue("wheel_servekit"))], env
