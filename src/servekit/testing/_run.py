"""run_handler(): one request of a handler, in memory, with no server listening."""

from __future__ import annotations

import asyncio
import errno
import selectors
import socket
import sys
import threading
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from servekit.aio.handlers import (
    AsyncBaseRequestHandler,
    AsyncDatagramRequestHandler,
)
from servekit.aio.server import AsyncServerMixIn
from servekit.aio.server import run as run_on_loop
from servekit.aio.stream import Watchdog
from servekit.factory import check_handler_fits, with_model
from servekit.handlers import DatagramRequestHandler
from servekit.limits import drop_datagram, too_long_datagram
from servekit.options import ServerConfig
from servekit.proxy import parse_networks
from servekit.sockets import TCPServer, UDPServer, UnixDatagramServer, UnixStreamServer
from servekit.testing._serving import WAIT

if TYPE_CHECKING:
    from collections.abc import Callable

    from servekit.core import BaseServer, RequestHandlerFactory

__all__ = ["HandlerTimeout", "run_handler"]

_AF_UNIX = getattr(socket, "AF_UNIX", None)

#: The socket source make_server uses for each (family is Unix, socket type).
_SOURCES: dict[tuple[bool, int], type[TCPServer]] = {
    (False, socket.SOCK_STREAM): TCPServer,
    (False, socket.SOCK_DGRAM): UDPServer,
    (True, socket.SOCK_STREAM): UnixStreamServer,
    (True, socket.SOCK_DGRAM): UnixDatagramServer,
}
_TRANSPORTS: dict[tuple[bool, int], str] = {
    (False, socket.SOCK_STREAM): "tcp",
    (False, socket.SOCK_DGRAM): "udp",
    (True, socket.SOCK_STREAM): "unix",
    (True, socket.SOCK_DGRAM): "unix-dgram",
}


class HandlerTimeout(TimeoutError):
    """The handler had not finished ``timeout`` seconds into run_handler(): its
    connection was cut (as a server's stop cuts it). ``output`` is what it had
    written by then."""

    def __init__(self, message: str, output: bytes) -> None:
        super().__init__(message)
        self.output = output


def run_handler(
    handler_class: RequestHandlerFactory,
    data: bytes = b"",
    *,
    client_address: Any = ("127.0.0.1", 50000),
    server: BaseServer | None = None,
    socket_type: int | None = None,
    timeout: float | None = WAIT,
    max_output: int = 64 * 1024 * 1024,
    raise_errors: bool = True,
    **options: Any,
) -> bytes:
    """Run one request of ``handler_class`` on ``data``; return what it wrote.

    A stream handler (sync or ``servekit.aio``) gets a connection on which the
    client sends ``data`` and then shuts its write side; what the handler writes
    until it ends and the connection closes is returned. A datagram handler gets
    ``data`` as one datagram from ``client_address``; the datagrams it sends to
    ``client_address`` are returned, joined (b"" when it sends none).

    ``self.server`` is a real server object, not a stand-in: an instance of the
    class ``make_server(address, handler_class, **options)`` would make for
    this transport and ``concurrency`` (a ``ThreadPoolTCPServer`` by default,
    an ``AsyncTCPServer`` for an async handler), with the same attributes and
    limits (``idle_timeout``, ``read_timeout``, ``max_line_length``,
    ``max_packet_size``, ``max_connections``, ``config``...), but never bound
    nor listening. The request goes through the server's own hooks as the
    ``sync`` model runs them (``request_accepted``, ``verify_request``, the
    PROXY header if ``proxy_protocol``, ``finish_request``, ``shutdown_request``),
    so a handler that trips a limit is cut, logged and counted (``server.stats``)
    as in production, and returns what it wrote before. A sync handler runs in
    the calling thread; an async one on an event loop of its own (uvloop when
    the server would use it), in a thread of its own if this thread runs a loop.
    Pass ``server`` to use a server of your own instead (its options then apply).

    The connection is a real one, not a mock: for an IP ``client_address`` (the
    default), a TCP connection over loopback made through a listening socket
    that is closed before the handler runs, so that ``TCP_NODELAY``, peer names
    and TCP's counters behave as in production; for a Unix one (a path, or
    ``""``), a ``socket.socketpair()``. A datagram handler's socket (sync) or
    transport (async) keeps what is sent: no datagram leaves the process.
    ``socket_type`` (``socket.SOCK_STREAM`` or ``SOCK_DGRAM``) says which a
    handler that is neither a stream nor a datagram handler class serves; streams
    by default.

    An exception in the handler is raised from here (the server's
    ``handle_error()`` is not called), unless ``raise_errors=False``: it is then
    handled as in production (logged by ``handle_error()``) and what the handler
    wrote is returned. A limit tripped is not an error, as in production.

    ``timeout`` bounds the whole request: past it the connection is cut (the
    handler's reads end, its writes fail, an async handler is cancelled) and
    ``HandlerTimeout`` is raised, with what was written so far. Past
    ``max_output`` bytes the client stops reading, as a slow client would:
    a handler that writes without end then waits, until the timeout cuts it,
    instead of filling this process's memory. TLS options
    are refused: a TLS handler is tested with ``serving()`` and a TLS client.
    """
    own = server is None
    if server is None:
        server = _make_server(handler_class, client_address, socket_type, options)
    elif options:
        raise TypeError(
            f"run_handler(server=...) runs with that server's options, not {sorted(options)}"
        )
    try:
        return _run(server, handler_class, data, client_address, timeout, max_output, raise_errors)
    finally:
        if own:
            server.server_close()


