"""Per-connection limits: idle_timeout, read_timeout, max_line_length."""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
from typing import Any

import servekit
from tests.conftest import LogWatcher, connect, recv_until, serving


class Echo(servekit.StreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(line)


def _server(**limits: Any) -> Any:
    defaults: dict[str, Any] = {
        "idle_timeout": None, "read_timeout": None, "max_line_length": None,
    }  # fmt: skip
    return servekit.make_server("127.0.0.1:0", Echo, **(defaults | limits))


def _closed(client: socket.socket) -> bool:
    """True once the server closed the connection (EOF or reset)."""
    try:
        while client.recv(4096):
            pass
    except ConnectionResetError:
        pass
    return True


def test_read_timeout_does_not_count_waiting_between_requests() -> None:
    with (
        serving(_server(read_timeout=0.2, idle_timeout=5)) as server,
        connect(server.server_address) as client,
    ):
        for i in range(3):
            client.sendall(b"%d\n" % i)
            assert recv_until(client) == b"%d\n" % i
            # Idle between requests for longer than read_timeout: still served.
            threading.Event().wait(0.3)
        client.sendall(b"last\n")
        assert recv_until(client) == b"last\n"


class RecordsRaised(servekit.BaseRequestHandler):
    """Keeps what its handle() raised in server.raised, then raises it on."""

    def handle(self) -> None:
        try:
            self.use_socket()
        except OSError as exc:
            self.server.raised = exc  # type: ignore[attr-defined]
            raise

    def use_socket(self) -> None:
        raise NotImplementedError


def test_idle_timeout_applies_to_raw_socket_handlers(servekit_log: LogWatcher) -> None:
    """A handler reading self.request directly gets idle_timeout, kept by the kernel
    (no Python timeout, which would poll before every recv), and a wait that runs
    out is a limit like the others: a TimeoutError, logged and counted, not an error."""

    class Raw(RecordsRaised):
        def use_socket(self) -> None:
            self.server.timeout_seen = self.request.gettimeout()  # type: ignore[attr-defined]
            self.request.recv(10)

    with servekit.make_server("127.0.0.1:0", Raw, idle_timeout=0.2) as server, serving(server):
        with connect(server.server_address) as silent:
            assert _closed(silent)
        assert servekit_log.wait_for("idle for 0.2s")
    assert server.timeout_seen is None
    assert isinstance(server.raised, servekit.limits.IdleTimeout)
    assert isinstance(server.raised, TimeoutError)  # what settimeout() would have raised
    assert server.stats.limits == {"idle_timeout": 1}
    assert server.stats.errors == 0
    assert not [r for r in servekit_log.records if r.levelno >= logging.ERROR]


def test_idle_timeout_bounds_a_raw_send_to_a_client_that_reads_nothing(
    servekit_log: LogWatcher,
) -> None:
    class Flood(RecordsRaised):
        def use_socket(self) -> None:
            self.request.sendall(b"x" * (64 << 20))

    server = servekit.make_server("127.0.0.1:0", Flood, idle_timeout=0.2)
    with server, serving(server), connect(server.server_address) as stalled:
        assert servekit_log.wait_for("did not take our data for 0.2s")
        assert _closed(stalled)
    assert isinstance(server.raised, servekit.limits.IdleTimeout)
    assert server.stats.limits == {"idle_timeout": 1}


def test_idle_timeout_bounds_a_raw_sendfile_to_a_client_that_reads_nothing(
    servekit_log: LogWatcher, tmp_path: Any
) -> None:
    """socket.sendfile() waits for room with Python's timeout: the blocking socket under
    kernel timeouts must still give up after idle_timeout, not wait for ever."""
    big = tmp_path / "big"
    with big.open("wb") as f:
        f.truncate(64 << 20)

    class SendFile(RecordsRaised):
        def use_socket(self) -> None:
            with big.open("rb") as f:
                self.request.sendfile(f)

    server = servekit.make_server("127.0.0.1:0", SendFile, idle_timeout=0.2)
    with server, serving(server), connect(server.server_address) as stalled:
        assert servekit_log.wait_for("did not take our data for 0.2s")
        assert _closed(stalled)
    assert isinstance(server.raised, servekit.limits.IdleTimeout)


def test_recv_into_keeps_its_keyword_arguments() -> None:
    class Into(servekit.BaseRequestHandler):
        def handle(self) -> None:
            buffer = bytearray(10)
            n = self.request.recv_into(buffer, nbytes=4, flags=0)
            self.request.sendall(bytes(buffer[:n]))

    server = servekit.make_server("127.0.0.1:0", Into, idle_timeout=5)
    with server, serving(server), connect(server.server_address) as client:
        client.sendall(b"abcdefgh")
        assert recv_until(client, b"abcd") == b"abcd"


def test_a_stdlib_line_reader_sees_the_idle_timeout_not_a_short_line() -> None:
    """The stdlib's StreamRequestHandler reads through socket.makefile(), whose reader
    takes a kernel timeout's EAGAIN for "nothing yet" and would return the line cut
    short, parsed as if whole. It must see a TimeoutError instead."""

    class StdlibLines(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            try:
                self.server.line = self.rfile.readline()  # type: ignore[attr-defined]
            except TimeoutError as exc:
                self.server.raised = exc  # type: ignore[attr-defined]

    server = servekit.make_server(
        "127.0.0.1:0", StdlibLines, idle_timeout=0.2, read_timeout=None, max_line_length=None
    )
    with server, serving(server), connect(server.server_address) as client:
        client.sendall(b"GET / HT")  # and then nothing
        assert _closed(client)
    assert not hasattr(server, "line")
    assert isinstance(server.raised, servekit.limits.IdleTimeout)


def test_a_handler_that_goes_non_blocking_sees_its_own_eagain() -> None:
    class NonBlocking(RecordsRaised):
        def use_socket(self) -> None:
            self.request.setblocking(False)
            self.request.recv(10)

    server = servekit.make_server("127.0.0.1:0", NonBlocking, idle_timeout=5)
    with server, serving(server), connect(server.server_address) as client:
        assert _closed(client)
    assert type(server.raised) is BlockingIOError
    assert server.stats.limits == {}


def test_read_of_nothing_returns_at_once() -> None:
    """read(0) must not wait for a byte (http.server reads an empty body that way)."""

    class Body(servekit.StreamRequestHandler):
        def handle(self) -> None:
            line = self.rfile.readline()
            empty = self.rfile.read(0)
            self.wfile.write(line.strip() + b" %d\n" % len(empty))

    with (
        serving(servekit.make_server("127.0.0.1:0", Body, idle_timeout=30)) as server,
        connect(server.server_address) as client,
    ):
        client.sendall(b"POST\n")
        assert recv_until(client) == b"POST 0\n"


def test_max_line_length_counts_the_newline_at_the_boundary(servekit_log: LogWatcher) -> None:
    """A line of exactly max_line_length bytes (newline included) passes, one byte more
    does not, whether the line arrives whole (one recv) or in pieces."""
    with serving(_server(max_line_length=8)) as server:
        with connect(server.server_address) as client:
            client.sendall(b"1234567\n12345678\n")  # both buffered at once
            assert recv_until(client) == b"1234567\n"
            assert _closed(client)
        with connect(server.server_address) as client:
            client.sendall(b"1234")
            client.sendall(b"567\n")
            assert recv_until(client) == b"1234567\n"
        assert servekit_log.wait_for("line longer than 8 bytes")
    assert server.stats.limits == {"max_line_length": 1}


def _sending(size: int) -> type[servekit.StreamRequestHandler]:
    """A handler that writes ``size`` bytes in one wfile.write()."""

    class Big(servekit.StreamRequestHandler):
        def handle(self) -> None:
            self.wfile.write(b"x" * size)

    return Big


def test_a_slow_steady_reader_is_not_cut() -> None:
    """idle_timeout bounds each wait for the client to take data, not a whole write."""
    with (
        serving(
            servekit.make_server("127.0.0.1:0", _sending(8_000_000), idle_timeout=0.5)
        ) as server,
        connect(server.server_address) as client,
    ):
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        received, pause = 0, threading.Event()
        while chunk := client.recv(65536):
            received += len(chunk)
            pause.wait(0.01)  # the whole write takes over 1 s; no single wait does
        assert received == 8_000_000
        assert server.stats.limits == {}


def test_a_client_that_stops_reading_is_cut_by_idle_timeout(servekit_log: LogWatcher) -> None:
    """wfile's sends are bounded too: a client that takes nothing for idle_timeout is cut,
    logged and counted as the limit, not as a handler error."""

    with (
        serving(
            servekit.make_server("127.0.0.1:0", _sending(64_000_000), idle_timeout=0.3)
        ) as server,
        connect(server.server_address) as client,
    ):
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        assert servekit_log.wait_for("did not take our data for 0.3s")
        assert server.stats.limits == {"idle_timeout": 1}
        assert server.stats.errors == 0


def test_a_hostile_client_does_not_delay_others() -> None:
    """While trickling clients hold connections, normal clients are answered."""
    stop = threading.Event()
    with serving(_server(read_timeout=1.0, idle_timeout=5)) as server:
        slow = [connect(server.server_address) for _ in range(20)]
        for client in slow:
            client.sendall(b"x")
        try:
            for i in range(20):
                with connect(server.server_address) as client:
                    client.sendall(b"%d\n" % i)
                    assert recv_until(client) == b"%d\n" % i
        finally:
            stop.set()
            for client in slow:
                client.close()
