"""Socket servers: accept back-off, oversized datagrams, Unix socket files."""

from __future__ import annotations

import logging
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import servekit
from tests.conftest import WAIT, connect, recv_until, serving

PROGRAMS = Path(__file__).parent / "programs"


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("model", ["threads", "async"])
def test_out_of_descriptors_backs_off_and_recovers(model: str) -> None:
    """stdlib fault: accept() failing with EMFILE spins the loop at full CPU."""
    proc = subprocess.Popen(
        [sys.executable, str(PROGRAMS / "emfile_server.py"), model],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdin
    assert proc.stdout
    assert proc.stderr
    watchdog = threading.Timer(50, proc.kill)
    watchdog.start()
    clients: list[socket.socket] = []
    try:
        port = int(proc.stdout.readline())
        # More clients than the server has descriptors: the rest wait in the backlog.
        clients = [connect(("127.0.0.1", port)) for _ in range(100)]
        for line in proc.stderr:
            if "cannot take a new request (EMFILE" in line:
                break
        else:
            pytest.fail("the server never logged running out of descriptors")

        def calls() -> int:
            proc.stdin.write("count\n")  # type: ignore[union-attr]
            proc.stdin.flush()  # type: ignore[union-attr]
            return int(proc.stdout.readline())  # type: ignore[union-attr]

        before, cpu_before = calls(), _cpu_seconds(proc.pid)
        time.sleep(1.0)  # the window measured, not a synchronisation
        attempts, cpu = calls() - before, _cpu_seconds(proc.pid) - cpu_before
        # Backing off from 10 ms to 1 s, a second holds a handful of attempts;
        # a spinning loop makes hundreds of thousands.
        assert attempts <= 20, f"{attempts} accept attempts in 1s ({cpu:.2f}s CPU)"

        proc.stdin.write("release\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "released"
        replies = [recv_until(client) for client in clients]
        assert replies == [b"ok\n"] * len(clients), "a queued connection was lost"
        with connect(("127.0.0.1", port)) as late:
            assert recv_until(late) == b"ok\n"
    finally:
        for client in clients:
            client.close()
        watchdog.cancel()
        proc.kill()
        proc.wait(WAIT)
        stderr = proc.stderr.read()
    assert "taking requests again" in stderr


# -- datagrams ----------------------------------------------------------------


class Recorder(servekit.DatagramRequestHandler):
    def handle(self) -> None:
        self.server.packets.append(self.packet)  # type: ignore[attr-defined]
        self.wfile.write(b"got %d" % len(self.packet))


@pytest.mark.parametrize("name", ["UDPServer", "ThreadingUDPServer"])
def test_oversized_datagram_is_dropped_and_logged(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """stdlib fault: a datagram over max_packet_size reaches the handler silently cut."""
    server: Any = getattr(servekit, name)(("127.0.0.1", 0), Recorder)
    server.max_packet_size = 100
    server.packets = []
    with serving(server), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(WAIT)
        client.bind(("127.0.0.1", 0))
        port = client.getsockname()[1]
        client.sendto(b"x" * 101, server.server_address)
        client.sendto(b"z" * 200, server.server_address)
        client.sendto(b"y" * 100, server.server_address)
        assert client.recv(100) == b"got 100"
    assert server.packets == [b"y" * 100]
    assert server.stats.limits == {"max_packet_size": 2}
    warnings = [
        r.getMessage() for r in caplog.records
        if r.levelno >= logging.WARNING and "max_packet_size=100" in r.getMessage()
    ]  # fmt: skip
    assert len(warnings) == 1  # a flood of them is not a flood of log lines
    assert str(port) in warnings[0]


class DatagramEcho(servekit.DatagramRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.read())


def test_servers_sharing_a_datagram_socket_never_block_in_recv() -> None:
    """Both loops wake for a datagram that only one gets: the other must go back to
    waiting, not sit in recvfrom where shutdown() cannot reach it."""
    first = servekit.UDPServer(("127.0.0.1", 0), DatagramEcho)
    second = servekit.UDPServer(first.server_address, DatagramEcho, bind_and_activate=False)
    second.socket.close()
    second.socket = first.socket.dup()
    with (
        serving(first, poll_interval=WAIT),
        serving(second, poll_interval=WAIT),
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client,
    ):
        client.settimeout(WAIT)
        for _ in range(20):  # bursts: both loops wake, and one finds nothing
            for i in range(100):
                client.sendto(b"%d" % i, first.server_address)
            assert sorted(int(client.recv(100)) for _ in range(100)) == list(range(100))
        stoppers = [threading.Thread(target=s.shutdown) for s in (first, second)]
        for stopper in stoppers:
            stopper.start()
        for stopper in stoppers:
            stopper.join(WAIT)
            assert not stopper.is_alive(), "a serving loop is stuck in recvfrom"
    first.server_close()
    second.server_close()


def test_default_max_packet_size_is_the_stdlib_one() -> None:
    assert servekit.UDPServer.max_packet_size == 8192
    assert servekit.TCPServer.request_queue_size == 5


# -- Unix socket files ------------------------------------------------------------


class Echo(servekit.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.readline())


def _unix_round_trip(path: str) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(WAIT)
        client.connect(path)
        client.sendall(b"hi\n")
        return recv_until(client)


def test_unix_refuses_to_bind_over_a_live_server(sock_dir: Path) -> None:
    path = str(sock_dir / "live.sock")
    with serving(servekit.UnixStreamServer(path, Echo)):
        with pytest.raises(OSError, match="running server is listening") as info:
            servekit.UnixStreamServer(path, Echo)
        assert info.value.errno == __import__("errno").EADDRINUSE
        assert _unix_round_trip(path) == b"hi\n"  # the live server is untouched


def test_unix_replaces_a_stale_socket_file(sock_dir: Path) -> None:
    path = str(sock_dir / "stale.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.close()  # the file stays behind, as after a crash
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    with serving(servekit.UnixStreamServer(path, Echo)):
        assert _unix_round_trip(path) == b"hi\n"


def test_unix_leaves_other_files_alone(sock_dir: Path) -> None:
    path = sock_dir / "data.txt"
    path.write_text("precious")
    with pytest.raises(FileExistsError, match="not a socket"):
        servekit.UnixStreamServer(str(path), Echo)
    assert path.read_text() == "precious"


def test_unix_socket_file_mode_and_removal_on_close(sock_dir: Path) -> None:
    path = str(sock_dir / "mode.sock")

    class Private(servekit.ThreadingUnixStreamServer):
        socket_file_mode = 0o600

    with serving(Private(path, Echo)):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert _unix_round_trip(path) == b"hi\n"
    assert not os.path.exists(path)


def test_unix_close_keeps_a_successors_file(sock_dir: Path) -> None:
    path = str(sock_dir / "succ.sock")
    first = servekit.UnixStreamServer(path, Echo)
    os.unlink(path)  # someone removed it and a new server took the name
    with servekit.UnixStreamServer(path, Echo) as second:
        first.server_close()
        assert os.path.exists(path)
        with serving(second):
            assert _unix_round_trip(path) == b"hi\n"


def test_unix_datagram_stale_file_and_removal(sock_dir: Path) -> None:
    path = str(sock_dir / "d.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dead.bind(path)
    dead.close()
    server: Any = servekit.UnixDatagramServer(path, Recorder)
    server.packets = []
    with serving(server), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
        client.settimeout(WAIT)
        client.bind(str(sock_dir / "c.sock"))
        client.sendto(b"abc", path)
        assert client.recv(100) == b"got 3"
    assert not os.path.exists(path)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="abstract namespace is Linux-only")
def test_unix_abstract_namespace(sock_dir: Path) -> None:
    name = f"\0servekit-test-{os.getpid()}"
    with serving(servekit.UnixStreamServer(name, Echo)) as server:
        assert server.server_address == name.encode()
        assert _unix_round_trip(name) == b"hi\n"
    assert list(sock_dir.iterdir()) == []
