"""A handler's fork() (finish a request in a child) and an async handler's to_thread().

Real sockets on 127.0.0.1 and real processes. A forked child that must wait
blocks on a pipe the test writes to (inherited through the fork), so every wait
is on an event the test controls, and bounded by WAIT.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import servekit
from servekit import _drain, _handoff
from servekit.aio import AsyncStreamRequestHandler
from tests.conftest import WAIT, LogWatcher, connect, recv_until, running, serving

SYNC_MODELS = ["sync", "threads", "pool"]
# The children in these tests are the test process's own: ForkingMixIn's tests
# elsewhere reap theirs, so any child left here is one of these.
pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")


def _children() -> dict[int, str]:
    """This process's children: {pid: state} (R, S, Z, ...), from /proc."""
    me = str(os.getpid())
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if fields[1] == me:
            found[int(entry.name)] = fields[0]
    return found


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(FileNotFoundError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    return inodes


class Gate:
    """A pipe forked children block on until the test lets them go, one byte each."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()

    def wait(self) -> None:
        os.read(self.read_fd, 1)

    def release(self, count: int = 1) -> None:
        os.write(self.write_fd, b"x" * count)

    def close(self) -> None:
        os.close(self.read_fd)
        os.close(self.write_fd)


@pytest.fixture
def gate() -> Iterator[Gate]:
    made = Gate()
    yield made
    made.close()


def _reports(
    gate: Gate | None = None, *, fail: bool = False
) -> type[servekit.StreamRequestHandler]:
    """A handler: ``q N`` is answered inline, ``f N`` in a forked child, which says
    its pid, waits at ``gate`` if given, and answers (or raises, if ``fail``)."""

    class Reports(servekit.StreamRequestHandler):
        wbufsize = -1  # buffered: what was written before fork() must go out once

        def handle(self) -> None:
            kind, number = self.rfile.readline().split()
            if kind == b"q":
                self.wfile.write(b"inline %d\n" % (int(number) * 2))
                return
            self.wfile.write(b"forking\n")
            if self.fork():
                return
            self.wfile.write(b"child %d\n" % os.getpid())
            self.wfile.flush()
            if gate is not None:
                gate.wait()
            if fail:
                raise ValueError(f"report {int(number)} failed")
            self.wfile.write(b"report %d parent %d\n" % (int(number) * 3, os.getppid()))

    return Reports


def _ask(address: Any, line: bytes) -> bytes:
    """One request; everything the server sent until it closed the connection."""
    with connect(address) as client:
        client.sendall(line)
        data = b""
        while chunk := client.recv(65536):
            data += chunk
    return data


def _child_pid(reply: bytes) -> int:
    return int(reply.split(b"child ", 1)[1].split(b"\n", 1)[0])


@pytest.mark.parametrize("concurrency", SYNC_MODELS)
def test_half_of_200_requests_fork_and_every_reply_is_right(concurrency: str) -> None:
    server = servekit.make_server("127.0.0.1:0", _reports(), concurrency=concurrency)
    with serving(server, poll_interval=0.05), ThreadPoolExecutor(8) as clients:
        lines = [b"%s %d\n" % (b"f" if i % 2 else b"q", i) for i in range(200)]
        replies = list(clients.map(lambda line: _ask(server.server_address, line), lines))
    pids = set()
    me = os.getpid()
    for i, reply in enumerate(replies):
        if i % 2:
            pid = _child_pid(reply)
            pids.add(pid)
            assert reply == b"forking\nchild %d\nreport %d parent %d\n" % (pid, i * 3, me)
        else:
            assert reply == b"inline %d\n" % (i * 2)
    assert len(pids) == 100
    assert server.stats.requests == 200
    assert server.stats.errors == 0
    # The stop waited for every child and reaped it: none left, zombie or not.
    assert pids & _children().keys() == set()


def _until_child(client: socket.socket) -> int:
    """Read "forking" and the child's "child PID" line (nothing follows until the
    gate lets the child go); the child's pid."""
    data = b""
    while b"child " not in data or not data.endswith(b"\n"):
        chunk = client.recv(65536)
        assert chunk, data
        data += chunk
    return _child_pid(data)


