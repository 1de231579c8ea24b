"""Per-connection limits for stream handlers: idle time, request read time, line length.

A slow or hostile client must cost a bounded amount. Three limits do it for a
stream connection, each named after the server attribute that sets it:

- ``idle_timeout``: no byte arrives (or none of ours is taken) for this long;
- ``read_timeout``: a request (a line, or a ``read(n)``) has started to arrive
  but is not complete this long after its first byte: this is what stops a
  client that sends one byte a second, which ``idle_timeout`` never would;
- ``max_line_length``: a line longer than this many bytes (newline included).

A trip raises a ``LimitExceeded`` (an ``OSError``, so handler code that
already catches socket errors ends the connection as it would for a reset),
is logged once with the client's address and counted in ``server.stats``.
"""

from __future__ import annotations

import io
import logging
import socket
import struct
import weakref
from time import monotonic
from typing import TYPE_CHECKING, Any

from servekit.errors import IdleTimeout, LimitExceeded, LineTooLong, ReadTimeout, WriteBufferFull

if TYPE_CHECKING:
    from collections.abc import Callable

    from _typeshed import ReadableBuffer, WriteableBuffer

__all__ = [
    "IdleSocket",
    "IdleTimeout",
    "LimitExceeded",
    "LineTooLong",
    "ReadTimeout",
    "ThrottledLog",
    "WriteBufferFull",
    "too_long_datagram",
]

logger = logging.getLogger(__name__)


_TIMEVAL = struct.Struct("@ll")  # struct timeval: seconds, microseconds


def kernel_timeouts(sock: socket.socket, seconds: float | None, *, send: bool = True) -> None:
    """Bound each wait of a blocking recv (and send) on ``sock`` to ``seconds``
    (None: no bound); a wait that runs out fails with EAGAIN (BlockingIOError).

    Why not settimeout(): a socket with a Python timeout polls before every
    recv and send, two system calls where one would do. SO_RCVTIMEO and
    SO_SNDTIMEO make the kernel keep the time.
    """
    if seconds is None:
        whole, micro = 0, 0
    else:
        whole = int(seconds)
        micro = max(int((seconds - whole) * 1_000_000), 0 if whole else 1)  # 0 is "forever"
    value = _TIMEVAL.pack(whole, micro)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
    if send:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)


def _bounded(name: str, waiting: str, *, keywords: bool = False) -> Any:
    """IdleSocket's ``name``: the C method, with a kernel timeout's EAGAIN raised as
    IdleTimeout. ``waiting`` says for what, in the log line. ``keywords``: the C
    method takes keyword arguments (recv_into's nbytes and flags); the others take
    none, and a **kwargs would cost each call a dict."""
    c_method = getattr(socket.socket, name)

    def method(self: IdleSocket, *args: Any) -> Any:
        try:
            return c_method(self, *args)
        except BlockingIOError:
            if self.timeout is not None:
                raise  # the handler's own non-blocking mode: EAGAIN is its to see
            raise self.idle_timed_out(waiting) from None

    def method_with_keywords(self: IdleSocket, *args: Any, **kwargs: Any) -> Any:
        try:
            return c_method(self, *args, **kwargs)
        except BlockingIOError:
            if self.timeout is not None:
                raise
            raise self.idle_timed_out(waiting) from None

    made = method_with_keywords if keywords else method
    made.__name__ = made.__qualname__ = name
    return made


class IdleSocket(socket.socket):
    """A stream connection whose ``idle_timeout`` the kernel keeps (kernel_timeouts).

    A handler that reads ``self.request`` itself gets the idle limit through
    this class, where Python's settimeout() would poll before every recv and
    send: two system calls, and two trips through the GIL, where one does.
    A wait that runs out raises IdleTimeout, a TimeoutError as settimeout()'s
    would be, logged and counted as every limit is. The socket ``accept()``
    returned is switched to this class in place, so the class can hold no
    state per connection: the server it reports to is a class attribute of
    the subclass ``for_server()`` makes once per server.
    """

    __slots__ = ()
    _server: Callable[[], Any] = staticmethod(lambda: None)

    @classmethod
    def for_server(cls, server: Any) -> type[IdleSocket]:
        # A weak reference: the class lives on the server, and must not keep it alive.
        namespace = {"__slots__": (), "_server": weakref.ref(server), "__module__": __name__}
        made: type[IdleSocket] = type(cls.__name__, (cls,), namespace)
        made.__qualname__ = cls.__qualname__
        return made

    def idle_timed_out(self, waiting: str) -> IdleTimeout:
        """Report a wait that ran out; return the IdleTimeout to raise."""
        server = self._server()
        try:
            client = self.getpeername()
        except OSError:
            client = "a client gone"
        error = IdleTimeout(f"{waiting} for {getattr(server, 'idle_timeout', None)}s")
        report(server, client, error, self)
        return error

    def sendfile(self, file: Any, offset: int = 0, count: int | None = None) -> int:
        """socket.sendfile() waits for room to write with Python's timeout, which
        a blocking socket lacks: for this call the socket takes idle_timeout as one."""
        if self.timeout is not None:
            return super().sendfile(file, offset, count)
        self.settimeout(getattr(self._server(), "idle_timeout", None))
        try:
            return super().sendfile(file, offset, count)
        except TimeoutError:
            raise self.idle_timed_out("did not take our data") from None
        finally:
            self.settimeout(None)

    recv = _bounded("recv", "idle")
    recv_into = _bounded("recv_into", "idle", keywords=True)
    recvfrom = _bounded("recvfrom", "idle")
    recvfrom_into = _bounded("recvfrom_into", "idle", keywords=True)
    recvmsg = _bounded("recvmsg", "idle")
    recvmsg_into = _bounded("recvmsg_into", "idle")
    send = _bounded("send", "did not take our data")
    sendall = _bounded("sendall", "did not take our data")
    sendto = _bounded("sendto", "did not take our data")
    sendmsg = _bounded("sendmsg", "did not take our data")