def _make_server(
    handler: RequestHandlerFactory, client_address: Any, socket_type: int | None, options: Any
) -> BaseServer:
    """The server make_server would make for ``options``, neither bound nor listening."""
    config = options.pop("config", None)
    if config is None:
        config = ServerConfig()
    elif not isinstance(config, ServerConfig):
        raise TypeError(f"config must be a servekit.options.ServerConfig, not {config!r}")
    if "concurrency" not in options and _is_async(handler):
        options["concurrency"] = "async"
    config = replace(config, **options)
    if config.ssl_context is not None or config.certfile is not None:
        raise ValueError(
            "run_handler sends plain bytes: test a TLS server with servekit.testing.serving() "
            "and a TLS client"
        )
    unix = _is_unix(client_address)
    kind = socket_type if socket_type is not None else _socket_type_of(handler)
    transport = _TRANSPORTS[(unix, kind)]
    check_handler_fits(handler, transport, config.concurrency, f"run_handler ({transport})")
    server_class = with_model(_SOURCES[(unix, kind)], config.concurrency)
    if unix:
        address: Any = ""
    elif _is_ipv6(client_address):
        address = ("::1", 0)
    else:
        address = ("127.0.0.1", 0)
    # bind_and_activate=False: a socket is made, and never bound.
    made = server_class(address, handler, bind_and_activate=False)  # type: ignore[call-arg]
    try:
        _configure(made, config, unix, client_address)
    except BaseException:
        made.server_close()
        raise
    return made


def _configure(server: Any, config: ServerConfig, unix: bool, client_address: Any) -> None:
    """The attributes make_server gives a server made from ``config`` (factory._build);
    tests/test_testing.py compares the two, so that they cannot drift apart."""
    family = _AF_UNIX if unix else (socket.AF_INET6 if _is_ipv6(client_address) else None)
    if family is not None and family != server.address_family:
        server.socket.close()
        server.socket = socket.socket(family, server.socket_type)
        server.address_family = family
    server.config = config
    if config.max_packet_size is not None:
        server.max_packet_size = config.max_packet_size
    if config.concurrency == "pool":
        server.max_workers = config.max_workers
        server.max_pending = config.max_pending
    server.shutdown_timeout = config.shutdown_timeout
    if server.socket_type == socket.SOCK_STREAM:
        server.ssl_context = None
        server.handshake_timeout = config.handshake_timeout
        server.proxy_protocol = config.proxy_protocol
        server.trusted_proxies = parse_networks(config.trusted_proxies)
        server.max_connections = config.max_connections
        server.idle_timeout = config.idle_timeout
        server.read_timeout = config.read_timeout
        server.max_line_length = config.max_line_length


def _is_async(handler: Any) -> bool:
    return isinstance(handler, type) and issubclass(handler, AsyncBaseRequestHandler)


def _socket_type_of(handler: Any) -> int:
    datagram = isinstance(handler, type) and issubclass(
        handler, (DatagramRequestHandler, AsyncDatagramRequestHandler)
    )
    return socket.SOCK_DGRAM if datagram else socket.SOCK_STREAM


def _is_unix(client_address: Any) -> bool:
    return isinstance(client_address, (str, bytes)) or client_address is None


def _is_ipv6(client_address: Any) -> bool:
    return isinstance(client_address, tuple) and ":" in str(client_address[0])


def _run(
    server: Any,
    handler: RequestHandlerFactory,
    data: bytes,
    client_address: Any,
    timeout: float | None,
    max_output: int,
    raise_errors: bool,
) -> bytes:
    """One request on ``server`` by ``handler``, with the server's handle_error
    replaced (on the instance, for this request) when errors are to be raised."""
    errors: list[BaseException] = []
    saved_handler, saved_error = (
        vars(server).get("RequestHandlerClass"),
        vars(server).get("handle_error"),
    )
    server.RequestHandlerClass = handler
    if raise_errors:

        def handle_error(request: Any, client_address: Any) -> None:
            exc = sys.exception()
            if exc is not None:
                errors.append(exc)

        server.handle_error = handle_error
    try:
        if server.socket_type == socket.SOCK_DGRAM:
            output = _run_datagram(server, data, client_address)
        else:
            output = _run_stream(server, data, client_address, timeout, max_output)
    finally:
        _restore(server, "RequestHandlerClass", saved_handler)
        _restore(server, "handle_error", saved_error)
    if errors:
        raise errors[0]
    return output


