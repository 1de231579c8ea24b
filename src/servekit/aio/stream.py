"""One connection's bytes, for the one task that serves it, and its timeouts.

asyncio's StreamReader and StreamWriter would do, but they cost a future, a
timer and several calls per read, and as many per drain: several times what
the echo itself costs. ``Stream`` is the protocol the transport calls; it
keeps what arrived in a bytearray, wakes the serving task when it waits, and
enforces the connection's timeouts with one watchdog timer per loop rather
than a timer per read (or per connection).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Awaitable, Generator

__all__ = ["READ_HIGH_WATER", "WATCH_INTERVAL", "Stream", "Watchdog"]

#: Bytes received and not yet read by the handler past which the stream stops
#: reading from the socket until the handler asks for more.
READ_HIGH_WATER = 256 * 1024

#: How often, at most, the watchdog looks for waits that have gone on too long:
#: a timeout fires up to this late, or an eighth of the shortest timeout on the
#: loop, if that is less.
WATCH_INTERVAL = 1.0
_SHORTEST_INTERVAL = 0.01


class _Ready:
    """Awaitable, and done at once: what drain() gives when there is nothing to wait for."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield  # a generator that stops at once


_READY = _Ready()


class Watchdog:
    """The timeouts of every stream on one loop, kept by one timer.

    A timer per connection cost 600 of the 4,900 bytes a held connection took
    (tracemalloc, 2,000 idle connections on uvloop); one sweep an interval over
    the streams that have a timeout costs a fraction of a microsecond each.
    """

    __slots__ = ("_interval", "_shortest", "_timer", "loop", "streams")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.streams: set[Stream] = set()
        self._shortest = float("inf")  # the shortest timeout watched so far
        self._interval = WATCH_INTERVAL
        self._timer: asyncio.TimerHandle | None = None

    def watch(self, stream: Stream, timeout: float) -> None:
        """Look at ``stream`` each interval, which ``timeout`` may shorten."""
        self.streams.add(stream)
        if timeout < self._shortest:
            self._shortest = timeout
            interval = min(WATCH_INTERVAL, max(_SHORTEST_INTERVAL, timeout / 8))
            if interval < self._interval and self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._interval = min(self._interval, interval)
        if self._timer is None:
            self._timer = self.loop.call_later(self._interval, self._sweep)

    def forget(self, stream: Stream) -> None:
        self.streams.discard(stream)

    def _sweep(self) -> None:
        now = self.loop.time()
        for stream in tuple(self.streams):  # a failed wait's callbacks run later, not here
            stream.watch(now)
        self._timer = self.loop.call_later(self._interval, self._sweep) if self.streams else None


