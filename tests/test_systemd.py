"""systemd's service notifications (issue 17): READY, RELOADING, STOPPING and the
watchdog, sent to a NOTIFY_SOCKET the test listens on (as systemd would), through the
console script; and socket activation with systemd-socket-activate."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from servekit import _systemd
from tests.conftest import WAIT, connect, recv_until, running

ROOT = Path(__file__).parent.parent
SERVEKIT = str(Path(sys.executable).parent / "servekit")


class FakeSystemd:
    """A NOTIFY_SOCKET: the datagrams a service sends, each as a dict of its fields."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.settimeout(WAIT)

    def next(self) -> dict[str, str]:
        data = self.sock.recv(4096).decode()
        return dict(line.split("=", 1) for line in data.splitlines())

    def until(self, field: str) -> list[dict[str, str]]:
        """The notifications up to and including the first with ``field``."""
        seen = []
        while True:
            message = self.next()
            seen.append(message)
            if field in message:
                return seen

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(params=["path", "abstract"])
def systemd(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FakeSystemd]:
    name = f"@servekit-test-{os.getpid()}-{id(request)}"
    fake = FakeSystemd(str(tmp_path / "notify") if request.param == "path" else name)
    yield fake
    fake.close()


def _env(**variables: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SERVEKIT_")} | variables


@contextlib.contextmanager
def _serving(*args: str, env: dict[str, str]) -> Iterator[tuple[subprocess.Popen[str], int]]:
    command = [SERVEKIT, "serve", "examples.echo:LineEcho", "--listen", "127.0.0.1:0",
               "--status-interval", "none", *args]  # fmt: skip
    with running(command, cwd=ROOT, env=env) as (proc, _log, port):
        yield proc, port


def test_ready_reloading_and_stopping(systemd: FakeSystemd) -> None:
    with _serving(env=_env(NOTIFY_SOCKET=systemd.address)) as (proc, port):
        ready = systemd.until("READY")[-1]
        assert ready["READY"] == "1"
        assert ready["MAINPID"] == str(proc.pid)
        with connect(("127.0.0.1", port)) as client:  # READY came once it serves
            client.sendall(b"up\n")
            assert recv_until(client) == b"up\n"
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        proc.send_signal(signal.SIGHUP)
        reloading = systemd.until("RELOADING")[-1]
        assert int(reloading["MONOTONIC_USEC"]) >= before
        assert systemd.until("READY")[-1]["STATUS"] == "reloaded"
        proc.send_signal(signal.SIGTERM)
        assert systemd.until("STOPPING")[-1]["STOPPING"] == "1"
        assert proc.wait(WAIT) == 0


def test_the_watchdog_is_fed_every_half_period(systemd: FakeSystemd) -> None:
    env = _env(NOTIFY_SOCKET=systemd.address, WATCHDOG_USEC="200000")
    with _serving(env=env) as (proc, _port):
        systemd.until("READY")
        for _ in range(3):  # each within the socket's timeout, or the test fails
            assert systemd.until("WATCHDOG")[-1]["WATCHDOG"] == "1"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0


def test_a_watchdog_meant_for_another_process_is_not_fed() -> None:
    environ = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}
    notifier = _systemd.Notifier.from_environment(environ)
    assert notifier.active
    assert notifier.watchdog_interval is None
    assert environ == {}  # taken out: no child speaks for the service
    mine = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    assert _systemd.Notifier.from_environment(mine).watchdog_interval == 2.0
    silent = _systemd.Notifier.from_environment({})
    assert not silent.active
    silent.ready("nothing happens")  # no socket: does nothing, raises nothing


def test_the_application_does_not_inherit_notify_socket(
    systemd: FakeSystemd, tmp_path: Path
) -> None:
    (tmp_path / "probe.py").write_text(
        "import os, servekit\n"
        "class Handler(servekit.StreamRequestHandler):\n"
        "    def handle(self):\n"
        "        self.rfile.readline()\n"
        "        self.wfile.write(repr(os.environ.get('NOTIFY_SOCKET')).encode() + b'\\n')\n"
    )
    command = [SERVEKIT, "serve", "probe:Handler", "--listen", "127.0.0.1:0",
               "--status-interval", "none"]  # fmt: skip
    env = _env(NOTIFY_SOCKET=systemd.address)
    with running(command, cwd=tmp_path, env=env) as (proc, _log, port):
        systemd.until("READY")
        with connect(("127.0.0.1", port)) as client:
            client.sendall(b"?\n")
            assert recv_until(client) == b"None\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0


