"""systemd socket activation: real sockets on descriptors 3.., in real child processes.

Descriptors 3 and up are already in use inside pytest, so every test that
needs sockets at SD_LISTEN_FDS_START runs a child: a launcher stub moves the
test's sockets onto 3, 4, 5, sets LISTEN_PID to its own pid and execs the
child program, which is exactly what systemd-socket-activate does. Tests
that only parse the environment run in-process on a copied dict, so
os.environ is never touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from servekit import activation
from servekit.activation import InheritedSocket, inherited_sockets, listen_fds
from tests.conftest import WAIT, connect, recv_until

PROGRAMS = Path(__file__).parent / "programs"
CHILD = PROGRAMS / "activation_child.py"
SRC = Path(__file__).parent.parent / "src"
TIMEOUT = 20

#: Moves the descriptors named in argv[1] onto 3, 4, 5, ... (via copies at 100+, so
#: a source already at 3..5 is not overwritten), sets LISTEN_PID to its own pid
#: unless the test set one, and execs the rest of argv: execv keeps the pid.
LAUNCHER = """
import fcntl, os, sys
sources = [int(fd) for fd in sys.argv[1].split(",") if fd]
copies = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100) for fd in sources]
for fd in sources:
    os.close(fd)
for index, copy in enumerate(copies):
    os.dup2(copy, 3 + index)
    os.close(copy)
os.environ.setdefault("LISTEN_PID", str(os.getpid()))
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""

NOTHING_PASSED = (
    "no sockets passed by systemd: LISTEN_FDS is not set for this process "
    "(run under a .socket unit, or use systemd-socket-activate for testing)"
)