def _restore(server: Any, name: str, value: Any) -> None:
    if value is None:
        vars(server).pop(name, None)
    else:
        setattr(server, name, value)


# -- datagrams --------------------------------------------------------------------


class _ReplySocket(socket.socket):
    """A datagram handler's ``self.socket``: a real socket, never bound, whose
    sends are kept instead of sent."""

    def __init__(self, family: int) -> None:
        super().__init__(family, socket.SOCK_DGRAM)
        self.sent: list[tuple[bytes, Any]] = []

    def sendto(self, data: Any, *args: Any) -> int:
        address = args[-1]
        payload = bytes(data)
        self.sent.append((payload, address))
        return len(payload)


class _ReplyTransport:
    """An async datagram handler's transport: what ``sendto()`` sends is kept."""

    def __init__(self, family: int) -> None:
        self.sent: list[tuple[bytes, Any]] = []
        self._family = family
        self._closing = False

    def sendto(self, data: Any, addr: Any = None) -> None:
        self.sent.append((bytes(data), addr))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        self._closing = True

    abort = close


def _run_datagram(server: Any, data: bytes, client_address: Any) -> bytes:
    is_async = isinstance(server, AsyncServerMixIn)
    max_size = getattr(server, "max_packet_size", 8192)
    if len(data) > max_size:  # as the server drops it, before any handler
        drop_datagram(server, client_address, "max_packet_size", too_long_datagram(max_size))
        return b""
    replies: _ReplySocket | _ReplyTransport
    if is_async:
        replies = _ReplyTransport(server.address_family)
        _run_async(server, (data, replies), client_address, None, None)
    else:
        replies = _ReplySocket(server.address_family)
        try:
            _serve_sync(server, (data, replies), client_address)
        finally:
            replies.close()
    return b"".join(payload for payload, to in replies.sent if to == client_address)


# -- streams ----------------------------------------------------------------------


def _run_stream(
    server: Any, data: bytes, client_address: Any, timeout: float | None, max_output: int
) -> bytes:
    conn, client = _connection(server.address_family)
    cut_async: list[Callable[[], object]] = []

    def cut() -> None:
        try:
            conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # closed already
        for cancel in cut_async:
            cancel()

    talk = _Client(client, data, timeout, max_output, cut)
    talk.start()
    try:
        if isinstance(server, AsyncServerMixIn):
            _run_async(server, conn, client_address, cut_async, talk)
        else:
            _serve_sync(server, conn, client_address)
    finally:
        talk.join()  # it ends at the handler's EOF, or cuts at the timeout and ends
        client.close()
    if talk.timed_out:
        raise HandlerTimeout(
            f"the handler had not finished after {timeout}s; its connection was cut "
            f"(it wrote {len(talk.output)} bytes)",
            talk.output,
        )
    return talk.output


def _connection(family: int) -> tuple[socket.socket, socket.socket]:
    """(the server's end, the client's end) of a new connection."""
    if family == _AF_UNIX:
        return socket.socketpair(family, socket.SOCK_STREAM)
    host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    with socket.socket(family, socket.SOCK_STREAM) as listener:
        listener.bind((host, 0))
        listener.listen(1)
        client = socket.socket(family, socket.SOCK_STREAM)
        try:
            client.settimeout(WAIT)
            client.connect(listener.getsockname())
            listener.settimeout(WAIT)
            conn, _ = listener.accept()
        except BaseException:
            client.close()
            raise
    conn.settimeout(None)  # as accept() gives it on a server
    return conn, client