class ConnectionLimits:
    """The limits of one connection, and the socket timeout that enforces them.

    A plain socket is switched to blocking mode under kernel timeouts (see
    kernel_timeouts), because the files built on it (LimitedSocketIO) are the
    only readers and know what a kernel timeout raises. A TLS socket keeps
    Python's settimeout(): its records need it. Either is changed only when
    the value differs, because each change costs a system call.
    """

    __slots__ = (
        "_current", "client", "deadline", "idle", "kernel", "max_line", "read", "server",
        "sock", "timeouts",
    )  # fmt: skip

    def __init__(
        self,
        sock: socket.socket,
        *,
        idle: float | None,
        read: float | None,
        max_line: int | None,
        server: Any,
        client: Any,
    ) -> None:
        self.sock = sock
        self.idle = idle
        self.read = read
        self.max_line = max_line
        self.server = server
        self.client = client
        self.deadline: float | None = None
        # Exactly a socket, or one the server already put under kernel timeouts:
        # another subclass (ssl.SSLSocket above all) may not read through
        # recv_into() alone, so it keeps Python's timeouts.
        already = isinstance(sock, IdleSocket) and sock.timeout is None
        self.kernel = already or type(sock) is socket.socket
        # What a timed-out wait raises: EAGAIN from a kernel timeout, or TimeoutError.
        self.timeouts: tuple[type[OSError], ...] = (
            (TimeoutError, BlockingIOError) if self.kernel else (TimeoutError,)
        )
        if already and idle == getattr(server, "idle_timeout", None):
            self._current = idle  # as the server set it at accept(): no system call
        elif self.kernel:
            sock.settimeout(None)
            kernel_timeouts(sock, idle)  # for sends too; reads follow set_timeout()
            self._current = idle
        else:
            self._current = sock.gettimeout()

    def set_timeout(self, value: float | None) -> None:
        """The bound of the next waits for data."""
        if value != self._current:
            if self.kernel:
                kernel_timeouts(self.sock, value, send=False)
            else:
                self.sock.settimeout(value)
            self._current = value

    def arm_read(self, wait: float | None = None) -> bool:
        """Bound the next wait for data: ``wait`` seconds (idle_timeout when None),
        or less if the read deadline comes first. Returns True when the deadline is
        the bound, for timed_out(). Raises ReadTimeout (tripped) once it has passed."""
        timeout, by_deadline = self.idle if wait is None else wait, False
        if self.deadline is not None:
            remaining = self.deadline - monotonic()
            if remaining <= 0:
                raise self.timed_out(True)
            if timeout is None or remaining < timeout:
                timeout, by_deadline = remaining, True
        if timeout != self._current:  # set_timeout()'s test, saving a call per read
            self.set_timeout(timeout)
        return by_deadline

    def timed_out(self, by_deadline: bool) -> LimitExceeded:
        """A wait armed by arm_read() ran out: trip and return ReadTimeout if the
        deadline bounded it, else IdleTimeout."""
        if by_deadline:
            return self.trip(ReadTimeout(f"request not complete after {self.read}s"))
        return self.trip(IdleTimeout(f"idle for {self.idle}s"))

    def trip(self, error: LimitExceeded) -> LimitExceeded:
        """Log and count ``error``; return it for the caller to raise."""
        return report(self.server, self.client, error, self.sock)


def report(server: Any, client: Any, error: LimitExceeded, request: Any = None) -> LimitExceeded:
    """Log a tripped limit once (INFO for idleness, WARNING for the rest), count it in
    ``server.stats``, note it on ``request``'s line of the connection log (when on),
    and return it for the caller to raise."""
    counters = getattr(server, "_counters", None)
    if counters is not None:
        counters.limit(error.limit)
    access = getattr(server, "_access", None)
    if access is not None and request is not None:
        access.limit(request, error)
    level = logging.INFO if isinstance(error, IdleTimeout) else logging.WARNING
    logger.log(level, "%s: closing connection from %s: %s", server, client, error)
    return error


