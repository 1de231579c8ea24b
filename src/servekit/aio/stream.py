"""One connection's bytes, for the one task that serves it, and its timeouts.

asyncio's StreamReader and StreamWriter would do, but they cost a future, a
timer and several calls per read, and as many per drain: several times what
the echo itself costs. ``Stream`` is the protocol the transport calls; it
keeps what arrived in a bytearray, wakes the serving task when it waits, and
enforces the connection's timeouts with one watchdog timer per connection
rather than a timer per read.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Awaitable, Generator

__all__ = ["READ_HIGH_WATER", "Stream"]

#: Bytes received and not yet read by the handler past which the stream stops
#: reading from the socket until the handler asks for more.
READ_HIGH_WATER = 256 * 1024


class _Ready:
    """Awaitable, and done at once: what drain() gives when there is nothing to wait for."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield  # a generator that stops at once


_READY = _Ready()


class Stream(asyncio.Protocol):
    """The protocol under an ``AsyncStreamRequestHandler``.

    ``idle`` bounds each wait for data or for the client to take ours; a
    ``deadline`` (loop time) set by the reader bounds a request that has begun
    to arrive. A wait past either fails with what ``expired(kind)`` returns,
    kind being "idle" (no data came), "drain" (ours was not taken) or "read".
    """

    __slots__ = (
        "_closed", "_drain_waiter", "_due", "_eof_ok", "_read_waiter", "_reading_paused",
        "_timer", "buffer",
        "deadline", "eof", "expired", "idle", "loop", "paused", "since", "transport",
    )  # fmt: skip

    def __init__(self, loop: asyncio.AbstractEventLoop, idle: float | None) -> None:
        self.loop = loop
        self.idle = idle
        self.buffer = bytearray()
        self.eof = False
        self.transport: Any = None  # uvloop's transports are not asyncio.Transport subclasses
        self.paused = False
        self.deadline: float | None = None
        self.since = loop.time()  # when data last came, or a wait began
        self.expired: Any = None  # (kind: "idle" | "read") -> exception; set by the handler
        self._read_waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._due = 0.0
        self._closed = loop.create_future()
        self._eof_ok = True
        self._reading_paused = False

    # -- called by the transport ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        # Under TLS a half-closed connection cannot go on writing: close at EOF.
        self._eof_ok = transport.get_extra_info("ssl_object") is None
        if self.idle is not None:
            self._arm(self.loop.time() + self.idle)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self.since = self.loop.time()
        if len(self.buffer) > READ_HIGH_WATER and not self._reading_paused:
            # The handler is not reading: let the kernel's buffers, and then the
            # client, wait, rather than this one grow.
            self.transport.pause_reading()
            self._reading_paused = True
        waiter = self._read_waiter
        if waiter is not None:
            self._read_waiter = None
            if not waiter.done():
                waiter.set_result(None)

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
        if self._timer is not None:
            self._timer.cancel()
        if not self._closed.done():
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
        if self._reading_paused:
            self._reading_paused = False
            self.transport.resume_reading()
        waiter = self.loop.create_future()
        self._read_waiter = waiter
        self.since = self.loop.time()
        # The watchdog runs while idle_timeout is on; a read deadline arms it too.
        if self.deadline is not None and (self._timer is None or self.deadline < self._due):
            self._arm(self.deadline)
        return waiter

    def drain(self) -> Awaitable[None]:
        """Awaitable until the transport takes writes again: at once unless the client lags."""
        if not self.paused:
            if self.eof and self.transport.is_closing():
                raise ConnectionResetError("connection lost")
            return _READY
        if self._closed.done():  # lost while paused: nothing would ever resume us
            raise ConnectionResetError("connection lost")
        waiter = self.loop.create_future()
        self._drain_waiter = waiter
        self.since = self.loop.time()
        return waiter

    async def closed(self) -> None:
        """Until the transport has let go of the connection."""
        await self._closed

    # -- the watchdog ---------------------------------------------------------------------

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._due = when
        self._timer = self.loop.call_at(when, self._watch)

    def _watch(self) -> None:
        """Fail a wait that has gone on too long; otherwise look again when one could."""
        self._timer = None
        now = self.loop.time()
        due = now + (self.idle if self.idle is not None else 3600.0)
        if self._read_waiter is not None and self.deadline is not None:
            if now >= self.deadline:
                self._fail("read")
                return
            due = min(due, self.deadline)
        waiting = self._read_waiter or self._drain_waiter
        if self.idle is not None and waiting is not None:
            if now - self.since >= self.idle:
                self._fail("idle" if waiting is self._read_waiter else "drain")
                return
            due = min(due, self.since + self.idle)
        if not self.transport.is_closing():
            self._arm(due)

    def _fail(self, kind: str) -> None:
        error = self.expired(kind)
        for waiter in (self._read_waiter, self._drain_waiter):
            if waiter is not None and not waiter.done():
                waiter.set_exception(error)
        self._read_waiter = self._drain_waiter = None

    def _wake_reader(self) -> None:
        waiter = self._read_waiter
        if waiter is not None:
            self._read_waiter = None
            if not waiter.done():
                waiter.set_result(None)