class Stream(asyncio.Protocol):
    """The protocol under an ``AsyncStreamRequestHandler``.

    ``idle`` bounds each wait for data or for the client to take ours; a
    ``deadline`` (loop time) set by the reader bounds a request that has begun
    to arrive. A wait past either fails with what ``expired(kind)`` returns,
    kind being "idle" (no data came), "drain" (ours was not taken) or "read".
    The ``watchdog`` (the server's, shared by its connections) looks for them.

    On an async server it is also the connection as the hooks see it (the
    ``request`` of verify_request(), finish_request(), shutdown_request() and
    of the handler): ``transport``, ``get_extra_info()``.
    """

    __slots__ = (
        "_closed", "_drain_waiter", "_eof_ok", "_lost", "_read_waiter", "_reading_paused",
        "_want", "_watchdog", "_watched_deadline", "buffer", "busy",
        "deadline", "eof", "expired", "idle", "loop", "paused", "since", "sock", "transport",
    )  # fmt: skip

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        idle: float | None,
        watchdog: Watchdog | None = None,
        sock: Any = None,
    ) -> None:
        self.loop = loop
        #: The accepted socket, which the transport owns: the server forgets it
        #: (reading its TCP counters) before closing the transport.
        self.sock = sock
        self.idle = idle
        self.buffer = bytearray()
        self.eof = False
        self.transport: Any = None  # uvloop's transports are not asyncio.Transport subclasses
        self.paused = False
        self.deadline: float | None = None
        self.busy = 0  # requests of the connection being answered: a read wait is not idle
        self.since = loop.time()  # when data last came, or a wait began
        self.expired: Any = None  # (kind: "idle" | "read") -> exception; set by the handler
        self._read_waiter: asyncio.Future[Any] | None = None
        self._want = 0  # what the waiting read takes when bytes come (0: none, it only waits)
        self._drain_waiter: asyncio.Future[None] | None = None
        self._watchdog = watchdog if watchdog is not None else Watchdog(loop)
        self._lost = False
        self._closed: asyncio.Future[None] | None = None  # made when someone waits for it
        self._eof_ok = True
        self._reading_paused = False
        self._watched_deadline: float | None = None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """The transport's ``get_extra_info``: "peername", "peercert", "ssl_object", ..."""
        return self.transport.get_extra_info(name, default)

    # -- called by the transport ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        # Under TLS a half-closed connection cannot go on writing: close at EOF.
        self._eof_ok = transport.get_extra_info("ssl_object") is None
        if self.idle is not None:
            self._watchdog.watch(self, self.idle)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self.since = self.loop.time()
        if len(self.buffer) > READ_HIGH_WATER and not self._reading_paused:
            # The handler is not reading: let the kernel's buffers, and then the
            # client, wait, rather than this one grow.
            self.transport.pause_reading()
            self._reading_paused = True
        waiter = self._read_waiter  # _wake_reader(), inlined on the path of every request
        if waiter is not None:
            self._read_waiter = None
            if not waiter.done():
                waiter.set_result(self.take(self._want) if self._want else None)

    def eof_received(self) -> bool:
        self.eof = True
        self._wake_reader()
        return self._eof_ok

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self._wake_reader()
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionResetError("connection lost while sending"))
        self._drain_waiter = None
        self._watchdog.forget(self)
        self._lost = True
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.since = self.loop.time()
        waiter = self._drain_waiter
        if waiter is not None:
            self._drain_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # -- called by the serving task ------------------------------------------------------

    def wait_for_data(self) -> asyncio.Future[None]:
        """A future done at more bytes or EOF, failed at a timeout (with what
        ``expired`` makes). A plain future, not a coroutine: one less frame per read."""
        self._want = 0
        return self._wait()

    def read_some(self, n: int) -> asyncio.Future[bytes]:
        """A future of up to ``n`` bytes, taken as soon as any come (b"" at EOF);
        failed at a timeout as wait_for_data()'s is. For a read that found none buffered."""
        self._want = n
        return self._wait()

    def take(self, n: int) -> bytes:
        """Up to ``n`` of the bytes buffered (all of them if ``n`` is negative)."""
        buffer = self.buffer
        if 0 <= n < len(buffer):
            data = bytes(buffer[:n])
            del buffer[:n]
        else:
            data = bytes(buffer)
            buffer.clear()
        return data

    def _wait(self) -> asyncio.Future[Any]:
        if self._reading_paused:
            self._reading_paused = False
            self.transport.resume_reading()
        waiter = self.loop.create_future()
        self._read_waiter = waiter
        self.since = now = self.loop.time()
        deadline = self.deadline
        if deadline is not None and deadline != self._watched_deadline:
            # The watchdog has us if idle is on; a deadline too, and its span may
            # shorten the sweep interval. Told once per deadline, at its first
            # wait: a later wait's time left would shorten it for good.
            self._watched_deadline = deadline
            self._watchdog.watch(self, deadline - now)
        return waiter

    def drain(self) -> Awaitable[None]:
        """Awaitable until the transport takes writes again: at once unless the client lags."""
        if not self.paused:
            if self.eof and self.transport.is_closing():
                raise ConnectionResetError("connection lost")
            return _READY
        if self._lost:  # lost while paused: nothing would ever resume us
            raise ConnectionResetError("connection lost")
        waiter = self.loop.create_future()
        self._drain_waiter = waiter
        self.since = self.loop.time()
        return waiter

    async def closed(self) -> None:
        """Until the transport has let go of the connection."""
        if self._lost:
            return
        if self._closed is None:
            self._closed = self.loop.create_future()
        await self._closed

    # -- the watchdog ---------------------------------------------------------------------

    def watch(self, now: float) -> None:
        """Fail a wait that has gone on too long (the watchdog calls this)."""
        read, drain = self._read_waiter, self._drain_waiter
        if read is not None and read.done():  # cancelled: the handler stopped waiting
            self._read_waiter = read = None
        if drain is not None and drain.done():
            self._drain_waiter = drain = None
        waiting = read or drain
        if waiting is None:
            return
        if self.deadline is not None and waiting is read and now >= self.deadline:
            self._fail("read")
        elif self.idle is not None and now - self.since >= self.idle:
            if self.busy and waiting is read:
                return  # answering: waiting for the next request is not idleness
            self._fail("idle" if waiting is read else "drain")

    def _fail(self, kind: str) -> None:
        error = self.expired(kind)
        for waiter in (self._read_waiter, self._drain_waiter):
            if waiter is not None and not waiter.done():
                waiter.set_exception(error)
        self._read_waiter = self._drain_waiter = None

    def _wake_reader(self) -> None:
        """Bytes came, or the end: the waiting read takes what it asked for."""
        waiter = self._read_waiter
        if waiter is not None:
            self._read_waiter = None
            if not waiter.done():
                waiter.set_result(self.take(self._want) if self._want else None)
