"""``servekit serve``'s process options, through the console script: --pid, --user and
--group (bind as root, serve as the user), --umask, --chdir, --app-dir, --reuse-port."""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import WAIT, ProcessLog, connect, recv_until, running

SERVEKIT = str(Path(sys.executable).parent / "servekit")

APP = """
import os, servekit
class Handler(servekit.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            self.wfile.write(f"{os.getuid()} {os.getgid()} ".encode() + line)
"""


@pytest.fixture
def app_dir() -> Iterator[Path]:
    """A folder anyone may read, holding app.py: a user servekit drops to imports it."""
    folder = Path(tempfile.mkdtemp(prefix="servekit-process-"))
    try:
        folder.chmod(0o755)
        (folder / "app.py").write_text(APP)
        (folder / "app.py").chmod(0o644)
        yield folder
    finally:
        subprocess.run(["rm", "-rf", str(folder)], check=False)


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SERVEKIT_")}


@contextlib.contextmanager
def _serving(cwd: Path, *args: str) -> Iterator[tuple[Any, ProcessLog, int]]:
    command = [SERVEKIT, "serve", *args, "--listen", "127.0.0.1:0", "--status-interval", "none"]
    with running(command, cwd=cwd, env=_env(), start_new_session=True) as served:
        _ask(served[2])  # answered: it serves, and minds its signals (SIGTERM is graceful)
        yield served


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def _ask(port: int) -> bytes:
    with connect(("127.0.0.1", port)) as client:
        client.sendall(b"hi\n")
        return recv_until(client)


def _stop(proc: Any, log: ProcessLog) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(WAIT) == 0, "".join(log.lines)


def _nobody() -> pwd.struct_passwd:
    if os.geteuid() != 0:
        pytest.skip("dropping privileges needs the tests to run as root")
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody' on this machine")


def test_workers_bind_as_root_and_serve_as_the_user(app_dir: Path) -> None:
    nobody = _nobody()
    with _serving(
        app_dir, "app:Handler", "--workers", "2", "--user", "nobody", "--umask", "027"
    ) as (proc, log, port):
        workers = [int(m.group(1)) for m in log.wait_for(r"worker \d \(pid (\d+)\) is serving", 2)]
        for pid in workers:
            status = _status(pid)
            assert status["Uid"].split() == [str(nobody.pw_uid)] * 4
            assert status["Gid"].split() == [str(nobody.pw_gid)] * 4
            assert status["Groups"].split() == [str(nobody.pw_gid)]  # root's are gone
            assert status["Umask"] == "0027"
        supervisor = _status(proc.pid)
        assert supervisor["Uid"].split()[0] == "0"  # holds the sockets, runs no app code
        assert _ask(port) == f"{nobody.pw_uid} {nobody.pw_gid} hi\n".encode()
        _stop(proc, log)


def test_one_process_binds_then_drops_before_importing(app_dir: Path) -> None:
    nobody = _nobody()
    with _serving(app_dir, "app:Handler", "--user", "nobody", "--group", "nogroup") as (
        proc,
        log,
        port,
    ):
        assert _ask(port) == f"{nobody.pw_uid} {nobody.pw_gid} hi\n".encode()
        assert _status(proc.pid)["Uid"].split()[0] == str(nobody.pw_uid)
        log.wait_for(rf"serving as uid {nobody.pw_uid}, gid {nobody.pw_gid}")
        _stop(proc, log)


def test_an_unknown_user_or_group_is_one_line_before_binding(app_dir: Path) -> None:
    _nobody()
    for flag, name, what in (("--user", "no-such-user", "user"), ("--group", "nogrp", "group")):
        result = subprocess.run(
            [SERVEKIT, "serve", "app:Handler", flag, name, "--listen", "127.0.0.1:0"],
            cwd=app_dir, env=_env(), capture_output=True, text=True, timeout=WAIT,
        )  # fmt: skip
        assert result.returncode == 2
        assert result.stderr == f"servekit: error: {flag} {name}: no such {what}\n"


def test_the_pid_file_is_written_whole_removed_at_exit_and_never_shared(
    app_dir: Path,
) -> None:
    pid_file = app_dir / "run" / "servekit.pid"
    pid_file.parent.mkdir()
    # A file left by a process that is gone is replaced, with a warning.
    gone = subprocess.Popen(["true"])
    gone.wait()
    pid_file.write_text(f"{gone.pid}\n")
    with _serving(app_dir, "app:Handler", "--workers", "1", "--pid", str(pid_file)) as (
        proc,
        log,
        _port,
    ):
        log.wait_for(rf"replacing a stale pid file \(pid {gone.pid} is gone\)")
        log.wait_for(r"is serving")
        assert pid_file.read_text() == f"{proc.pid}\n"  # the supervisor's
        assert [p.name for p in pid_file.parent.iterdir()] == ["servekit.pid"]  # no leftovers
        # A second service given the same file refuses to start.
        second = subprocess.run(
            [SERVEKIT, "serve", "app:Handler", "--listen", "127.0.0.1:0", "--pid", str(pid_file)],
            cwd=app_dir, env=_env(), capture_output=True, text=True, timeout=WAIT,
        )  # fmt: skip
        assert second.returncode == 2
        assert second.stderr == (
            f"servekit: error: --pid {pid_file}: servekit is already running as pid "
            f"{proc.pid} (stop it, or give another --pid)\n"
        )
        assert pid_file.read_text() == f"{proc.pid}\n"
        _stop(proc, log)
    assert not pid_file.exists()


