"""Request handlers: one instance per request, built by the server.

Subclass one of these and override ``handle()``. The stream and datagram
handlers give the same ``rfile``/``wfile`` interface, so one handler class can
serve both kinds of socket.
"""

from __future__ import annotations

import io
import socket
from io import BufferedIOBase, BytesIO
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from servekit import _handoff, _oob
from servekit.limits import ConnectionLimits, LimitedReader, LimitedSocketIO

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

    from servekit.core import BaseServer

__all__ = ["BaseRequestHandler", "DatagramRequestHandler", "StreamRequestHandler"]


class BaseRequestHandler:
    """Base class for request handler classes.

    This class is instantiated for each request to be handled.  The
    constructor sets the instance variables request, client_address
    and server, and then calls the handle() method.  To implement a
    specific service, all you need to do is to derive a class which
    defines a handle() method.

    The handle() method can find the request as self.request, the
    client address as self.client_address, and the server (in case it
    needs access to per-server information) as self.server.  Since a
    separate instance is created for each request, the handle() method
    can define other arbitrary instance variables.

    Methods that may be overridden: setup(), handle(), finish(). finish()
    runs even when handle() raises.
    """

    def __init__(self, request: Any, client_address: Any, server: BaseServer) -> None:
        self.request = request
        self.client_address = client_address
        self.server = server
        self.setup()
        try:
            self.handle()
        except BaseException as exc:
            if self._forked_child:  # never back into the server's loop: see fork()
                _handoff.end_forked_child(self, exc)
            raise
        finally:
            if self._forked_child:
                _handoff.end_forked_child(self, None)
            self.finish()

    #: True in the child fork() made: the end of handle() ends the process.
    _forked_child = False

    def fork(self) -> int:
        """Finish this request in a child process, as ``os.fork()`` tells: the
        child's pid in the parent, 0 in the child (docs/handoff.md).

        The child serves the rest of the connection and exits when handle()
        returns (after finish(), and handle_error() if it raised); the parent's
        handle() should return at once, its copy of the connection closed. The
        child counts against ``max_children``, is reaped, and a stop waits for it.
        Under ForkingMixIn the request runs in a child already: 0, no new process.
        """
        return _handoff.fork(self)

    def setup(self) -> None:
        """Prepare for handle(). Called before it."""

    def handle(self) -> None:
        """Serve the request. Override this."""

    def finish(self) -> None:
        """Clean up after handle(). Called even if it raised."""


# The following two classes make it possible to use the same service
# class for stream or datagram servers.
# Each class sets up these instance variables:
# - rfile: a file object from which receives the request is read
# - wfile: a file object to which the reply is written
# When the handle() method returns, wfile is flushed properly