@pytest.mark.parametrize("concurrency", SYNC_MODELS)
def test_no_child_holds_a_listening_socket(concurrency: str, gate: Gate) -> None:
    """The server's listening socket, and any other the process holds, stay out of
    the children: with the children still running, the port binds again at once."""
    other = socket.create_server(("127.0.0.1", 0))  # another server's, in the same process
    server = servekit.make_server("127.0.0.1:0", _reports(gate), concurrency=concurrency)
    listening = {os.fstat(server.socket.fileno()).st_ino, os.fstat(other.fileno()).st_ino}
    port = server.server_address[1]
    with serving(server, poll_interval=0.05):
        clients = [connect(server.server_address) for _ in range(3)]
        pids = []
        for number, client in enumerate(clients):
            client.sendall(b"f %d\n" % number)
            pids.append(_until_child(client))
        for pid in pids:
            assert _socket_inodes(pid) & listening == set()
        server.shutdown()
        server.socket.close()
        with socket.socket() as again:
            again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            again.bind(("127.0.0.1", port))  # EADDRINUSE if a child still listened on it
            again.listen()
        gate.release(3)
        for number, client in enumerate(clients):
            assert recv_until(client).startswith(b"report %d" % (number * 3))
            client.close()
    other.close()
    assert set(pids) & _children().keys() == set()


@pytest.mark.parametrize("concurrency", ["threads", "pool"])
def test_a_child_holds_none_of_the_servers_other_connections(concurrency: str, gate: Gate) -> None:
    server = servekit.make_server("127.0.0.1:0", _reports(gate), concurrency=concurrency)
    with serving(server, poll_interval=0.05), connect(server.server_address) as idle:
        idle.sendall(b"q")  # a request begun, its handler waiting for the rest
        with connect(server.server_address) as client:
            client.sendall(b"f 1\n")
            pid = _until_child(client)
            server_side = _inode_of_peer(server, idle.getsockname())
            assert server_side  # the idle one, still the server's
            assert _socket_inodes(pid) & server_side == set()
            gate.release()
            assert recv_until(client).startswith(b"report 3")
        idle.sendall(b" 1\n")
        assert recv_until(idle) == b"inline 2\n"


def _inode_of_peer(server: Any, peer: Any) -> set[int]:
    """The inode of the server's side of the connection from ``peer``. The parent
    closes its copy of a forked connection meanwhile: those raise, and are not it."""
    found = set()
    for conn in server._connections.snapshot():
        with contextlib.suppress(OSError):
            if conn.getpeername() == peer:
                found.add(os.fstat(conn.fileno()).st_ino)
    return found


@pytest.mark.parametrize("concurrency", ["threads", "pool"])
def test_max_children_is_respected(concurrency: str, gate: Gate) -> None:
    """With max_children=3 and 8 requests forking at once, three children run; each
    one that ends lets one more start; never a fourth at once."""
    server = servekit.make_server("127.0.0.1:0", _reports(gate), concurrency=concurrency)
    server.max_children = 3  # type: ignore[attr-defined]
    before = set(_children())
    most = 0
    with serving(server, poll_interval=0.05):
        clients = [connect(server.server_address) for _ in range(8)]
        for number, client in enumerate(clients):
            client.sendall(b"f %d\n" % number)
        lines = _Lines(clients)
        for client in clients:  # every handler is in fork() now, or past it
            assert lines.next_of(client) == b"forking"
        running = done = 0
        while done < 8:
            if running == min(3, 8 - done):  # every slot taken: let one child end
                gate.release()
            client, line = lines.next_line()
            if line.startswith(b"child "):
                running += 1
            else:
                assert line.startswith(b"report ")
                running, done = running - 1, done + 1
                lines.forget(client)  # the child ended: nothing more comes
            alive = set(_children()) - before
            most = max(most, len(alive))
            assert len(alive) <= 3
            assert running <= 3
        for client in clients:
            client.close()
    assert most == 3