class ThrottledLog:
    """Log a repeated event at ``level`` at most once per ``interval`` seconds.

    A flood of bad datagrams must not become a flood of log lines: the first
    one is logged at ``level``, the rest within the interval at DEBUG (off by
    default, and cheap when off), and their count joins the next line logged
    at ``level``.
    """

    __slots__ = ("_interval", "_level", "_logger", "_next", "_skipped")

    def __init__(self, log: logging.Logger, level: int = logging.WARNING, interval: float = 10.0):
        self._logger = log
        self._level = level
        self._interval = interval
        self._next = 0.0
        self._skipped = 0

    def __call__(self, message: str, *args: object) -> None:
        now = monotonic()
        if now < self._next:
            self._skipped += 1
            self._logger.debug(message, *args)
            return
        if self._skipped:
            message += " (and %d more like it since the last such line)"
            args += (self._skipped,)
            self._skipped = 0
        self._next = now + self._interval
        self._logger.log(self._level, message, *args)

    def reset(self) -> None:
        """The event is over: its next occurrence is logged at ``level`` at once (with
        the count of those skipped before, if any)."""
        self._next = 0.0


def too_long_datagram(max_packet_size: int) -> str:
    """Why a datagram was dropped, for drop_datagram(), on every engine."""
    return f"longer than max_packet_size={max_packet_size}; raise max_packet_size to accept it"


def drop_datagram(server: Any, client: Any, limit: str, why: str) -> None:
    """Count a datagram dropped by the limit named ``limit``, and log it, throttled:
    each server logs at most one such line per limit every ten seconds."""
    counters = getattr(server, "_counters", None)
    if counters is not None:
        counters.limit(limit)
    access = getattr(server, "_access", None)
    if access is not None:
        access.dropped(client, limit)
    logs = server.__dict__.setdefault("_servekit_drop_logs", {})
    log = logs.get(limit)
    if log is None:
        log = logs[limit] = ThrottledLog(logger)
    log("%s: dropped a datagram from %r: %s", server, client, why)


class LimitedSocketIO(io.RawIOBase):
    """Raw reads and writes on a socket under ConnectionLimits."""

    def __init__(self, limits: ConnectionLimits) -> None:
        super().__init__()
        self._limits = limits
        self._sock = sock = limits.sock
        # Under kernel timeouts, the C methods themselves: an IdleSocket's own
        # would report a timeout these files report better (read or idle?).
        if limits.kernel:
            self._recv_into = socket.socket.recv_into.__get__(sock)
            self._sendall = socket.socket.sendall.__get__(sock)
        else:
            self._recv_into, self._sendall = sock.recv_into, sock.sendall

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._sock.fileno()

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        limits = self._limits
        by_deadline = limits.arm_read()
        try:
            received: int = self._recv_into(buffer)
        except limits.timeouts:
            raise limits.timed_out(by_deadline) from None
        return received

    def write(self, data: ReadableBuffer, /) -> int:
        """Send all of ``data``; idle_timeout bounds each wait, not the whole write,
        so a slow but steady reader is not cut off."""
        limits = self._limits
        if limits.kernel:
            # SO_SNDTIMEO (idle_timeout, whatever the read deadline) bounds each
            # send() within sendall(), not the whole of it.
            try:
                self._sendall(data)
            except BlockingIOError:
                raise limits.trip(
                    IdleTimeout(f"did not take our data for {limits.idle}s")
                ) from None
            with memoryview(data) as view:
                return view.nbytes
        limits.set_timeout(limits.idle)
        with memoryview(data) as view, view.cast("B") as rest:
            total, sent = len(rest), 0
            while sent < total:
                try:
                    sent += self._sock.send(rest[sent:])
                except TimeoutError:
                    raise limits.trip(
                        IdleTimeout(f"did not take our data for {limits.idle}s")
                    ) from None
        return total


_readline = io.BufferedReader.readline  # the C methods: super() costs a lookup per line
_read = io.BufferedReader.read


class LimitedReader(io.BufferedReader):
    """A buffered reader whose readline() and read(n) obey read_timeout and max_line_length."""

    def __init__(self, raw: LimitedSocketIO, limits: ConnectionLimits, buffer_size: int) -> None:
        super().__init__(raw, buffer_size)
        self._limits = limits

    # readline() and read() wait (idle_timeout) for a first byte, then start the
    # read_timeout clock. It is written out in each, not called: a line echo
    # costs a few microseconds, and each call of Python code a tenth of one.

    def readline(self, size: int | None = -1, /) -> bytes:
        limits = self._limits
        limits.deadline = None
        if size == 0 or not self.peek(1):
            return b""
        if limits.read is not None:
            limits.deadline = monotonic() + limits.read
        limit = limits.max_line
        try:
            if limit is None or (size is not None and 0 <= size <= limit):
                return _readline(self, size)
            line = _readline(self, limit + 1)
        finally:
            limits.deadline = None
        if len(line) > limit:
            raise limits.trip(LineTooLong(f"line longer than {limit} bytes"))
        return line

    def read(self, size: int | None = -1, /) -> bytes:
        limits = self._limits
        limits.deadline = None
        if size == 0 or not self.peek(1):
            return b""
        if limits.read is not None:
            limits.deadline = monotonic() + limits.read
        try:
            return _read(self, size)
        finally:
            limits.deadline = None