class StreamRequestHandler(BaseRequestHandler):
    """Define self.rfile and self.wfile for stream sockets.

    Class variables that may be overridden:

    - rbufsize: buffer size of rfile (-1: the default buffer size)
    - wbufsize: buffer size of wfile (0: unbuffered, every write is sent)
    - timeout: a timeout applied to the connection, if not None
    - disable_nagle_algorithm: set TCP_NODELAY (useful when wbufsize != 0)

    Define ``handle_oob(self, data: bytes)`` to be called with each byte of TCP
    urgent data (MSG_OOB) as it arrives, on servekit's watcher thread, even while
    handle() is busy; keep it quick (set a flag or an event). See docs/oob.md.

    On a server with ``idle_timeout``, ``read_timeout`` or ``max_line_length``
    set (make_server sets all three), rfile and wfile enforce them: see
    ``servekit.limits``. ``timeout``, when set, replaces ``idle_timeout``.
    """

    # We default rfile to buffered because otherwise it could be really slow
    # for large data (a recv() per byte); wfile is unbuffered because after a
    # write() we often want to read, and the reply must have left by then.
    rbufsize = -1
    wbufsize = 0

    # A timeout to apply to the request socket, if not None.
    timeout: float | None = None

    # Disable nagle algorithm for this socket, if True.
    # Use only when wbufsize != 0, to avoid small packets.
    disable_nagle_algorithm = False

    connection: socket.socket
    rfile: BinaryIO
    wfile: BinaryIO
    #: The connection's limits (servekit.limits.ConnectionLimits) on a server that
    #: sets them, else None: a handler that frames requests itself (an RPC record)
    #: sets ``connection_limits.deadline`` when one begins, for read_timeout.
    connection_limits: ConnectionLimits | None = None

    def setup(self) -> None:
        self.connection = self.request
        oob = _oob.wants_oob(self)
        if oob:  # before the files: their reads must take urgent data first
            _oob.prepare_reads(self, self.connection)
        if self.disable_nagle_algorithm:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        limits = self._connection_limits()
        if limits is not None:
            self._setup_limited(limits)
        else:
            if self.timeout is not None:
                self.connection.settimeout(self.timeout)
            self.rfile = cast("BinaryIO", self.connection.makefile("rb", self.rbufsize))
            if self.wbufsize == 0:
                self.wfile = cast("BinaryIO", _SocketWriter(self.connection))
            else:
                self.wfile = cast("BinaryIO", self.connection.makefile("wb", self.wbufsize))
        if oob:  # once the files are there: handle_oob may use them
            _oob.watch(self, self.connection, None)

    def _connection_limits(self) -> ConnectionLimits | None:
        """The server's stream limits (servekit servers), or None: the stdlib's files."""
        server = self.server
        idle = getattr(server, "idle_timeout", None)
        read = getattr(server, "read_timeout", None)
        max_line = getattr(server, "max_line_length", None)
        if idle is None and read is None and max_line is None:
            return None
        if self.timeout is not None:  # the handler's own timeout wins, as in the stdlib
            idle = self.timeout
        return ConnectionLimits(
            self.connection, idle=idle, read=read, max_line=max_line,
            server=server, client=self.client_address,
        )  # fmt: skip

    def _setup_limited(self, limits: ConnectionLimits) -> None:
        self.connection_limits = limits
        raw = LimitedSocketIO(limits)
        size = io.DEFAULT_BUFFER_SIZE if self.rbufsize in (-1, 0) else self.rbufsize
        self.rfile = cast("BinaryIO", LimitedReader(raw, limits, size))
        if self.wbufsize == 0:
            self.wfile = cast("BinaryIO", raw)
        else:
            size = io.DEFAULT_BUFFER_SIZE if self.wbufsize < 0 else self.wbufsize
            self.wfile = cast("BinaryIO", io.BufferedWriter(raw, size))

    def finish(self) -> None:
        _oob.unwatch(self)
        if not self.wfile.closed:
            try:
                self.wfile.flush()
            except OSError:
                # A final socket error may have occurred here, such as
                # the local error ECONNABORTED.
                pass
        self.wfile.close()
        self.rfile.close()


class _SocketWriter(BufferedIOBase):
    """A writable file over a socket that sends each write at once.

    It holds no buffer, so nothing needs flushing.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def writable(self) -> bool:
        return True

    def write(self, b: ReadableBuffer, /) -> int:
        self._sock.sendall(b)
        with memoryview(b) as view:
            return view.nbytes

    def fileno(self) -> int:
        return self._sock.fileno()


class DatagramRequestHandler(BaseRequestHandler):
    """Define self.rfile and self.wfile for datagram sockets.

    The whole datagram is in ``self.packet`` and readable from ``rfile``; what
    is written to ``wfile`` is sent back as one datagram by finish().
    """

    packet: bytes
    socket: socket.socket
    rfile: BytesIO
    wfile: BytesIO

    def setup(self) -> None:
        self.packet, self.socket = self.request
        self.rfile = BytesIO(self.packet)
        self.wfile = BytesIO()

    def finish(self) -> None:
        sent = self.socket.sendto(self.wfile.getvalue(), self.client_address)
        self.server._counters.sent(sent)
        if self.server._access is not None:  # the connection log's bytes out
            self.server._access.sent(self.request, sent)
