"""The calls of one stream connection on the thread models (sync, threads, pool, fork).

Records are read by one thread at a time and answered by up to ``max_calls``
threads at once, each reply sent whole when its call finishes (the client
matches them by xid, as RFC 5531 allows; libtirpc answers in turn).

The thread that has read a record answers it itself, at once: in the common
case (a client that waits for each reply) one thread reads and answers every
call, as in turn, with no hand-off between threads. Another thread of the
connection (a follower, started when first needed and kept until the
connection closes) takes over the reading when the thread that read a call
cannot read the next one soon: at once when more bytes came with the call (a
client that sends calls without waiting), or when the call has run for
``SLOW_CALL`` with nobody reading (the process's watch thread sees to that). So
a call waits at most ``SLOW_CALL`` behind a slow one, and no call pays for a
thread hand-off it does not need; a hand-off to a thread for every call cost a
third of the calls per second at one connection (docs/performance.md). With
``max_calls`` calls running nobody reads, and the client waits (TCP's flow
control) until one is answered. With ``max_calls == 1`` no thread is started
and calls are answered in turn: the sync model asks for that, and so does TLS,
whose connection cannot be read by one thread while another writes.

A connection with calls in flight is not idle: ``idle_timeout`` runs from the
later of the last byte received and the last call answered. ``read_timeout``
bounds each record from its first byte, calls or not.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from time import monotonic, sleep
from typing import TYPE_CHECKING, Any

from servekit.errors import LimitExceeded
from servekit.limits import report
from servekit.rpc.record import (
    CLOSED,
    DEFAULT_MAX_RECORD_SIZE,
    NEED_DATA,
    RecordError,
    RecordReader,
    encode_record,
)

if TYPE_CHECKING:
    from servekit.limits import ConnectionLimits

__all__ = [
    "DEFAULT_MAX_CALLS",
    "RecordLimitExceeded",
    "StreamCalls",
    "answered",
    "max_record_size",
    "record_failed",
]

logger = logging.getLogger("servekit.rpc.server")

#: How much is asked of the socket at a time.
CHUNK = 65536

#: A call that has run this long with nobody reading its connection gets another
#: thread reading the next call: the longest a call waits behind a slow one.
SLOW_CALL = 0.005

#: Calls of one connection answered at once, by default (``rpc_max_calls_in_flight``
#: on the server).
DEFAULT_MAX_CALLS = 16


class RecordLimitExceeded(LimitExceeded):
    """A record went past a limit of rpc.record (max_record_size, max_fragments)."""

    def __init__(self, message: str, limit: str) -> None:
        super().__init__(message)
        self.limit = limit


def answered(server: Any) -> None:
    """Count a call answered (``server.stats.calls``), on a servekit server."""
    counters = getattr(server, "_counters", None)
    if counters is not None:
        counters.call()


def max_record_size(server: Any) -> int:
    return int(getattr(server, "rpc_max_record_size", DEFAULT_MAX_RECORD_SIZE))


def max_calls(server: Any) -> int:
    """The calls of one connection answered at once (at least 1)."""
    return max(1, int(getattr(server, "rpc_max_calls_in_flight", DEFAULT_MAX_CALLS)))


def record_failed(handler: Any, error: RecordError) -> None:
    """The stream broke the record marking: log it (and count and raise a limit's)."""
    if error.limit is not None:
        exceeded = RecordLimitExceeded(str(error), error.limit)
        raise report(handler.server, handler.client_address, exceeded, handler.request)
    logger.info("%s: closing connection from %s: %s", handler.server, handler.client_address, error)


class StreamCalls:
    """The calls of one connection: ``serve()`` answers them until it ends.

    ``handler`` is a StreamRequestHandler of a program (``handler.program``), set
    up: its ``connection``, ``connection_limits`` (None without limits) and
    ``wfile``, which sends a reply within idle_timeout.
    """

    def __init__(self, handler: Any, max_calls: int) -> None:
        self.handler = handler
        self.server = handler.server
        self.client = handler.client_address
        self.answer = handler.program.answer
        self.limits: ConnectionLimits | None = handler.connection_limits
        self.reader = RecordReader(max_record_size=max_record_size(self.server))
        self.send = handler.wfile.write
        counters = getattr(self.server, "_counters", None)
        self.count_call = None if counters is None else counters.call
        sock: socket.socket = handler.connection
        self.sock = sock
        limits = self.limits
        if limits is None or not limits.kernel:
            # The socket's own recv: Python's timeout (TLS), or none at all.
            self.recv = sock.recv
            plain = limits is None and type(sock) is socket.socket
        else:
            # The C method: an IdleSocket's own would report an idle timeout
            # that, with calls running, is not one.
            self.recv = socket.socket.recv.__get__(sock)
            plain = True
        self.max_calls = max_calls if plain else 1
        if self.max_calls > 1 and sock.family in (socket.AF_INET, socket.AF_INET6):
            # Replies go out whole, one send each; with several in flight Nagle
            # would hold one back until the client acknowledged the other.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._lock = threading.Condition(threading.Lock())
        self._write_lock = threading.Lock()
        self._reading = False  # a thread is reading
        self._running = 0  # calls being answered
        self._waiting = 0  # followers waiting for their turn to read
        self._coming = False  # a follower was woken or started to read
        self._since = 0.0  # when the last call began
        self._watch: _Watch
        self._threads: list[threading.Thread] = []
        self._over = False  # the stream ended or failed: nobody reads again
        self._failure: BaseException | None = None
        self._quiet_since = 0.0  # when the last call in flight was answered

    def serve(self) -> None:
        """Answer the connection's calls until it ends; raise what ended it badly."""
        if self.max_calls == 1:
            while (record := self._next_record()) is not None:
                self._answer(record)
            return
        watch = self._watch = _watch()
        watch.opened()
        try:
            self._follow()
        finally:
            self._end()
            for thread in self._threads:
                thread.join()
            watch.closed()
        if self._failure is not None:
            raise self._failure

    # -- several calls at once -------------------------------------------------------------

    def _follow(self) -> None:
        """Take turns at reading; answer each record read (a thread's whole life)."""
        lock = self._lock
        while True:
            with lock:
                while self._reading and not self._over:
                    self._waiting += 1
                    lock.wait()
                    self._waiting -= 1
                if self._over:
                    return
                self._reading = True
                self._coming = False
            try:
                record = self._next_record()
            except BaseException:
                self._end()
                raise
            follower = None
            with lock:
                self._reading = False
                if record is None:
                    self._over = True
                    lock.notify_all()
                    return
                self._running += 1
                if self._running == 1:
                    self._watch.answering.add(self)
                if self.reader.buffered:  # more came with it: let another read it now
                    follower = self._hand_off()
                self._since = monotonic()
            if follower is not None:
                follower.start()
            try:
                self._answer(record)
            except BaseException:
                self._end(cut=True)
                raise
            finally:
                with lock:
                    self._running -= 1
                    if not self._running:
                        self._watch.answering.discard(self)
                        self._quiet_since = monotonic()

    def _hand_off(self) -> threading.Thread | None:
        """Get a follower reading (the lock is held): wake a waiting one, or return
        one to start, if there is room for it and no thread reads or is coming to."""
        if self._reading or self._coming or self._over:
            return None
        if self._waiting:
            self._coming = True
            self._lock.notify()
            return None
        if len(self._threads) + 1 >= self.max_calls:
            return None
        self._coming = True
        thread = threading.Thread(
            target=self._follower, name=f"rpc-calls {self.client}", daemon=True
        )
        self._threads.append(thread)
        return thread

    def hand_off_if_slow(self, now: float) -> None:
        """If a call has run for SLOW_CALL seconds with nobody reading, get a follower
        reading (the watch calls this)."""
        if self._reading or self._coming or not self._running or now - self._since < SLOW_CALL:
            return
        with self._lock:
            follower = self._hand_off() if self._running else None
        if follower is not None:
            follower.start()

    def _follower(self) -> None:
        try:
            self._follow()
        except BaseException as exc:
            with self._lock:
                if self._failure is None:
                    self._failure = exc

    def _end(self, *, cut: bool = False) -> None:
        """Nobody reads again; with ``cut``, wake the one reading now (a reply could
        not be sent: the connection is broken)."""
        with self._lock:
            if self._over and not cut:
                return
            self._over = True
            self._lock.notify_all()
        if cut:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    # -- one call --------------------------------------------------------------------------

    def _next_record(self) -> bytes | None:
        """The next record; None at the end of the stream, or when it broke the
        record marking (logged)."""
        reader = self.reader
        while True:
            try:
                record = reader.next_record()
            except RecordError as exc:
                record_failed(self.handler, exc)
                return None
            if record is NEED_DATA:
                reader.receive_data(self._receive())
            elif record is CLOSED:
                return None
            else:
                if self.limits is not None:
                    self.limits.deadline = None
                return record

    def _answer(self, record: bytes) -> None:
        reply = self.answer(record, self.client, self.server)
        if reply is not None:
            data = encode_record(reply)
            with self._write_lock:
                self.send(data)
            if self.count_call is not None:
                self.count_call()

    def _receive(self) -> bytes:
        """The next bytes of the stream (b"" at its end), within the limits."""
        limits = self.limits
        if limits is None:
            return self.recv(CHUNK)
        if limits.deadline is None and limits.read is not None and self.reader.buffered:
            limits.deadline = monotonic() + limits.read  # the record began
        by_deadline = limits.arm_read()
        while True:
            try:
                return self.recv(CHUNK)
            except limits.timeouts:
                if by_deadline:
                    raise limits.timed_out(True) from None
                more = self._not_idle_for()
                if more is None:
                    raise limits.timed_out(False) from None
                by_deadline = limits.arm_read(more)

    def _not_idle_for(self) -> float | None:
        """After a wait of idle_timeout: None if the connection was idle all along,
        else how much longer it may be (calls were in flight)."""
        idle = self.limits.idle if self.limits is not None else None
        if idle is None:
            return None
        with self._lock:
            if self._running:
                return idle
            left = self._quiet_since + idle - monotonic()
        return left if left > 0.001 else None


class _Watch:
    """The thread that hands a connection's reading to a follower when its calls
    have run SLOW_CALL with nobody reading; one per process, while it serves
    connections that may answer several calls at once."""

    def __init__(self) -> None:
        self.answering: set[StreamCalls] = set()  # connections with calls running
        self._lock = threading.Lock()
        self._connections = 0
        self._thread: threading.Thread | None = None

    def opened(self) -> None:
        with self._lock:
            self._connections += 1
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="rpc-calls watch", daemon=True
                )
                self._thread.start()

    def closed(self) -> None:
        with self._lock:
            self._connections -= 1

    def _run(self) -> None:
        while True:
            sleep(SLOW_CALL)
            with self._lock:
                if not self._connections:
                    self._thread = None
                    return
            now = monotonic()
            for calls in list(self.answering):  # a copy: the set changes meanwhile
                calls.hand_off_if_slow(now)


_WATCHES: dict[int, _Watch] = {}


def _watch() -> _Watch:
    """This process's watch (a forked child starts its own: threads do not cross fork)."""
    pid = os.getpid()
    watch = _WATCHES.get(pid)
    if watch is None:
        _WATCHES.clear()
        watch = _WATCHES.setdefault(pid, _Watch())
    return watch
