"""Async request handlers: one instance per connection, its methods coroutines.

Override ``handle()`` (and ``setup()``/``finish()`` if needed), as with the
sync handlers. ``AsyncStreamRequestHandler`` reads and writes with the names
asyncio's streams use (``read``, ``readline``, ``readexactly``, ``readuntil``,
``write``, ``drain``, ``async for line in self``), under the server's limits:

- ``idle_timeout``: no byte arrives, or none of ours is taken, for this long;
- ``read_timeout``: a line (or a ``readexactly``/``readuntil``) has begun to
  arrive and is not complete this long after its first byte;
- ``max_line_length``: a line or ``readuntil`` longer than this;
- ``max_write_buffer``: bytes written but not yet sent. ``write()`` past it
  raises: a handler that writes without ``await drain()`` to a client that
  does not read would otherwise grow the server's memory without bound.

A tripped limit raises a ``servekit.LimitExceeded``; it is logged and counted
once, and the connection is closed.
"""

from __future__ import annotations

import asyncio
import contextvars
from io import BytesIO
from typing import TYPE_CHECKING, Any, NoReturn, ParamSpec, TypeVar

from servekit._oob import unwatch, wants_oob, watch
from servekit.aio.stream import Stream
from servekit.limits import (
    IdleTimeout,
    LimitExceeded,
    LineTooLong,
    ReadTimeout,
    WriteBufferFull,
    report,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from servekit.aio.server import AsyncServerMixIn

__all__ = ["AsyncBaseRequestHandler", "AsyncDatagramRequestHandler", "AsyncStreamRequestHandler"]

_P = ParamSpec("_P")
_T = TypeVar("_T")

#: The write buffer size past which asyncio's and uvloop's transports pause
#: writing, unless set_write_buffer_limits() changed it.
_HIGH_WATER = 64 * 1024


class AsyncBaseRequestHandler:
    """Base class of async handlers. The server builds one per request and awaits run()."""

    def __init__(self, request: Any, client_address: Any, server: AsyncServerMixIn) -> None:
        self.request = request
        self.client_address = client_address
        self.server = server

    async def run(self) -> None:
        """setup(), handle(), and finish() even if handle() raised."""
        await self.setup()
        try:
            await self.handle()
        finally:
            await self.finish()

    async def setup(self) -> None:
        """Prepare for handle()."""

    async def handle(self) -> None:
        """Serve the request. Override this."""

    async def finish(self) -> None:
        """Clean up after handle(); runs even if it raised."""

    async def to_thread(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """``fn(*args, **kwargs)`` on a thread of the server's, its result or its
        exception here (docs/handoff.md): for slow or blocking work, which would
        stall every connection on the loop. At most ``max_handler_threads`` run
        at once, more wait their turn; a stop waits for them within
        ``shutdown_timeout``. Outside an async server: ``asyncio.to_thread``."""
        context = contextvars.copy_context()  # as asyncio.to_thread: the caller's context
        run = getattr(self.server, "_to_thread", None)
        if run is None:
            return await asyncio.to_thread(fn, *args, **kwargs)
        result: _T = await run(context.run, (fn, *args), kwargs)
        return result

    def fork(self) -> NoReturn:
        """Refused: see to_thread()."""
        raise TypeError(
            f"{type(self).__name__}.fork(): an async handler cannot fork (the child would "
            "inherit the server's event loop and every connection on it); finish slow or "
            "blocking work with `await self.to_thread(fn, *args)` instead"
        )


class AsyncStreamRequestHandler(AsyncBaseRequestHandler):
    """A stream connection, read and written with asyncio's stream method names.

    ``self.request`` is the connection's ``Stream``; ``self.transport`` its
    asyncio transport (``get_extra_info("peercert")`` and the like);
    ``close()`` closes it.

    Define ``handle_oob(self, data: bytes)`` (``def`` or ``async def``) to be called
    on the loop with each byte of TCP urgent data (MSG_OOB) as it arrives, even
    while handle() is busy; ``async def`` ones run one after another. See docs/oob.md.
    """

    #: Bytes written and not yet sent that write() accepts before it raises.
    max_write_buffer = 4 * 1024 * 1024

    transport: Any
    _stream: Stream

    def _attach(self, stream: Stream) -> None:
        """Serve the connection ``stream`` is the protocol of."""
        self._stream = stream
        self.transport = stream.transport
        stream.expired = self._expired

    async def setup(self) -> None:
        server = self.server
        self._idle: float | None = getattr(server, "idle_timeout", None)
        self._read: float | None = getattr(server, "read_timeout", None)
        self._max_line: int | None = getattr(server, "max_line_length", None)
        request = self.request
        if isinstance(request, Stream):  # an async server's connection
            self._attach(request)
        else:  # a socket, from elsewhere: open its stream here
            loop = asyncio.get_running_loop()
            stream = Stream(loop, self._idle, sock=request)
            await loop.connect_accepted_socket(lambda: stream, request)
            self._attach(stream)
        self._buffer = self._stream.buffer
        if wants_oob(self):
            watch(self, self._stream.sock, self._stream.loop)

    async def finish(self) -> None:
        unwatch(self)  # before the transport closes the socket
        transport = self.transport
        if not transport.is_closing():
            try:
                await self._stream.drain()  # within idle_timeout, by the stream's watchdog
            except OSError:
                pass  # the client is gone or not reading: close regardless
            transport.close()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """The transport's ``get_extra_info``: "peername", "peercert", "ssl_object", ..."""
        return self.transport.get_extra_info(name, default)

    def close(self) -> None:
        """Close the connection (what was written is still sent)."""
        self.transport.close()

    # -- reading --------------------------------------------------------------

    async def _fill(self, deadline: float | None) -> bool:
        """Wait for more bytes in the buffer; False at EOF. Idle and read timeouts apply."""
        stream = self._stream
        stream.deadline = deadline
        if stream.eof:
            return False
        size = len(self._buffer)
        await stream.wait_for_data()
        return len(self._buffer) > size or not stream.eof

    def _deadline(self) -> float | None:
        """The read_timeout clock starts with the first byte of a request."""
        return None if self._read is None else self._stream.loop.time() + self._read

    def _expired(self, kind: str) -> LimitExceeded:
        if kind == "read":
            return self._trip(ReadTimeout(f"request not complete after {self._read}s"))
        if kind == "drain":
            return self._trip(IdleTimeout(f"did not take our data for {self._idle}s"))
        return self._trip(IdleTimeout(f"idle for {self._idle}s"))

    async def _read_until(self, separator: bytes, limit: int | None) -> bytes:
        buffer = self._buffer
        deadline = self._deadline() if buffer else None
        start = 0
        while True:
            end = buffer.find(separator, start)
            if end >= 0:
                end += len(separator)
                if limit is not None and end > limit:
                    break
                return self._stream.take(end)
            if limit is not None and len(buffer) > limit:
                break
            start = max(0, len(buffer) - len(separator) + 1)
            if not await self._fill(deadline):
                return self._stream.take(-1)
            if deadline is None:
                deadline = self._deadline()
        raise self._trip(LineTooLong(f"line longer than {limit} bytes"))

    async def readline(self) -> bytes:
        """A line, newline included; what is left at EOF; b"" at EOF."""
        return await self._read_until(b"\n", self._max_line)

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        """Bytes up to and including ``separator``; raises IncompleteReadError at EOF."""
        data = await self._read_until(separator, self._max_line)
        if not data.endswith(separator):
            raise asyncio.IncompleteReadError(data, None)
        return data

    async def readexactly(self, n: int) -> bytes:
        """Exactly ``n`` bytes; raises IncompleteReadError at EOF."""
        buffer = self._buffer
        deadline = self._deadline() if buffer else None
        while len(buffer) < n:
            if not await self._fill(deadline):
                raise asyncio.IncompleteReadError(self._stream.take(-1), n)
            if deadline is None:
                deadline = self._deadline()
        return self._stream.take(n)

    def read(self, n: int = -1) -> Awaitable[bytes]:
        """``await`` it: up to ``n`` bytes as soon as some are there (-1: everything
        until EOF). An awaitable, as drain() is, and not a coroutine: the read of every
        request-response exchange then holds no frame of its own while it waits."""
        if n < 0:
            return self._read_to_eof()
        stream = self._stream
        if self._buffer or n == 0 or stream.eof:
            done = stream.loop.create_future()
            done.set_result(stream.take(n))
            return done
        stream.deadline = None
        return stream.read_some(n)

    def read_deadline(self) -> float | None:
        """When a request that begins now must be complete (``read_timeout`` from now,
        in loop time), for ``read_within()``; None without a read_timeout."""
        return self._deadline()

    async def read_within(self, n: int, deadline: float | None) -> bytes:
        """Up to ``n`` bytes as soon as some are there (b"" at EOF), for a handler that
        frames requests itself: a wait past ``deadline`` (from ``read_deadline()``,
        taken when the request's first byte came) fails with ReadTimeout."""
        if not self._buffer and not await self._fill(deadline):
            return b""
        return self._stream.take(n)

    async def _read_to_eof(self) -> bytes:
        while await self._fill(None):
            pass
        return self._stream.take(-1)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        line = await self.readline()
        if not line:
            raise StopAsyncIteration
        return line

    # -- writing --------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue ``data``; ``await drain()`` to let it out. Raises LimitExceeded
        rather than buffer more than ``max_write_buffer`` for a client that does not read."""
        transport = self.transport
        # Until the transport pauses us its buffer is under its high-water mark,
        # so the sum need only be worked out when paused, or for a large write.
        limit = self.max_write_buffer
        if (self._stream.paused or len(data) + _HIGH_WATER > limit) and (
            transport.get_write_buffer_size() + len(data) > limit
        ):
            raise self._trip(
                WriteBufferFull(
                    f"more than max_write_buffer={limit} bytes waiting to be sent: "
                    "the client does not read (await drain() after writing)"
                )
            )
        transport.write(data)

    def drain(self) -> Awaitable[None]:
        """``await`` it: until the client has taken enough of what was written
        (idle_timeout bounds the wait). Done at once while the client keeps up."""
        return self._stream.drain()

    def _trip(self, error: LimitExceeded) -> LimitExceeded:
        return report(self.server, self.client_address, error, self.request)

    # -- requests answered while the next is read -------------------------------

    def work_started(self) -> None:
        """A request of this connection is being answered while handle() reads the
        next (a task of its own): until as many work_finished() calls, a wait for the
        client's next bytes is not idleness, and idle_timeout does not cut it."""
        self._stream.busy += 1

    def work_finished(self) -> None:
        """A request announced by work_started() is answered: idleness counts from now
        once none is left."""
        stream = self._stream
        stream.busy -= 1
        if not stream.busy:
            stream.since = stream.loop.time()


class AsyncDatagramRequestHandler(AsyncBaseRequestHandler):
    """One datagram: in ``self.packet`` and ``self.rfile``; what handle() writes to
    ``self.wfile`` goes back as one datagram (nothing is sent if it stays empty).
    ``self.send(data)`` sends a datagram to the client at once."""

    packet: bytes
    _rfile: BytesIO | None = None
    _wfile: BytesIO | None = None

    async def setup(self) -> None:
        self.packet, self._transport = self.request

    # rfile and wfile are made when first used: a handler that answers with
    # send(), or reads self.packet, saves two BytesIO for every datagram.

    @property
    def rfile(self) -> BytesIO:
        if self._rfile is None:
            self._rfile = BytesIO(self.packet)
        return self._rfile

    @property
    def wfile(self) -> BytesIO:
        if self._wfile is None:
            self._wfile = BytesIO()
        return self._wfile

    def send(self, data: bytes) -> None:
        self._transport.sendto(data, self.client_address)
        self.server._counters.sent(len(data))
        if self.server._access is not None:  # the connection log's bytes out
            self.server._access.sent(self.request, len(data))

    async def finish(self) -> None:
        if self._wfile is not None:
            reply = self._wfile.getvalue()
            if reply:
                self.send(reply)