def _base_env(**listen: str) -> dict[str, str]:
    """A clean environment: no LISTEN_* from whatever runs pytest, plus ``listen``."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(SRC), **listen}


@contextlib.contextmanager
def _child(
    passed: list[int], *args: str, **listen: str
) -> Iterator[tuple[subprocess.Popen[str], dict[str, Any]]]:
    """Start the child with ``passed`` on descriptors 3.. and ``listen`` in its environment.

    Yields the process and its JSON report; on exit waits for it (bounded)
    and checks it exited cleanly.
    """
    command = [sys.executable, "-c", LAUNCHER, ",".join(map(str, passed)), str(CHILD), *args]
    proc = subprocess.Popen(
        command, pass_fds=passed, env=_base_env(**listen),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    watchdog = threading.Timer(TIMEOUT, proc.kill)
    watchdog.start()
    try:
        assert proc.stdout
        line = proc.stdout.readline()
        assert line, (
            f"the child printed no report; stderr:\n{proc.stderr.read() if proc.stderr else ''}"
        )
        yield proc, json.loads(line)
        _, stderr = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0, stderr
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=TIMEOUT)


@pytest.fixture
def tcp() -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock


@pytest.fixture
def udp() -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock


@pytest.fixture
def unix(sock_dir: Path) -> Iterator[socket.socket]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(sock_dir / "local.sock"))
        sock.listen()
        yield sock


def _stream_echo(address: Any, family: int) -> None:
    with connect(address, family) as client:
        client.sendall(b"hello\n")
        assert recv_until(client) == b"hello\n"


def _datagram_echo(address: Any) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(WAIT)
        client.sendto(b"ping", address)
        assert client.recv(100) == b"ping"


def _sockname(sock: socket.socket) -> Any:
    address = sock.getsockname()
    return list(address) if isinstance(address, tuple) else address


def _listen_env(pid: int | None = None, /, **extra: str) -> dict[str, str]:
    return {"LISTEN_PID": str(os.getpid() if pid is None else pid), **extra}


# -- in-process: parsing only, on a copied environment -------------------------------------


def test_nothing_passed_explains_how_to_run() -> None:
    environ: dict[str, str] = {"HOME": "/root"}
    assert listen_fds(environ=environ) == []
    with pytest.raises(ValueError) as info:
        inherited_sockets(environ=environ)
    assert str(info.value) == NOTHING_PASSED
    assert environ == {"HOME": "/root"}


def test_variables_for_another_process_are_left_alone() -> None:
    environ = _listen_env(os.getppid(), LISTEN_FDS="3", LISTEN_FDNAMES="a:b:c")
    before = dict(environ)
    assert listen_fds(environ=environ) == []
    assert environ == before
    with pytest.raises(ValueError, match=r"LISTEN_PID=\d+ names another process"):
        inherited_sockets(environ=environ)
    assert environ == before


def test_listen_fds_without_listen_pid_is_not_for_us() -> None:
    environ = {"LISTEN_FDS": "1"}
    assert listen_fds(environ=environ) == []
    assert environ == {"LISTEN_FDS": "1"}
    with pytest.raises(ValueError, match="LISTEN_FDS is set but LISTEN_PID is not"):
        inherited_sockets(environ=environ)


def test_environment_unset_after_a_successful_read() -> None:
    environ = _listen_env(LISTEN_FDS="0", LISTEN_FDNAMES="", OTHER="kept")
    assert listen_fds(environ=environ) == []
    assert environ == {"OTHER": "kept"}


def test_environment_kept_when_asked() -> None:
    environ = _listen_env(LISTEN_FDS="0")
    before = dict(environ)
    assert listen_fds(unset_environment=False, environ=environ) == []
    assert environ == before


def test_zero_descriptors_is_reported_as_nothing_passed() -> None:
    with pytest.raises(ValueError, match=r"no sockets passed by systemd: LISTEN_FDS is 0 \(run"):
        inherited_sockets(environ=_listen_env(LISTEN_FDS="0"))


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"LISTEN_FDS": "three"}, "LISTEN_FDS='three' is not a decimal integer"),
        ({"LISTEN_FDS": ""}, "LISTEN_FDS='' is not a decimal integer"),
        ({"LISTEN_FDS": " 2"}, "LISTEN_FDS=' 2' is not a decimal integer"),
        ({"LISTEN_FDS": "2.0"}, "LISTEN_FDS='2.0' is not a decimal integer"),
        ({"LISTEN_FDS": "\u0663"}, "is not a decimal integer"),  # ARABIC-INDIC DIGIT THREE
        ({"LISTEN_FDS": "-1"}, "LISTEN_FDS='-1' is negative"),
        ({"LISTEN_FDS": "4097"}, "LISTEN_FDS='4097' is more than 4096 descriptors"),
        ({"LISTEN_FDS": "3", "LISTEN_FDNAMES": "web:dns"}, "has 2 name.s. but LISTEN_FDS=3"),
        ({"LISTEN_FDS": "1", "LISTEN_FDNAMES": "a:b"}, "has 2 name.s. but LISTEN_FDS=1"),
    ],
)
def test_malformed_environment_is_rejected_untouched(
    variables: dict[str, str], message: str
) -> None:
    environ = _listen_env(**variables)
    before = dict(environ)
    with pytest.raises(ValueError, match=message):
        listen_fds(environ=environ)
    with pytest.raises(ValueError, match=message):
        inherited_sockets(environ=environ)
    assert environ == before


@pytest.mark.parametrize("pid", ["abc", "12x", "0", "-5"])
def test_malformed_listen_pid(pid: str) -> None:
    with pytest.raises(ValueError, match="LISTEN_PID="):
        listen_fds(environ={"LISTEN_PID": pid, "LISTEN_FDS": "1"})


def test_names_must_be_a_collection_not_a_string() -> None:
    with pytest.raises(TypeError, match=r"pass \['web'\]"):
        inherited_sockets("web", environ={})


def test_public_names() -> None:
    assert activation.SD_LISTEN_FDS_START == 3
    assert set(activation.__all__) == {
        "SD_LISTEN_FDS_START", "InheritedSocket", "inherited_sockets", "listen_fds",
    }  # fmt: skip
    with pytest.raises(AttributeError):
        InheritedSocket(3, "web").fd = 4  # type: ignore[misc]


# -- child processes: real descriptors at 3, 4, 5 ------------------------------------------


def test_tcp_udp_and_unix_are_inherited_and_serve(
    tcp: socket.socket, udp: socket.socket, unix: socket.socket
) -> None:
    passed = [tcp.fileno(), udp.fileno(), unix.fileno()]
    with _child(passed, "--serve", LISTEN_FDS="3", LISTEN_FDNAMES="web:dns:local") as (
        proc,
        report,
    ):
        assert "error" not in report, report
        assert report["sockets"] == [
            {"fd": 3, "family": "AF_INET", "type": "SOCK_STREAM", "name": "web",
             "sockname": _sockname(tcp), "inheritable": False},
            {"fd": 4, "family": "AF_INET", "type": "SOCK_DGRAM", "name": "dns",
             "sockname": _sockname(udp), "inheritable": False},
            {"fd": 5, "family": "AF_UNIX", "type": "SOCK_STREAM", "name": "local",
             "sockname": _sockname(unix), "inheritable": False},
        ]  # fmt: skip
        assert report["pid"] == proc.pid  # LISTEN_PID matched the exec'd child
        assert report["environ"] == {"LISTEN_PID": None, "LISTEN_FDS": None, "LISTEN_FDNAMES": None}
        _stream_echo(tcp.getsockname(), socket.AF_INET)
        _datagram_echo(udp.getsockname())
        _stream_echo(unix.getsockname(), socket.AF_UNIX)


def test_filter_by_names(tcp: socket.socket, udp: socket.socket, unix: socket.socket) -> None:
    passed = [tcp.fileno(), udp.fileno(), unix.fileno()]
    with _child(
        passed, "--names", "local,dns", "--serve", LISTEN_FDS="3", LISTEN_FDNAMES="web:dns:local"
    ) as (_, report):
        assert [(s["fd"], s["name"]) for s in report["sockets"]] == [(4, "dns"), (5, "local")]
        assert report["open_fds"][:3] == [3, 4, 5]  # the one left out is not closed
        _datagram_echo(udp.getsockname())
        _stream_echo(unix.getsockname(), socket.AF_UNIX)


def test_names_are_unknown_without_listen_fdnames(tcp: socket.socket) -> None:
    with _child([tcp.fileno()], "--serve", LISTEN_FDS="1") as (_, report):
        assert [(s["fd"], s["name"]) for s in report["sockets"]] == [(3, "unknown")]
        _stream_echo(tcp.getsockname(), socket.AF_INET)


def test_listen_pid_of_another_process_is_ignored(tcp: socket.socket) -> None:
    other = str(os.getpid())  # the test runner: alive, and not the child
    with _child([tcp.fileno()], LISTEN_PID=other, LISTEN_FDS="1", LISTEN_FDNAMES="web") as (
        _,
        report,
    ):
        assert report["error"] == "ValueError"
        assert f"LISTEN_PID={other} names another process" in report["message"]
        assert report["environ"] == {
            "LISTEN_PID": other,
            "LISTEN_FDS": "1",
            "LISTEN_FDNAMES": "web",
        }
        assert report["open_fds"][:1] == [3]


def test_mismatched_names_in_child(tcp: socket.socket, udp: socket.socket) -> None:
    with _child([tcp.fileno(), udp.fileno()], LISTEN_FDS="2", LISTEN_FDNAMES="web") as (
        _,
        report,
    ):
        assert report["error"] == "ValueError"
        assert "LISTEN_FDNAMES='web' has 1 name(s) but LISTEN_FDS=2" in report["message"]
        assert report["environ"]["LISTEN_FDS"] == "2"  # left for whoever investigates


def test_regular_file_is_named(tcp: socket.socket, tmp_path: Path) -> None:
    data = tmp_path / "not-a-socket"
    data.write_bytes(b"x")
    with (
        data.open("rb") as regular,
        _child([tcp.fileno(), regular.fileno()], LISTEN_FDS="2", LISTEN_FDNAMES="web:data") as (
            _,
            report,
        ),
    ):
        assert report["error"] == "ValueError"
        assert "descriptor 4 ('data') passed by systemd is not a socket" in report["message"]
        assert report["open_fds"][:2] == [3, 4]  # nothing closed, not even the socket at 3


def test_descriptor_that_is_not_open(tcp: socket.socket) -> None:
    with _child([tcp.fileno()], LISTEN_FDS="2", LISTEN_FDNAMES="web:gone") as (_, report):
        assert report["error"] == "ValueError"
        assert "descriptor 4" in report["message"]
        assert "not open" in report["message"]


def test_unsupported_socket_type_is_named(tcp: socket.socket) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as seqpacket:
        passed = [tcp.fileno(), seqpacket.fileno()]
        with _child(passed, LISTEN_FDS="2", LISTEN_FDNAMES="web:seq") as (_, report):
            assert report["error"] == "ValueError"
            assert "descriptor 4 ('seq')" in report["message"]
            assert "AF_UNIX SOCK_SEQPACKET" in report["message"]
            assert report["open_fds"][:2] == [3, 4]


def test_nothing_passed_in_child() -> None:
    proc = subprocess.run(
        [sys.executable, str(CHILD)], env=_base_env(),
        capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["error"] == "ValueError"
    assert report["message"] == NOTHING_PASSED


# -- the real launcher ------------------------------------------------------------------------


def _wait_listening(proc: subprocess.Popen[str], count: int) -> None:
    """Read systemd-socket-activate's "Listening on ..." lines until all sockets are up."""
    assert proc.stderr is not None
    for _ in range(count):
        line = proc.stderr.readline()
        assert line.startswith("Listening on "), line