class _Client(threading.Thread):
    """The client's side: send ``data``, shut the write side, read until EOF,
    both at once (a handler may write before it has read everything). Past
    ``timeout`` it calls ``cut`` and reads what is left until EOF; past
    ``max_output`` bytes received it reads no more, and ends at the cut."""

    def __init__(
        self,
        sock: socket.socket,
        data: bytes,
        timeout: float | None,
        max_output: int,
        cut: Callable[[], None],
    ) -> None:
        super().__init__(name="servekit.testing client", daemon=True)
        self._sock = sock
        self._data = memoryview(data)
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._cut = cut
        self._received: list[bytes] = []
        self._left = max_output
        self.timed_out = False
        self._done = False
        self._callbacks: list[Callable[[], object]] = []
        self._lock = threading.Lock()

    def when_done(self, callback: Callable[[], object]) -> None:
        """Call ``callback`` (from any thread) once the client has seen EOF."""
        with self._lock:
            if not self._done:
                self._callbacks.append(callback)
                return
        callback()

    @property
    def output(self) -> bytes:
        return b"".join(self._received)

    def run(self) -> None:
        try:
            self._talk()
        finally:
            with self._lock:
                self._done = True
                callbacks, self._callbacks = self._callbacks, []
            for callback in callbacks:
                callback()

    def _talk(self) -> None:
        sock = self._sock
        sock.setblocking(False)
        sending = True
        if not self._data:
            sending = self._shut_write()
        with selectors.DefaultSelector() as selector:
            registered = selectors.EVENT_READ | selectors.EVENT_WRITE * sending
            selector.register(sock, registered)
            while True:
                wait = None
                if self._deadline is not None and not self.timed_out:
                    wait = max(0.0, self._deadline - time.monotonic())
                events = selector.select(wait)
                if not events:  # the deadline passed
                    self.timed_out = True
                    self._cut()
                    self._deadline = None
                    if self._left <= 0:
                        return  # not reading: the cut is the end
                    continue
                for _, mask in events:
                    if mask & selectors.EVENT_WRITE and sending:
                        sending = self._send()
                    if mask & selectors.EVENT_READ and not self._receive():
                        return
                reading = self._left > 0 or (self._deadline is None and not self.timed_out)
                mask = selectors.EVENT_READ * reading | selectors.EVENT_WRITE * sending
                if mask != registered:
                    if registered:
                        selector.unregister(sock)
                    if mask:
                        selector.register(sock, mask)
                    # None: wait for the deadline, as a client that reads no more would.
                    registered = mask

    def _send(self) -> bool:
        """Send what fits; False when all is sent (or the server stopped reading)."""
        try:
            sent = self._sock.send(self._data)
        except BlockingIOError:
            return True
        except OSError as exc:
            if exc.errno in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                return False  # the server closed first: what it sent is still to read
            raise
        self._data = self._data[sent:]
        return bool(self._data) or self._shut_write()

    def _shut_write(self) -> bool:
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        return False

    def _receive(self) -> bool:
        """Read what is there; False at EOF."""
        try:
            chunk = self._sock.recv(65536)
        except BlockingIOError:
            return True
        except ConnectionResetError:
            return False  # closed with our data unread: all it sent was read before
        if not chunk:
            return False
        self._received.append(chunk)
        self._left -= len(chunk)
        return True


def _serve_sync(server: Any, request: Any, client_address: Any) -> None:
    """What BaseServer's loop does for a request it took, on the sync model:
    request_accepted(), verify_request(), the preface and finish_request()
    (_run_request), handle_error() for what it raised, shutdown_request()."""
    server.request_accepted(request, client_address)
    try:
        if server._verify_in_worker or server.verify_request(request, client_address):
            server._counters.requests += 1
            try:
                server._run_request(request, client_address)
            except Exception:
                server._report_error(request, client_address)
    finally:
        server.shutdown_request(request)


def _run_async(
    server: Any,
    request: Any,
    client_address: Any,
    cut_async: list[Callable[[], object]] | None,
    client: _Client | None,
) -> None:
    """The async engine's request task (AsyncServerMixIn._request_task: the preface,
    verify_request(), the handler, handle_error(), shutdown_request()) on a loop of
    its own, which runs until the client has seen the connection close (the
    transport closes it a loop iteration or more after close(), once what was
    written is sent)."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server._aio_loop = loop
        server._aio_watchdog = Watchdog(loop)
        server._aio_hurry = asyncio.Event()
        try:
            server.request_accepted(request, client_address)
            task = loop.create_task(server._request_task(request, client_address))
            server._aio_tasks.add(task)
            if cut_async is not None:
                cut_async.append(lambda: loop.call_soon_threadsafe(task.cancel))
            try:
                await task
            except asyncio.CancelledError:
                if not task.cancelled():
                    raise
            if client is not None:
                closed = loop.create_future()

                def close_seen() -> None:
                    if not closed.done():
                        closed.set_result(None)

                client.when_done(lambda: loop.call_soon_threadsafe(close_seen))
                await closed
        finally:
            server._aio_loop = server._aio_watchdog = server._aio_hurry = None

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        run_on_loop(main(), server.loop)
        return
    # This thread runs a loop already (an async test): the request gets a thread of its own.
    failed: list[BaseException] = []

    def in_thread() -> None:
        try:
            run_on_loop(main(), server.loop)
        except BaseException as exc:
            failed.append(exc)

    thread = threading.Thread(target=in_thread, name="servekit.testing handler", daemon=True)
    thread.start()
    thread.join()
    if failed:
        raise failed[0]
