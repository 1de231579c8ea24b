"""server.stats: byte counts of connections still open, at most a second behind, never twice."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from time import monotonic
from typing import Any

import pytest

import servekit
import servekit.aio
import servekit.sockets
import servekit.stats
from tests.conftest import WAIT, connect, serving

pytestmark = pytest.mark.skipif(
    getattr(socket, "TCP_INFO", None) is None, reason="byte counts need Linux's TCP_INFO"
)

#: What the client sends on its long-lived connection, and gets back: 10 kB.
LINE = b"x" * 999 + b"\n"
LINES = 10
SIZE = len(LINE) * LINES


class Echo(servekit.StreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(line)


class AsyncEcho(servekit.aio.AsyncStreamRequestHandler):
    async def handle(self) -> None:
        async for line in self:
            self.write(line)
            await self.drain()


@pytest.fixture(params=["sync", "threads", "pool", "async-asyncio", "async-uvloop"])
def concurrency(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    model, _, loop = request.param.partition("-")
    if loop:
        if loop == "uvloop":
            pytest.importorskip("uvloop", reason="uvloop is in the dev extra; not installed here")
        monkeypatch.setattr(servekit.aio.AsyncServerMixIn, "loop", loop)
    return model


def _server(concurrency: str) -> Any:
    handler: Any = AsyncEcho if concurrency == "async" else Echo
    return servekit.make_server("127.0.0.1:0", handler, concurrency=concurrency)


def _echo(client: socket.socket, lines: int = LINES) -> None:
    """Send ``lines`` lines and take their echo back: both ways' bytes have moved."""
    client.sendall(LINE * lines)
    received = 0
    while received < len(LINE) * lines:
        chunk = client.recv(65536)
        assert chunk, "the server closed the connection"
        received += len(chunk)


def _until(condition: Callable[[], bool]) -> bool:
    """Poll the server's counters, which no event announces, for up to WAIT seconds."""
    deadline = monotonic() + WAIT
    while not condition():
        if monotonic() > deadline:
            return False
        threading.Event().wait(0.01)
    return True


def test_an_open_connection_shows_its_bytes_within_a_second(concurrency: str) -> None:
    with serving(_server(concurrency)) as server, connect(server.server_address) as client:
        assert (server.stats.bytes_in, server.stats.bytes_out) == (0, 0)  # read: cached now
        _echo(client)
        moved = monotonic()
        assert _until(lambda: server.stats.bytes_out >= SIZE)
        shown_after = monotonic() - moved
        stats = server.stats
        assert (stats.connections_open, stats.bytes_in, stats.bytes_out) == (1, SIZE, SIZE)
        # The figures were cached just before the bytes moved: the next read of the
        # connection is LIVE_BYTES_MAX_AGE later (doubled: CI machines stall).
        assert shown_after < 2 * servekit.stats.LIVE_BYTES_MAX_AGE
        client.shutdown(socket.SHUT_RDWR)
        client.close()
        assert _until(lambda: server.stats.connections_open == 0)
        stats = server.stats  # the connection's bytes now in the closed totals: once
        assert (stats.bytes_in, stats.bytes_out) == (SIZE, SIZE)
    assert (server.stats.bytes_in, server.stats.bytes_out) == (SIZE, SIZE)


def test_a_connection_read_open_then_closed_is_counted_once(
    concurrency: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the open connections' figures are cached, a connection that was in them
    closes, and its bytes join the closed totals: still counted once."""
    monkeypatch.setattr(servekit.stats, "LIVE_BYTES_MAX_AGE", 3600.0)  # cached for the test
    with serving(_server(concurrency)) as server:
        with connect(server.server_address) as first:
            _echo(first)
            assert _until(lambda: server.open_requests() == 1)
            assert (server.stats.bytes_in, server.stats.bytes_out) == (SIZE, SIZE)  # cached
            first.shutdown(socket.SHUT_RDWR)
        assert _until(lambda: server.stats.connections_open == 0)
        assert (server.stats.bytes_in, server.stats.bytes_out) == (SIZE, SIZE)
        with connect(server.server_address) as second:  # closed totals pass the cached sum
            _echo(second, 3)
            second.shutdown(socket.SHUT_RDWR)
        assert _until(lambda: server.stats.connections_open == 0)
        total = SIZE + 3 * len(LINE)
        assert (server.stats.bytes_in, server.stats.bytes_out) == (total, total)


def test_open_connections_are_read_at_most_once_a_second(
    concurrency: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A status line read in a loop asks the kernel about each connection once a second,
    not once per read."""
    if concurrency == "sync":
        pytest.skip("sync serves one connection at a time")
    reads = []
    real = servekit.sockets._tcp_bytes

    def counted(sock: Any) -> tuple[int, int]:
        reads.append(sock)
        return real(sock)

    server = _server(concurrency)
    with serving(server):
        clients = [connect(server.server_address) for _ in range(20)]
        try:
            for client in clients:
                _echo(client, 1)
            assert _until(lambda: server.open_requests() == len(clients))
            monkeypatch.setattr(servekit.sockets, "_tcp_bytes", counted)
            started = monotonic()
            for _ in range(1000):
                server.stats.summary()
            passes = 1 + int((monotonic() - started) / servekit.stats.LIVE_BYTES_MAX_AGE)
            assert len(reads) <= passes * len(clients)
        finally:
            monkeypatch.undo()
            for client in clients:
                client.close()


def test_unix_stream_connections_are_not_counted(sock_dir: Any) -> None:
    """No TCP_INFO on a Unix socket: its bytes are not counted, open or closed (as documented)."""
    server = servekit.make_server(f"unix:{sock_dir / 's.sock'}", Echo)
    with serving(server), connect(server.server_address, socket.AF_UNIX) as client:
        _echo(client)
        assert (server.stats.connections_open, server.stats.bytes_in) == (1, 0)