@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None, reason="no systemd tools")
def test_socket_activation_and_readiness_together(systemd: FakeSystemd) -> None:
    """What a .socket unit and a Type=notify service do, without systemd itself."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        "systemd-socket-activate", "-l", f"127.0.0.1:{port}", "--fdname=web",
        f"--setenv=NOTIFY_SOCKET={systemd.address}", SERVEKIT, "serve",
        "examples.echo:LineEcho", "--listen", "systemd:web", "--status-interval", "none",
    ]  # fmt: skip
    proc = subprocess.Popen(command, cwd=ROOT, env=_env(), stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()  # the launcher binds, then says so
        assert line.startswith("Listening on "), line
        # The socket is listening before the service starts: a client can connect now.
        client = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        client.sendall(b"activated\n")
        assert recv_until(client) == b"activated\n"  # the first connection starts it
        assert systemd.until("READY")[-1]["READY"] == "1"
        client.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(WAIT)


# -- the recipe of docs/cli.md, "Under systemd" -----------------------------------------

RECIPE = ROOT / "examples" / "systemd"


def test_the_docs_print_the_recipe_files_as_they_are() -> None:
    docs = (ROOT / "docs" / "cli.md").read_text()
    for name in ("kv.socket", "kv.service", "kv.toml", "kv.logrotate"):
        assert (RECIPE / name).read_text() in docs, name


def _toml(values: dict[str, object]) -> str:
    """The few value kinds of the recipe's file (str, int, list of str), as TOML."""
    lines = []
    for key, value in values.items():
        if isinstance(value, list):
            lines.append(f"{key} = {json.dumps(value)}")  # a JSON list of str is TOML's
        elif isinstance(value, str):
            lines.append(f"{key} = {json.dumps(value)}")
        else:
            lines.append(f"{key} = {value}")
    return "\n".join(lines) + "\n"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _kv(port: int, command: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as client:
        client.sendall(command + b"\n")
        return recv_until(client)


@pytest.mark.timeout(120)
@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None, reason="no systemd tools")
def test_the_recipe_under_systemd_socket_activate(systemd: FakeSystemd) -> None:
    """kv.toml as printed, but for paths and the user (nobody), under the launcher that
    does what kv.socket does, with the NOTIFY_SOCKET and WATCHDOG_USEC kv.service gets."""
    if os.geteuid() != 0:
        pytest.skip("the recipe drops privileges: the tests must run as root")
    import tomllib
    import urllib.request

    folder = Path(tempfile.mkdtemp(prefix="servekit-recipe-"))
    try:
        folder.chmod(0o777)  # the workers, as nobody, write the logs and read the app
        (folder / "app").mkdir(mode=0o755)
        shutil.copy(ROOT / "examples" / "kvstore.py", folder / "app" / "kvstore.py")
        (folder / "app" / "kvstore.py").chmod(0o644)
        config = tomllib.loads((RECIPE / "kv.toml").read_text())
        port, metrics = _free_port(), _free_port()
        config.update(
            app_dir=str(folder / "app"), workers=2, user="nobody", pid=str(folder / "kv.pid"),
            log_file=str(folder / "servekit.log"), access_log=str(folder / "access.log"),
            metrics=f"127.0.0.1:{metrics}",
        )  # fmt: skip
        (folder / "kv.toml").write_text(_toml(config))
        command = [
            "systemd-socket-activate", "-l", f"127.0.0.1:{port}", "--fdname=kv",
            f"--setenv=NOTIFY_SOCKET={systemd.address}", "--setenv=WATCHDOG_USEC=1000000",
            SERVEKIT, "serve", "-c", str(folder / "kv.toml"),
        ]  # fmt: skip
        proc = subprocess.Popen(command, cwd=folder, env=_env(), stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stderr is not None
            assert proc.stderr.readline().startswith("Listening on ")
            assert _kv(port, b"SET colour blue") == b"OK\n"  # the first client starts it
            ready = systemd.until("READY")[-1]
            assert ready["STATUS"] == "serving: 2 worker(s)"
            assert ready["MAINPID"] == str(proc.pid)
            assert (folder / "kv.pid").read_text() == f"{proc.pid}\n"
            log = (folder / "servekit.log").read_text()
            workers = [int(pid) for pid in re.findall(r"worker \d \(pid (\d+)\) is serving", log)]
            assert len(workers) == 2
            for pid in workers:
                uid = Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split()[0]
                assert uid == "65534"
            assert systemd.until("WATCHDOG")[-1]["WATCHDOG"] == "1"
            url = f"http://127.0.0.1:{metrics}/metrics"
            with urllib.request.urlopen(url, timeout=WAIT) as answer:
                assert b"servekit_workers 2" in answer.read()
            # logrotate, as kv.logrotate says: move the files, create new ones for the
            # user ("create 0640 kv kv"), then SIGUSR2; new lines go to the new files.
            for name in ("servekit.log", "access.log"):
                (folder / name).rename(folder / f"{name}.1")
                (folder / name).touch(mode=0o640)
                os.chown(folder / name, 65534, 65534)
            proc.send_signal(signal.SIGUSR2)
            assert _waited_for(folder / "servekit.log", "reopened")
            assert _kv(port, b"GET colour") in (b"VALUE blue\n", b"NOT_FOUND\n")  # a store each
            assert _waited_for(folder / "access.log", "served")
            # systemctl reload: RELOADING, the workers replaced, READY again.
            proc.send_signal(signal.SIGHUP)
            systemd.until("RELOADING")
            assert systemd.until("READY")[-1]["STATUS"].startswith("reloaded")
            proc.send_signal(signal.SIGTERM)
            systemd.until("STOPPING")
            assert proc.wait(WAIT * 3) == 0
            assert not (folder / "kv.pid").exists()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(WAIT)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _waited_for(path: Path, text: str) -> bool:
    """Whether ``text`` appears in ``path`` within WAIT (polling a file someone else writes)."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text():
            return True
        time.sleep(0.05)  # a file another process writes: nothing to wait on
    return False
