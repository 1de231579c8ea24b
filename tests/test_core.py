"""The request loop: shutdown, error reporting, and the ways real code subclasses it.

The tests marked "stdlib fault" fail (hang, or find output on stderr) against
the standard library's socketserver.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import sys
import threading
from typing import Any

import pytest

import servekit
from tests.conftest import WAIT, connect, recv_until, serving

LOCAL = ("127.0.0.1", 0)
#: So long that a loop which only polls would never notice shutdown in a test's time.
NEVER = 3600.0


class Echo(servekit.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.readline())


def _run_loop(server: Any, **kwargs: Any) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, kwargs=kwargs, daemon=True)
    thread.start()
    return thread


def _round_trip(server: Any, data: bytes = b"hi\n") -> bytes:
    with connect(server.server_address) as client:
        client.sendall(data)
        return recv_until(client)


def _bounded(func: Any, *args: Any) -> bool:
    """Run ``func`` in a thread; True if it returned within the bound."""
    thread = threading.Thread(target=func, args=args, daemon=True)
    thread.start()
    thread.join(WAIT)
    return not thread.is_alive()


# -- shutdown ---------------------------------------------------------------


def test_shutdown_wakes_the_loop_at_once() -> None:
    """stdlib fault: serve_forever only notices shutdown() after poll_interval."""
    with servekit.TCPServer(LOCAL, Echo) as server:
        loop = _run_loop(server, poll_interval=NEVER)
        assert _round_trip(server) == b"hi\n"  # the loop is running
        assert _bounded(server.shutdown)
        loop.join(WAIT)
        assert not loop.is_alive()


def test_shutdown_from_a_handler_in_the_serving_thread() -> None:
    """stdlib fault: shutdown() from a synchronous handler deadlocks."""

    class Stopper(servekit.StreamRequestHandler):
        def handle(self) -> None:
            self.server.shutdown()
            self.wfile.write(b"stopping\n")

    with servekit.TCPServer(LOCAL, Stopper) as server:
        loop = _run_loop(server, poll_interval=NEVER)
        assert _round_trip(server) == b"stopping\n"
        loop.join(WAIT)
        assert not loop.is_alive()


def test_shutdown_before_serve_forever_is_safe() -> None:
    """stdlib fault: shutdown() with no loop running waits forever."""
    with servekit.TCPServer(LOCAL, Echo) as server:
        assert _bounded(server.shutdown)
        # As in the stdlib, a loop started after shutdown() returns at once,
        # which makes "start a thread, then shut down" free of races.
        assert _bounded(server.serve_forever, NEVER)
        # ... and only once: the next loop serves.
        loop = _run_loop(server, poll_interval=NEVER)
        assert _round_trip(server) == b"hi\n"
        server.shutdown()
        loop.join(WAIT)
        assert not loop.is_alive()


def test_setting_the_private_flag_from_a_handler_thread_stops_the_loop() -> None:
    """Code written for the stdlib stops the loop by setting its private flag."""

    class Stopper(servekit.StreamRequestHandler):
        def handle(self) -> None:
            self.server._BaseServer__shutdown_request = True  # type: ignore[attr-defined]
            self.wfile.write(b"bye\n")

    with servekit.ThreadingTCPServer(LOCAL, Stopper) as server:
        loop = _run_loop(server, poll_interval=NEVER)
        assert _round_trip(server) == b"bye\n"
        loop.join(WAIT)
        assert not loop.is_alive()
        assert server._BaseServer__shutdown_request is False  # type: ignore[attr-defined]


def test_shutdown_from_many_threads_at_once() -> None:
    with servekit.ThreadingTCPServer(LOCAL, Echo) as server:
        loop = _run_loop(server, poll_interval=NEVER)
        assert _round_trip(server) == b"hi\n"
        stoppers = [threading.Thread(target=server.shutdown) for _ in range(4)]
        for t in stoppers:
            t.start()
        for t in stoppers:
            t.join(WAIT)
            assert not t.is_alive()
        loop.join(WAIT)
        assert not loop.is_alive()


def test_serve_again_after_shutdown() -> None:
    with servekit.ThreadingTCPServer(LOCAL, Echo) as server:
        for _ in range(3):
            loop = _run_loop(server, poll_interval=NEVER)
            assert _round_trip(server) == b"hi\n"
            server.shutdown()
            loop.join(WAIT)
            assert not loop.is_alive()


# -- errors -----------------------------------------------------------------


class Boom(servekit.StreamRequestHandler):
    def handle(self) -> None:
        self.rfile.readline()
        raise ValueError("boom")


@pytest.mark.parametrize("name", ["TCPServer", "ThreadingTCPServer"])
def test_handle_error_logs_traceback_and_address_not_stderr(
    name: str, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    """stdlib fault: handle_error prints to stderr."""
    caplog.set_level(logging.ERROR, logger="servekit")
    with serving(getattr(servekit, name)(LOCAL, Boom)) as server:
        with connect(server.server_address) as client:
            client.sendall(b"x\n")
            assert client.recv(10) == b""  # closed after the error
            port = client.getsockname()[1]
        assert _round_trip(server, b"y\n") == b""  # still serving
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2
    record = errors[0]
    assert record.name.startswith("servekit")
    assert str(port) in record.getMessage()
    assert record.exc_info is not None
    assert record.exc_info[0] is ValueError
    assert capfd.readouterr().err == ""


class GoneAway(servekit.BaseRequestHandler):
    def handle(self) -> None:
        self.request.recv(10)
        raise ConnectionResetError(104, "Connection reset by peer")


def test_a_client_that_went_away_is_one_info_line_not_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="servekit")
    with (
        serving(servekit.ThreadingTCPServer(LOCAL, GoneAway)) as server,
        connect(server.server_address) as client,
    ):
        client.sendall(b"x\n")
        assert client.recv(10) == b""
        port = client.getsockname()[1]
    gone = [r for r in caplog.records if "went away" in r.getMessage()]
    assert [(r.levelno, r.exc_info) for r in gone] == [(logging.INFO, None)]
    assert str(port) in gone[0].getMessage()
    assert "ConnectionResetError" in gone[0].getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert server.stats.errors == 1  # still counted: handle_error() was called


def test_handle_error_override_may_reraise() -> None:
    class Strict(servekit.TCPServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            self.close_request(request)
            raise

    with Strict(LOCAL, Boom) as server, connect(server.server_address) as client:
        client.sendall(b"x\n")
        with pytest.raises(ValueError, match="boom"):
            server.handle_request()


def test_base_exceptions_are_not_swallowed() -> None:
    class Quit(servekit.BaseRequestHandler):
        def handle(self) -> None:
            raise SystemExit(3)

    with (
        servekit.TCPServer(LOCAL, Quit) as server,
        connect(server.server_address),
        pytest.raises(SystemExit),
    ):
        server.handle_request()


# -- the ways real code subclasses the stdlib --------------------------------


def test_handler_may_be_any_callable() -> None:
    class Greeter(servekit.StreamRequestHandler):
        def __init__(self, *args: Any, greeting: bytes) -> None:
            self.greeting = greeting
            super().__init__(*args)

        def handle(self) -> None:
            self.wfile.write(self.greeting + self.rfile.readline())

    handler = functools.partial(Greeter, greeting=b"hello ")
    with serving(servekit.ThreadingTCPServer(LOCAL, handler)) as server:
        assert _round_trip(server, b"you\n") == b"hello you\n"


def test_finish_request_override_passes_extra_arguments() -> None:
    class WithContext(servekit.StreamRequestHandler):
        def __init__(self, request: Any, address: Any, server: Any, context: str) -> None:
            self.context = context
            super().__init__(request, address, server)

        def handle(self) -> None:
            self.wfile.write(self.context.encode() + b"\n")

    class ContextServer(servekit.ThreadingTCPServer):
        def finish_request(self, request: Any, client_address: Any) -> None:
            self.RequestHandlerClass(request, client_address, self, "ctx")  # type: ignore[call-arg]

    with serving(ContextServer(LOCAL, WithContext)) as server:
        assert _round_trip(server) == b"ctx\n"


def test_serve_forever_override_and_socket_replaced_after_construction() -> None:
    calls = []

    class Custom(servekit.TCPServer):
        def serve_forever(self, poll_interval: float = 0.5) -> None:
            calls.append(poll_interval)
            super().serve_forever(poll_interval=NEVER)

    server = Custom(LOCAL, Echo, bind_and_activate=False)
    assert server.socket.fileno() >= 0  # the socket exists before binding
    server.socket.close()
    server.socket = socket.create_server(LOCAL)
    server.server_address = server.socket.getsockname()
    with serving(server):
        assert _round_trip(server) == b"hi\n"
    assert calls == [0.5]
    assert server.socket.fileno() == -1


def test_bind_and_activate_false_then_by_hand() -> None:
    server = servekit.TCPServer(LOCAL, Echo, bind_and_activate=False)
    server.allow_reuse_address = True
    server.server_bind()
    server.server_activate()
    assert server.socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
    with serving(server):
        assert _round_trip(server) == b"hi\n"


def test_bind_failure_closes_the_socket() -> None:
    with pytest.raises(OverflowError):
        servekit.TCPServer(("127.0.0.1", -1), Echo)


def test_verify_request_false_shuts_the_request() -> None:
    class Picky(servekit.TCPServer):
        closed = 0

        def verify_request(self, request: Any, client_address: Any) -> bool:
            return False

        def shutdown_request(self, request: Any) -> None:
            self.closed += 1
            super().shutdown_request(request)

    with Picky(LOCAL, Echo) as server, connect(server.server_address) as client:
        server.handle_request()
        assert client.recv(10) == b""
        assert server.closed == 1


def test_handle_request_timeout_calls_handle_timeout() -> None:
    class Waiting(servekit.TCPServer):
        timeout = 0.01
        timed_out = False

        def handle_timeout(self) -> None:
            self.timed_out = True

    with Waiting(LOCAL, Echo) as server:
        server.handle_request()
        assert server.timed_out


def test_service_actions_run_while_idle() -> None:
    ran = threading.Event()

    class Busy(servekit.TCPServer):
        def service_actions(self) -> None:
            ran.set()

    with serving(Busy(LOCAL, Echo), poll_interval=0.01):
        assert ran.wait(WAIT)


def test_repr_says_what_the_server_is_doing() -> None:
    with servekit.TCPServer(LOCAL, Echo) as server:
        assert "TCPServer" in repr(server)
        assert "serving" not in repr(server)
        with serving(server):
            assert _round_trip(server) == b"hi\n"
            assert "serving" in repr(server)


# -- a request source with no sockets at all -------------------------------


class PipeServer(servekit.ThreadingMixIn, servekit.BaseServer):
    """Requests are lines written to a pipe: BaseServer needs no socket."""

    def __init__(self, handler: Any) -> None:
        super().__init__("pipe", handler)
        self.read_fd, self.write_fd = os.pipe()
        self.reader = os.fdopen(self.read_fd, "rb", buffering=0)

    def fileno(self) -> int:
        return self.read_fd

    def get_request(self) -> tuple[Any, Any]:
        return os.read(self.read_fd, 4096), "pipe-client"

    def server_close(self) -> None:
        super().server_close()
        self.reader.close()
        os.close(self.write_fd)


def test_base_server_serves_a_source_without_sockets() -> None:
    got: list[tuple[bytes, str]] = []
    done = threading.Event()

    class Collect(servekit.BaseRequestHandler):
        def handle(self) -> None:
            got.append((self.request, self.client_address))
            done.set()

    server = PipeServer(Collect)
    with serving(server, poll_interval=NEVER):
        os.write(server.write_fd, b"job 1")
        assert done.wait(WAIT)
    assert got == [(b"job 1", "pipe-client")]


def test_base_server_without_get_request_says_what_to_define() -> None:
    with pytest.raises(NotImplementedError, match=r"fileno\(\) and get_request\(\)"):
        servekit.BaseServer("x", Echo).handle_request()


# -- the mixins ---------------------------------------------------------------


def test_threading_server_close_waits_for_request_threads() -> None:
    started, release = threading.Event(), threading.Event()
    finished = []

    class Slow(servekit.BaseRequestHandler):
        def handle(self) -> None:
            started.set()
            release.wait(WAIT)
            finished.append(True)

    server = servekit.ThreadingTCPServer(LOCAL, Slow)
    loop = _run_loop(server, poll_interval=NEVER)
    with connect(server.server_address):
        assert started.wait(WAIT)
        server.shutdown()
        loop.join(WAIT)
        finished_when_closed: list[bool] = []

        def close() -> None:
            server.server_close()
            finished_when_closed.extend(finished)

        closer = threading.Thread(target=close)
        closer.start()
        # Let the request end only once server_close() is waiting for it: then
        # a server_close() that did not wait would return with nothing finished.
        assert _blocked_in(closer, "join")
        release.set()
        closer.join(WAIT)
        assert not closer.is_alive()
    assert finished_when_closed == [True], "server_close() returned while a request was running"


def _blocked_in(thread: threading.Thread, function: str) -> bool:
    """True once ``thread`` is inside a call of ``function`` (read off its stack)."""
    for _ in range(int(WAIT / 0.005)):
        frame = sys._current_frames().get(thread.ident or 0)
        while frame is not None:
            if frame.f_code.co_name == function:
                return True
            frame = frame.f_back
        threading.Event().wait(0.005)  # sampling another thread's stack: no event for it
    return False


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forking_server_reaps_children_on_close() -> None:
    with serving(servekit.ForkingTCPServer(LOCAL, Echo)) as server:
        for _ in range(3):
            assert _round_trip(server) == b"hi\n"
    assert not server.active_children


def test_subclass_state_does_not_collide_with_the_loops() -> None:
    class Stateful(servekit.ThreadingTCPServer):
        def __init__(self, *args: Any) -> None:
            self._lock = "mine"
            self._waker = "mine"
            self._serving_thread = "mine"
            super().__init__(*args)

    with serving(Stateful(LOCAL, Echo), poll_interval=NEVER) as server:
        assert _round_trip(server) == b"hi\n"
    assert (server._lock, server._waker, server._serving_thread) == ("mine",) * 3