def test_chdir_and_app_dir(app_dir: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with _serving(elsewhere, "app:Handler", "--app-dir", str(app_dir)) as (proc, log, port):
        assert _ask(port).endswith(b" hi\n")
        _stop(proc, log)
    with _serving(elsewhere, "app:Handler", "--chdir", str(app_dir), "--pid", "here.pid") as (
        proc,
        log,
        port,
    ):
        assert (app_dir / "here.pid").read_text() == f"{proc.pid}\n"  # relative to --chdir
        _stop(proc, log)
    result = subprocess.run(
        [SERVEKIT, "serve", "app:Handler", "--chdir", str(tmp_path / "nowhere")],
        cwd=elsewhere, env=_env(), capture_output=True, text=True, timeout=WAIT,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr == (
        f"servekit: error: --chdir {tmp_path / 'nowhere'}: No such file or directory\n"
    )


def _binds_beside(port: int) -> bool:
    """Whether a socket with SO_REUSEPORT may bind ``port`` while the server listens."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_reuse_port(app_dir: Path) -> None:
    with _serving(app_dir, "app:Handler", "--reuse-port") as (proc, log, port):
        assert _binds_beside(port)
        _stop(proc, log)
    with _serving(app_dir, "app:Handler") as (proc, log, port):
        assert not _binds_beside(port)
        _stop(proc, log)
    with _serving(app_dir, "app:Handler", "--reuse-port", "--workers", "1") as (proc, log, port):
        assert _binds_beside(port)  # the supervisor's sockets too
        _stop(proc, log)


def test_umask_from_a_file_in_octal(app_dir: Path) -> None:
    config = app_dir / "servekit.toml"
    config.write_text("umask = 0o027\n")
    result = subprocess.run(
        [SERVEKIT, "serve", "app:Handler", "-c", str(config), "--check-config"],
        cwd=app_dir, env=_env(), capture_output=True, text=True, timeout=WAIT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert 'umask = "027"' in result.stdout
    with _serving(app_dir, "app:Handler", "-c", str(config)) as (proc, log, _port):
        assert _status(proc.pid)["Umask"] == "0027"
        _stop(proc, log)


VERSIONED = """
import servekit
class Handler(servekit.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            self.wfile.write(b"{version} " + line)
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("workers", [None, "2"])
def test_reload_serves_an_edit(tmp_path: Path, workers: str | None) -> None:
    (tmp_path / "app.py").write_text(VERSIONED.format(version="v1"))
    port = _free_port()  # the same address after a restart
    command = [SERVEKIT, "serve", "app:Handler", "--reload", "--listen", f"127.0.0.1:{port}",
               "--status-interval", "none"]  # fmt: skip
    if workers:
        command += ["--workers", workers]
    with running(
        command, cwd=tmp_path, env=_env(), start_new_session=True,
        listening=r"listening on tcp://127\.0\.0\.1:(\d+)",
    ) as (proc, log, _):  # fmt: skip
        if workers:
            log.wait_for(r"worker \d \(pid \d+\) is serving", 2)
        assert _ask(port) == b"v1 hi\n"
        (tmp_path / "app.py").write_text(VERSIONED.format(version="v2"))
        log.wait_for(r"reloading: app\.py changed")
        if workers:  # SIGHUP: the workers replaced on the same socket, the old ones gone
            log.wait_for(r"worker \d \(pid \d+\) is serving", 4)
            log.wait_for(r"worker [12] \(pid \d+\) exited", 2)
        else:  # the server stopped and started again
            log.wait_for(r"listening on tcp://127\.0\.0\.1:\d+", 2)
        assert _ask(port) == b"v2 hi\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0, "".join(log.lines)


def test_max_packet_size_through_the_console_script(tmp_path: Path) -> None:
    command = [SERVEKIT, "serve", "examples.echo:DatagramEcho", "--listen", "udp://127.0.0.1:0",
               "--max-packet-size", "16", "--status-interval", "none"]  # fmt: skip
    root = Path(__file__).parent.parent
    with running(command, cwd=root, env=_env()) as (proc, log, port):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(WAIT)
            client.sendto(b"x" * 17, ("127.0.0.1", port))  # dropped: one byte too long
            log.wait_for(r"dropped a datagram .* longer than max_packet_size=16")
            client.sendto(b"y" * 16, ("127.0.0.1", port))
            assert client.recv(64) == b"y" * 16
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0


def test_a_sigterm_while_starting_is_a_graceful_stop(tmp_path: Path) -> None:
    """SIGTERM before the server serves (here: while the application is imported)
    stops it gracefully once it serves, with status 0, rather than ending the process
    with the signal's default action."""
    fifo = tmp_path / "import-gate"
    os.mkfifo(fifo)
    (tmp_path / "slow.py").write_text(
        f"open({str(fifo)!r}).read()  # the import waits for the test\n"
        "from examples.echo import LineEcho\n"
    )
    root = Path(__file__).parent.parent
    env = _env() | {"PYTHONPATH": str(root)}
    proc = subprocess.Popen(
        [SERVEKIT, "serve", "slow:LineEcho", "--listen", "127.0.0.1:0", "--status-interval",
         "none"],
        cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        with open(fifo, "w") as gate:  # returns once the import has opened it
            proc.send_signal(signal.SIGTERM)
            gate.write("go")
        assert proc.wait(WAIT) == 0
        assert proc.stderr is not None
        log = proc.stderr.read()
        assert "stopping gracefully" in log
        assert "stopped" in log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(WAIT)