class _Lines:
    """Lines from several clients, in the order they come."""

    def __init__(self, clients: list[socket.socket]) -> None:
        self.buffers = dict.fromkeys(clients, b"")

    def next_of(self, client: socket.socket) -> bytes:
        while b"\n" not in self.buffers[client]:
            chunk = client.recv(65536)
            assert chunk
            self.buffers[client] += chunk
        line, self.buffers[client] = self.buffers[client].split(b"\n", 1)
        return line

    def next_line(self) -> tuple[socket.socket, bytes]:
        for client, data in self.buffers.items():
            if b"\n" in data:
                return client, self.next_of(client)
        readable, _, _ = select.select(list(self.buffers), [], [], WAIT)
        assert readable, "no line came"
        return readable[0], self.next_of(readable[0])

    def forget(self, client: socket.socket) -> None:
        del self.buffers[client]


@pytest.mark.parametrize("concurrency", SYNC_MODELS)
def test_a_stop_waits_for_the_children(concurrency: str, gate: Gate) -> None:
    server = servekit.make_server(
        "127.0.0.1:0", _reports(gate), concurrency=concurrency, shutdown_timeout=WAIT
    )
    loop = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    loop.start()
    client = connect(server.server_address)
    client.sendall(b"f 7\n")
    pid = _until_child(client)
    server.shutdown()
    loop.join(WAIT)
    closer = threading.Thread(target=server.server_close)
    closer.start()
    gate.release()
    closer.join(WAIT)
    assert not closer.is_alive()
    # server_close() returned after the child had ended and been reaped.
    assert pid not in _children()
    assert recv_until(client) == b"report 21 parent %d\n" % os.getpid()
    client.close()


