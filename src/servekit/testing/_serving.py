"""serving(): a server in a background thread for the length of a ``with`` block."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
import threading
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, overload

from servekit.addresses import format_address
from servekit.aio.handlers import AsyncBaseRequestHandler, AsyncDatagramRequestHandler
from servekit.factory import make_server
from servekit.handlers import DatagramRequestHandler

if TYPE_CHECKING:
    from collections.abc import Iterator

    from servekit.core import BaseServer, RequestHandlerFactory
    from servekit.rpc.program import Program

__all__ = ["WAIT", "Servable", "ServerDidNotStop", "Serving", "ServingFactory", "serving"]

#: The default bound, in seconds, of every wait of these helpers: a stop, a
#: client's connect, send or receive. Generous, because CI machines stall.
WAIT = 10.0

#: After the stop's bound ran out and the connections were cut, how long the
#: handlers get to notice before serving() gives up on the server.
_CUT_GRACE = 5.0

#: Longest Unix socket path (sun_path is 108 bytes on Linux, 104 on the BSDs).
_SUN_PATH_MAX = 100


class Servable(Protocol):
    """What serving() runs: any server with the socketserver loop's three methods
    (a servekit server, a class of servekit's or of the standard library's)."""

    def serve_forever(self, poll_interval: float = ...) -> Any: ...

    def shutdown(self) -> None: ...

    def server_close(self) -> None: ...


S = TypeVar("S", bound=Servable)


class ServerDidNotStop(TimeoutError):
    """The server was still running ``stop_timeout`` seconds into its stop, and
    after its connections were cut; its thread is left behind (a daemon)."""


class Serving(Generic[S]):
    """A server running in a background thread, as ``serving()`` yields it.

    - ``server``: the server object (``stats``, its options, its hooks);
    - ``address``: its bound address in the form ``make_server`` reads
      (``"tcp://127.0.0.1:40155"``, ``"udp://[::1]:5353"``, ``"unix:/tmp/.../server.sock"``);
    - ``server_address``: the same as the socket module takes it (a
      ``(host, port)`` tuple or a path), for ``socket.create_connection`` and the like;
    - ``host`` and ``port`` for an IP server;
    - ``connect()``: a client socket connected to it; ``request(data)``: one exchange.
    """

    def __init__(self, server: S, address: str | None = None) -> None:
        self.server = server
        self.server_address: Any = getattr(server, "server_address", None)
        #: The socket family and type (None for a request source that is not a socket).
        self.family: int | None = getattr(server, "address_family", None)
        self.socket_type: int | None = getattr(server, "socket_type", None)
        if self.family is not None and self.socket_type is not None and _is_socket_server(server):
            self.address = format_address(self.family, self.socket_type, self.server_address)
        else:
            self.address = address if address is not None else str(self.server_address)
        self._client_dir: str | None = None

    def __repr__(self) -> str:
        return f"<Serving {self.address} {type(self.server).__name__}>"

    @property
    def host(self) -> str:
        """The IP address the server is bound to."""
        if self.family not in (socket.AF_INET, socket.AF_INET6):
            raise TypeError(f"{self.address} is not an IP address")
        return str(self.server_address[0])

    @property
    def port(self) -> int:
        """The port the server is bound to (the free one the system chose for port 0)."""
        if self.family not in (socket.AF_INET, socket.AF_INET6):
            raise TypeError(f"{self.address} is not an IP address")
        return int(self.server_address[1])

    def connect(self, timeout: float | None = WAIT) -> socket.socket:
        """A new client socket connected to the server, with ``timeout`` on each of
        its operations; close it (``with serving.connect() as sock:``).

        A datagram socket is connected too (``send()``/``recv()`` talk to the
        server); on a Unix datagram server it is bound to a path of its own, in
        a temporary directory removed at the end, so that replies have
        somewhere to go. (Not an abstract name: uvloop mangles the addresses of
        autobound sockets.)
        """
        if self.family is None or self.socket_type is None:
            raise TypeError(
                f"{self.server!r} is not a socket server: there is nothing to connect to"
            )
        sock = socket.socket(self.family, self.socket_type)
        try:
            sock.settimeout(timeout)
            if self.family == getattr(socket, "AF_UNIX", None) and (
                self.socket_type == socket.SOCK_DGRAM
            ):
                sock.bind(self._unix_client_address())
            sock.connect(self.server_address)
        except BaseException:
            sock.close()
            raise
        return sock

    def request(self, data: bytes, timeout: float | None = WAIT) -> bytes:
        """One exchange on a new connection: send ``data``, shut the write side,
        and return everything the server sent until it closed. On a datagram
        server: send ``data`` as one datagram and return the first reply
        (TimeoutError if none comes within ``timeout``)."""
        with self.connect(timeout) as sock:
            if self.socket_type == socket.SOCK_DGRAM:
                sock.send(data)
                return sock.recv(65536)
            try:
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server closed first (a limit, say): what it sent is still there
            chunks = []
            while True:
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:
                    break  # closed with our data unread: what came before is what it sent
                if not chunk:
                    break
                chunks.append(chunk)
            return b"".join(chunks)

    def _unix_client_address(self) -> str:
        if self._client_dir is None:
            self._client_dir = _socket_dir()
        fd, path = tempfile.mkstemp(dir=self._client_dir, suffix=".sock")
        os.close(fd)
        os.unlink(path)
        return path

    def _cleanup(self) -> None:
        if self._client_dir is not None:
            shutil.rmtree(self._client_dir, ignore_errors=True)
            self._client_dir = None


class ServingFactory(Protocol):
    """The ``servekit_serving`` fixture: start a server (as ``serving()`` does) that
    runs until the test ends, and return its ``Serving``."""

    def __call__(
        self, server_or_handler: Any, address: str | None = None, **options: Any
    ) -> Serving[Any]: ...


@overload
def serving(
    server_or_handler: S,
    address: None = None,
    *,
    poll_interval: float = ...,
    stop_timeout: float = ...,
) -> contextlib.AbstractContextManager[Serving[S]]: ...


@overload
def serving(
    server_or_handler: RequestHandlerFactory | Program,
    address: str | None = None,
    *,
    poll_interval: float = ...,
    stop_timeout: float = ...,
    **make_server_options: Any,
) -> contextlib.AbstractContextManager[Serving[BaseServer]]: ...


def serving(
    server_or_handler: Any,
    address: str | None = None,
    *,
    poll_interval: float = 0.5,
    stop_timeout: float = WAIT,
    **make_server_options: Any,
) -> contextlib.AbstractContextManager[Serving[Any]]:
    """Run a server in a background thread for the ``with`` block; yield a ``Serving``.

    ``server_or_handler`` is a server (one ``make_server`` made, or an instance of
    any server class, bound already) or a handler class, for which
    ``make_server(address, handler, **make_server_options)`` makes one:

    - ``address`` None: a free port on 127.0.0.1, TCP, or UDP for a datagram handler;
    - ``"unix:"`` (no path): a Unix socket in a new temporary directory, stream
      or datagram as the handler is, removed at the end;
    - any other address ``make_server`` takes (``"[::1]:0"``, ``"udp://127.0.0.1:0"``, ...).

    An async handler (``servekit.aio``) is served with ``concurrency="async"``
    unless the options say otherwise.

    The server is listening before the block starts (clients wait in the
    backlog until the thread's loop takes them). At the end: ``shutdown()``,
    ``server_close()`` (requests in flight get the server's ``shutdown_timeout``)
    and the thread joined, all within ``stop_timeout`` seconds; past it the
    connections are cut, and if the server still does not stop,
    ``ServerDidNotStop`` is raised. When the block raised, requests in flight
    are cut at once (``shutdown_timeout`` is set to 0: the test failed, their
    answers no longer matter) and the block's exception is what propagates,
    with a note if the stop failed too. An exception that ended the server's
    loop (``serve_forever`` raised) is raised at the end.
    """
    return _serving(server_or_handler, address, poll_interval, stop_timeout, make_server_options)


@contextlib.contextmanager
def _serving(
    target: Any,
    address: str | None,
    poll_interval: float,
    stop_timeout: float,
    options: dict[str, Any],
) -> Iterator[Serving[Any]]:
    socket_dir: str | None = None
    if _is_servable(target):
        if address is not None or options:
            raise TypeError(
                "serving(server) runs a server made already: its address and options are "
                "its own (pass a handler class to have serving() make the server)"
            )
        server = target
    else:
        address, socket_dir = _address_for(target, address)
        if _is_async_handler(target) and "concurrency" not in options and "config" not in options:
            options["concurrency"] = "async"
        try:
            server = make_server(address, target, **options)
        except BaseException:
            if socket_dir is not None:
                shutil.rmtree(socket_dir, ignore_errors=True)
            raise
    running = Serving(server, address)
    crashed: list[BaseException] = []

    def serve() -> None:
        try:
            server.serve_forever(poll_interval)
        except BaseException as exc:  # raised in the test's thread at the end
            crashed.append(exc)

    thread = threading.Thread(target=serve, name=f"servekit.testing {running.address}", daemon=True)
    thread.start()
    try:
        yield running
    except BaseException as exc:
        problem = _stop(server, thread, stop_timeout, hurry=True)
        if problem is not None:
            exc.add_note(f"servekit.testing.serving: stopping the server failed too: {problem!r}")
        if crashed:
            exc.add_note(f"servekit.testing.serving: serve_forever raised {crashed[0]!r}")
        raise
    else:
        problem = _stop(server, thread, stop_timeout, hurry=False)
        if crashed:
            raise crashed[0]
        if problem is not None:
            raise problem
    finally:
        running._cleanup()
        if socket_dir is not None:
            shutil.rmtree(socket_dir, ignore_errors=True)


def _stop(
    server: Any, thread: threading.Thread, stop_timeout: float, *, hurry: bool
) -> BaseException | None:
    """Stop ``server`` and join its ``thread`` within ``stop_timeout``, then cut its
    connections if need be; what went wrong, or None."""
    if hurry:
        with contextlib.suppress(AttributeError):
            server.shutdown_timeout = 0
    failed: list[BaseException] = []

    def stop() -> None:
        try:
            server.shutdown()
            thread.join()
            server.server_close()
        except BaseException as exc:
            failed.append(exc)

    stopper = threading.Thread(target=stop, name="servekit.testing stop", daemon=True)
    stopper.start()
    stopper.join(stop_timeout)
    if stopper.is_alive():
        cut = getattr(server, "cut_requests", None)
        count = cut() if callable(cut) else 0
        stopper.join(_CUT_GRACE)
        if stopper.is_alive():
            return ServerDidNotStop(
                f"{server!r} did not stop within stop_timeout={stop_timeout}s, nor "
                f"{_CUT_GRACE}s after {count} connection(s) were cut: a handler is stuck"
            )
    return failed[0] if failed else None


def _is_servable(target: Any) -> bool:
    return not isinstance(target, type) and all(
        callable(getattr(target, name, None))
        for name in ("serve_forever", "shutdown", "server_close")
    )


def _is_socket_server(server: Any) -> bool:
    return isinstance(getattr(server, "socket", None), socket.socket)


def _is_async_handler(target: Any) -> bool:
    return isinstance(target, type) and issubclass(target, AsyncBaseRequestHandler)


def _is_datagram_handler(target: Any) -> bool:
    return isinstance(target, type) and issubclass(
        target, (DatagramRequestHandler, AsyncDatagramRequestHandler)
    )


def _address_for(target: Any, address: str | None) -> tuple[str, str | None]:
    """(the address to make the server on, the temporary directory made for it)."""
    datagram = _is_datagram_handler(target)
    if address is None:
        return ("udp://127.0.0.1:0" if datagram else "127.0.0.1:0"), None
    if address in ("unix", "unix:", "unix-dgram:"):
        scheme = "unix-dgram:" if datagram or address == "unix-dgram:" else "unix:"
        where = _socket_dir()
        return f"{scheme}{os.path.join(where, 'server.sock')}", where
    return address, None


def _socket_dir() -> str:
    """A new private directory short enough for a Unix socket path in it."""
    parent = tempfile.gettempdir()
    if len(parent) + 40 > _SUN_PATH_MAX and os.path.isdir("/tmp"):
        parent = "/tmp"
    return tempfile.mkdtemp(prefix="servekit-", dir=parent)