@pytest.mark.skipif(
    shutil.which("systemd-socket-activate") is None,
    reason="systemd-socket-activate is not installed",
)
def test_under_systemd_socket_activate(sock_dir: Path) -> None:
    web, admin = sock_dir / "web.sock", sock_dir / "admin.sock"
    command = [
        "systemd-socket-activate", "-l", str(web), "-l", str(admin), "--fdname=web:admin",
        "-E", f"PYTHONPATH={SRC}", sys.executable, str(CHILD), "--names", "admin", "--serve",
    ]  # fmt: skip
    proc = subprocess.Popen(
        command, env=_base_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        # systemd-socket-activate execs the program on the first connection.
        _wait_listening(proc, 2)
        with connect(str(admin), socket.AF_UNIX) as client:
            client.sendall(b"activated\n")
            assert recv_until(client) == b"activated\n"
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, stderr
    report = json.loads(stdout)
    assert report["pid"] == proc.pid  # it execs in place, like the launcher stub
    assert report["sockets"] == [
        {"fd": 4, "family": "AF_UNIX", "type": "SOCK_STREAM", "name": "admin",
         "sockname": str(admin), "inheritable": False},
    ]  # fmt: skip
    assert report["environ"] == {"LISTEN_PID": None, "LISTEN_FDS": None, "LISTEN_FDNAMES": None}


EXAMPLE = Path(__file__).parent.parent / "examples" / "echo.py"


@pytest.mark.parametrize("concurrency", ["pool", "async"])
@pytest.mark.parametrize("listen", ["systemd", "systemd:web"])
def test_make_server_serves_the_socket_systemd_passed(
    tcp: socket.socket, listen: str, concurrency: str
) -> None:
    """make_server("systemd") in a real child that got its socket the systemd way."""
    address = tcp.getsockname()
    command = [sys.executable, "-c", LAUNCHER, str(tcp.fileno()), str(EXAMPLE), "--listen", listen,
               "--concurrency", concurrency]  # fmt: skip
    env = _base_env(LISTEN_FDS="1", LISTEN_FDNAMES="web")
    proc = subprocess.Popen(
        command, pass_fds=[tcp.fileno()], env=env, stderr=subprocess.PIPE, text=True
    )
    assert proc.stderr
    try:
        assert f"listening on tcp://127.0.0.1:{address[1]}" in proc.stderr.readline()
        with connect(address) as client:
            client.sendall(b"activated\n")
            assert recv_until(client) == b"activated\n"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(TIMEOUT) == 0
    finally:
        proc.kill()
        proc.wait(TIMEOUT)


def test_make_server_serves_a_datagram_socket_systemd_passed(udp: socket.socket) -> None:
    address = udp.getsockname()
    command = [sys.executable, "-c", LAUNCHER, str(udp.fileno()), str(EXAMPLE),
               "--listen", "systemd"]  # fmt: skip
    proc = subprocess.Popen(
        command, pass_fds=[udp.fileno()], env=_base_env(LISTEN_FDS="1"),
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr
    try:
        assert f"listening on udp://127.0.0.1:{address[1]}" in proc.stderr.readline()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(TIMEOUT)
            client.sendto(b"datagram", address)
            assert client.recv(100) == b"datagram"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(TIMEOUT) == 0
    finally:
        proc.kill()
        proc.wait(TIMEOUT)


def test_make_server_systemd_without_sockets_explains() -> None:
    env = _base_env()
    code = "import servekit; servekit.make_server('systemd', servekit.BaseRequestHandler)"
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert proc.returncode != 0
    assert NOTHING_PASSED in proc.stderr