@pytest.mark.parametrize("concurrency", SYNC_MODELS)
@pytest.mark.parametrize("ignores_sigterm", [False, True])
def test_a_stop_ends_the_children_that_outlive_shutdown_timeout(
    concurrency: str, ignores_sigterm: bool, gate: Gate, servekit_log: LogWatcher,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """SIGTERM after shutdown_timeout (logged as a cut), SIGKILL after the grace."""
    monkeypatch.setattr(_drain, "CUT_GRACE", 0.3)
    monkeypatch.setattr(_handoff, "TERM_GRACE", 0.3)

    class Stubborn(_reports(gate)):  # type: ignore[misc]
        def fork(self) -> int:
            pid = super().fork()
            if not pid and ignores_sigterm:
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            return pid

    server = servekit.make_server(
        "127.0.0.1:0", Stubborn, concurrency=concurrency, shutdown_timeout=0.2
    )
    with serving(server, poll_interval=0.05):
        client = connect(server.server_address)
        client.sendall(b"f 1\n")
        pid = _until_child(client)
    # serving() has closed the server: the child was ended, and reaped.
    assert pid not in _children()
    assert recv_until(client) == b""  # the connection ended with the child
    client.close()
    assert servekit_log.wait_for("cut 1 connection(s) still open after shutdown_timeout=0.2s")
    killed = "killing 1 forked child(ren) still running after SIGTERM"
    assert any(killed in message for message in servekit_log.messages()) == ignores_sigterm


@pytest.mark.parametrize("concurrency", SYNC_MODELS)
def test_a_child_whose_handle_raises_goes_through_handle_error(
    concurrency: str, tmp_path: Path
) -> None:
    """The child's handle_error logs (under servekit) and it exits 1, which the
    parent counts in stats.errors; the reply written before the error goes out."""
    log_file = tmp_path / "child.log"
    handler = logging.FileHandler(log_file)
    logger = logging.getLogger("servekit")
    logger.addHandler(handler)
    try:
        server = servekit.make_server("127.0.0.1:0", _reports(fail=True), concurrency=concurrency)
        with serving(server, poll_interval=0.05):
            reply = _ask(server.server_address, b"f 5\n")
            assert _handoff.wait_children(server, WAIT)
            assert server.stats.errors == 1
    finally:
        logger.removeHandler(handler)
        handler.close()
    assert reply == b"forking\nchild %d\n" % _child_pid(reply)
    logged = log_file.read_text()
    assert "Exception occurred during processing of request from ('127.0.0.1'" in logged
    assert "ValueError: report 5 failed" in logged


def test_fork_under_forking_mixin_forks_no_grandchild() -> None:
    """The request runs in ForkingMixIn's child already: fork() returns 0 there."""

    class Report(servekit.StreamRequestHandler):
        def handle(self) -> None:
            self.rfile.readline()
            self.wfile.write(b"%d %d %d\n" % (self.fork(), os.getpid(), os.getppid()))

    server = servekit.make_server("127.0.0.1:0", Report, concurrency="fork")
    with serving(server, poll_interval=0.05):
        returned, pid, parent = _ask(server.server_address, b"go\n").split()
    assert int(returned) == 0
    assert int(parent) == os.getpid()  # ForkingMixIn's child itself, not a grandchild
    assert int(pid) != os.getpid()


def test_fork_where_it_cannot_work_says_why(servekit_log: LogWatcher) -> None:
    class Datagram(servekit.DatagramRequestHandler):
        def handle(self) -> None:
            self.fork()

    server = servekit.make_server("udp://127.0.0.1:0", Datagram, concurrency="sync")
    with serving(server, poll_interval=0.05), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
        c.sendto(b"x", server.server_address)
        assert servekit_log.wait_for("Exception occurred during processing")
    error = next(r for r in servekit_log.records if r.exc_info)
    assert error.exc_info is not None
    assert isinstance(error.exc_info[1], TypeError)
    assert "a datagram's reply leaves through the server's own socket" in str(error.exc_info[1])


# -- prefork ------------------------------------------------------------------------

APP = """
import os, servekit

class Handler(servekit.StreamRequestHandler):
    def handle(self):
        kind = self.rfile.readline().strip()
        if kind != b"fork":
            self.wfile.write(b"inline %d\\n" % os.getpid())
            return
        if self.fork():
            return
        self.wfile.write(b"child %d parent %d\\n" % (os.getpid(), os.getppid()))
        with open(os.environ["GATE"], "rb", buffering=0) as gate:  # a byte each
            gate.read(1)
        self.wfile.write(b"done parent %d\\n" % os.getppid())
"""


@pytest.mark.timeout(60)
def test_prefork_workers_fork_and_sigterm_drains_the_children(tmp_path: Path) -> None:
    """`servekit serve --workers 2`: forking requests are served; on SIGTERM each
    worker waits for its children (still their parent when they finish)."""
    (tmp_path / "app.py").write_text(APP)
    fifo = tmp_path / "gate"
    os.mkfifo(fifo)
    holder = os.open(fifo, os.O_RDWR)  # a writer from the start: the children's open() returns
    env = {**os.environ, "GATE": str(fifo)}
    command = [
        sys.executable,
        "-m",
        "servekit",
        "serve",
        "app:Handler",
        "--workers",
        "2",
        "--listen",
        "127.0.0.1:0",
        "--status-interval",
        "none",
        "--shutdown-timeout",
        "20",
    ]
    try:
        with running(command, cwd=tmp_path, env=env, start_new_session=True) as (proc, log, port):
            log.wait_for(r"worker \d+ \(pid \d+\) is serving", 2)
            for _ in range(6):
                assert _ask(("127.0.0.1", port), b"inline\n").startswith(b"inline ")
            clients = [connect(("127.0.0.1", port)) for _ in range(6)]
            parents = {}
            for client in clients:
                client.sendall(b"fork\n")
                *_, parent = recv_until(client).split()
                parents[client] = int(parent)
            proc.send_signal(signal.SIGTERM)
            log.wait_for("SIGTERM: stopping the workers gracefully")
            os.write(holder, b"x" * 6)
            for client in clients:
                # The worker that forked the child was still its parent at its end.
                assert recv_until(client) == b"done parent %d\n" % parents[client]
                assert client.recv(1) == b""
                client.close()
            assert proc.wait(WAIT) == 0
            assert len(log.wait_for(r"exited with status 0", 2)) == 2
    finally:
        os.close(holder)


# -- the async engine: to_thread() ----------------------------------------------------


class Counter:
    """How many calls run at once, and the most seen."""

    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.now = self.most = 0
        self.go = threading.Event()

    def call(self, value: int) -> int:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
            self.lock.notify_all()
        try:
            assert self.go.wait(WAIT)
            return value * 2
        finally:
            with self.lock:
                self.now -= 1


def _threaded(counter: Counter) -> type[AsyncStreamRequestHandler]:
    class Threaded(AsyncStreamRequestHandler):
        async def handle(self) -> None:
            number = int(await self.readline())
            self.write(b"calling\n")
            await self.drain()
            result = await self.to_thread(counter.call, number)
            self.write(b"%d\n" % result)

    return Threaded


def test_to_thread_is_bounded_by_max_handler_threads() -> None:
    counter = Counter()
    server = servekit.make_server(
        "127.0.0.1:0", _threaded(counter), concurrency="async", max_handler_threads=2
    )
    assert server.max_handler_threads == 2  # type: ignore[attr-defined]
    with serving(server, poll_interval=0.05):
        clients = [connect(server.server_address) for _ in range(6)]
        for number, client in enumerate(clients):
            client.sendall(b"%d\n" % number)
        for client in clients:  # every handler has called to_thread(), or is about to
            assert recv_until(client) == b"calling\n"
        with counter.lock:
            assert counter.lock.wait_for(lambda: counter.now == 2, WAIT)
        counter.go.set()
        for number, client in enumerate(clients):
            assert recv_until(client) == b"%d\n" % (number * 2)
            client.close()
    assert counter.most == 2


def test_a_stop_waits_for_to_thread_calls() -> None:
    counter = Counter()
    server = servekit.make_server(
        "127.0.0.1:0", _threaded(counter), concurrency="async", shutdown_timeout=WAIT
    )
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    client = connect(server.server_address)
    client.sendall(b"4\n")
    assert recv_until(client) == b"calling\n"
    with counter.lock:
        assert counter.lock.wait_for(lambda: counter.now == 1, WAIT)
    stopper = threading.Thread(target=server.shutdown)
    stopper.start()
    counter.go.set()  # the stop is under way (or about to be): the call still finishes
    assert recv_until(client) == b"8\n"
    stopper.join(WAIT)
    thread.join(WAIT)
    assert not thread.is_alive()
    assert counter.now == 0
    server.server_close()
    client.close()


def test_a_to_thread_call_that_outlives_the_stop_is_logged(
    servekit_log: LogWatcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call still running after shutdown_timeout and the grace: its handler is
    cancelled, the call logged and left to finish (a thread cannot be stopped)."""
    monkeypatch.setattr(_drain, "CUT_GRACE", 0.2)
    counter = Counter()
    server = servekit.make_server(
        "127.0.0.1:0", _threaded(counter), concurrency="async", shutdown_timeout=0.2
    )
    with serving(server, poll_interval=0.05):
        client = connect(server.server_address)
        client.sendall(b"1\n")
        assert recv_until(client) == b"calling\n"
    assert servekit_log.wait_for("1 to_thread() call(s) still running after shutdown_timeout=0.2s")
    counter.go.set()
    client.close()


def test_fork_on_an_async_handler_is_refused() -> None:
    class Forking(AsyncStreamRequestHandler):
        async def handle(self) -> None:
            await self.readline()
            try:
                self.fork()
            except TypeError as exc:
                self.write(str(exc).encode() + b"\n")

    server = servekit.make_server("127.0.0.1:0", Forking, concurrency="async")
    with serving(server, poll_interval=0.05):
        reply = _ask(server.server_address, b"go\n")
    assert b"an async handler cannot fork" in reply
    assert b"await self.to_thread(fn, *args)" in reply
