"""TCP urgent data ("out-of-band", MSG_OOB) for handlers that define ``handle_oob``.

One watcher thread per process, started by the first connection whose handler
has the hook (and made again in a forked child), poll()s for POLLPRI on a
``dup()`` of each such connection, plus a socketpair that wakes it when the set
changes. On POLLPRI it takes the byte with ``recv(1, MSG_OOB)`` and delivers
it: a sync handler's ``handle_oob`` runs on the watcher thread, one call at a
time; an async handler's is called on its loop (``call_soon_threadsafe``), and
``async def`` hooks of one connection run one after another, in order. A
handler without the hook costs nothing: no thread, no dup, no registration.

Why a thread and not SIGURG: the signal says that some socket got urgent data,
not which (Python exposes no ``si_fd``), it goes to one process-wide handler
that only the main thread runs, and it would fight any other user of SIGURG.
A thread works alike on threads, pool, fork, prefork and the async engine,
whose event loops cannot wait for POLLPRI.

Why the dup: the handler closes its socket when it likes; the watcher's copy
keeps the descriptor number from being reused under it, and ``unwatch()``
(called by the handler's finish(), before the socket closes) closes the copy,
so the connection ends when the handler closes it.

The reader's side. Linux throws the urgent byte away when a normal read
passes its mark before anyone took it (measured: docs/oob.md), and a blocked
``recv()`` wakes for the urgent segment as soon as the watcher does. So the
reads of a watched connection take the urgent byte first: its socket is
switched in place to a subclass whose ``recv``/``recv_into`` wait with
``poll(POLLIN | POLLPRI)`` and take a pending urgent byte before reading (a
lone urgent byte at the mark is not POLLIN, so a read never starts there
before it was taken). This covers the sync models and asyncio's own loop,
whose transport reads through the socket object; uvloop reads in C, where an
urgent byte followed at once by normal data can be skipped before the watcher
takes it (docs/oob.md says what a client should do).
"""

from __future__ import annotations

import asyncio
import errno
import inspect
import logging
import os
import select
import socket
import ssl
import threading
import time
from collections import deque
from typing import Any

__all__ = ["check_fits", "prepare_reads", "unwatch", "wants_oob", "watch"]

logger = logging.getLogger(__name__)

_EVENTS_OF_A_DEAD_CONNECTION = select.POLLHUP | select.POLLERR | select.POLLNVAL | select.POLLRDHUP
#: How long a connection whose POLLPRI yielded no byte is left out of the poll:
#: the kernel said "urgent" but recv(MSG_OOB) said EAGAIN/EINVAL (the pointer
#: came before the byte, or a reader took it); polling it again at once would spin.
_QUIET = 0.01


def wants_oob(handler: Any) -> bool:
    """True if the handler class (or instance) defines ``handle_oob``."""
    return callable(getattr(handler, "handle_oob", None))


def check_fits(handler: Any, transport: str | None, tls: bool, address: str) -> None:
    """ValueError if ``handler`` has ``handle_oob`` where there is no urgent data."""
    if not (isinstance(handler, type) and wants_oob(handler)):
        return
    name = handler.__name__
    if tls:
        raise ValueError(
            f"{name} has handle_oob, but {address} speaks TLS: TLS has no urgent data "
            "(drop handle_oob, or serve it without TLS)"
        )
    if transport in ("udp", "unix-dgram"):
        raise ValueError(
            f"{name} has handle_oob, but {address} is a datagram socket: urgent data is "
            "TCP's (drop handle_oob, or listen on a TCP address)"
        )
    if transport != "tcp":
        where = "a Unix socket" if transport == "unix" else "not a TCP socket"
        raise ValueError(
            f"{name} has handle_oob, but {address} is {where}: urgent data is TCP's "
            "(drop handle_oob, or listen on a TCP address)"
        )


class _Watch:
    """One connection being watched: its dup, and where its urgent bytes go."""

    __slots__ = (
        "async_hook", "closed", "dup", "fd", "finished", "handler", "lock", "loop", "pending",
        "quiet_until", "runner",
    )  # fmt: skip

    def __init__(self, handler: Any, sock: socket.socket, loop: Any) -> None:
        self.handler = handler
        self.fd = sock.fileno()
        self.dup = socket.socket(fileno=os.dup(self.fd))
        self.dup.setblocking(False)
        self.loop: asyncio.AbstractEventLoop | None = loop
        self.async_hook = loop is not None and inspect.iscoroutinefunction(handler.handle_oob)
        self.lock = threading.Lock()  # one recv(MSG_OOB) and its hand-off at a time
        self.closed = False  # the dup is closed: nothing more to take
        self.finished = False  # the handler has finished: nothing more to deliver
        self.quiet_until = 0.0
        self.pending: deque[bytes] = deque()  # async def hooks not yet run
        self.runner: asyncio.Task[None] | None = None

    def take(self) -> bool:
        """Take the urgent byte if there is one and hand it on; False if none."""
        with self.lock:
            if self.closed:
                return False
            try:
                data = self.dup.recv(1, socket.MSG_OOB)
            except OSError as exc:
                if exc.errno in (errno.EINVAL, errno.EAGAIN, errno.ENOTCONN):
                    return False  # not there yet, already taken, or the connection is gone
                raise
            if not data:
                return False
            if self.loop is None:
                _watcher().deliver(self, data)
            else:
                try:
                    self.loop.call_soon_threadsafe(_deliver_async, self, data)
                except RuntimeError:
                    return False  # the loop is closed: the server has stopped
            return True

    def close(self, finished: bool) -> None:
        with self.lock:
            self.finished = self.finished or finished
            if not self.closed:
                self.closed = True
                self.dup.close()


class _Watcher:
    """The process's watcher thread and the connections it polls."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.watches: dict[int, _Watch] = {}  # by the dup's descriptor
        self.by_socket: dict[int, _Watch] = {}  # by the handler's descriptor, for its reads
        self.deliveries: deque[tuple[_Watch, bytes]] = deque()  # for sync hooks
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._thread = threading.Thread(target=self._run, name="servekit-oob", daemon=True)
        self._thread.start()

    def add(self, watch: _Watch) -> None:
        with self.lock:
            self.watches[watch.dup.fileno()] = watch
            self.by_socket[watch.fd] = watch
        self.wake()

    def remove(self, watch: _Watch, *, finished: bool = True) -> None:
        """Stop polling ``watch``; ``finished``: its handler has ended, and bytes
        taken but not yet delivered are dropped."""
        with self.lock:
            if self.watches.get(watch.dup.fileno()) is watch:
                del self.watches[watch.dup.fileno()]
            if self.by_socket.get(watch.fd) is watch:
                del self.by_socket[watch.fd]
            # Under the lock: its number is not reused before it leaves the maps.
            watch.close(finished)
        self.wake()

    def deliver(self, watch: _Watch, data: bytes) -> None:
        self.deliveries.append((watch, data))
        if threading.current_thread() is not self._thread:
            self.wake()

    def wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except BlockingIOError:
            pass  # a wake-up is pending already

    def forget_in_child(self) -> None:
        """In a forked child: let go of the parent's descriptors (its thread is gone)."""
        for watch in self.watches.values():
            watch.dup.close()
        self._wake_r.close()
        self._wake_w.close()

    # -- the thread ----------------------------------------------------------------------

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        polled: set[int] = set()
        while True:
            timeout = self._sync(poller, polled)
            try:
                events = poller.poll(timeout)
            except OSError:  # pragma: no cover - EINTR is retried by Python
                logger.exception("urgent data: poll failed")
                continue
            for fd, mask in events:
                if fd == self._wake_r.fileno():
                    self._drain_wake()
                else:
                    self._event(fd, mask)
            self._run_deliveries()

    def _sync(self, poller: select.poll, polled: set[int]) -> int | None:
        """Make the poll set the watched connections; return poll()'s timeout (ms)."""
        now = time.monotonic()
        wake_at = None
        with self.lock:
            wanted = {}
            for fd, watch in self.watches.items():
                if watch.quiet_until > now:
                    wanted[fd] = select.POLLRDHUP
                    wake_at = min(wake_at or watch.quiet_until, watch.quiet_until)
                else:
                    wanted[fd] = select.POLLPRI | select.POLLRDHUP
        for fd in polled - wanted.keys():
            poller.unregister(fd)
        for fd, mask in wanted.items():
            poller.register(fd, mask)  # a descriptor re-registered only changes its mask
        polled.clear()
        polled.update(wanted)
        return None if wake_at is None else max(1, int((wake_at - now) * 1000) + 1)

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass

    def _event(self, fd: int, mask: int) -> None:
        with self.lock:
            watch = self.watches.get(fd)
        if watch is None:
            return  # unwatched while poll() ran
        if mask & select.POLLPRI and not watch.take():
            watch.quiet_until = time.monotonic() + _QUIET
        if mask & _EVENTS_OF_A_DEAD_CONNECTION:
            # The peer has closed its side: no urgent byte can come any more.
            # Let go of the dup now, in case the handler never unwatches; what
            # was taken is still delivered.
            self.remove(watch, finished=False)

    def _run_deliveries(self) -> None:
        while self.deliveries:
            watch, data = self.deliveries.popleft()
            if not watch.finished:
                _call_sync_hook(watch.handler, data)


def _call_sync_hook(handler: Any, data: bytes) -> None:
    try:
        handler.handle_oob(data)
    except Exception:
        _report(handler)


def _report(handler: Any) -> Any:
    """The server's handle_error() for a hook that raised (inside ``except``)."""
    server = handler.server
    try:
        report = getattr(server, "_report_error", None) or server.handle_error
        return report(handler.request, handler.client_address)
    except Exception:
        logger.exception("handle_error failed for an exception of handle_oob")
        return None


def _deliver_async(watch: _Watch, data: bytes) -> None:
    """On the connection's loop: call the hook, or queue it behind the one running."""
    if watch.finished:
        return
    if not watch.async_hook:
        try:
            watch.handler.handle_oob(data)
        except Exception:
            _await_report(_report(watch.handler))
        return
    watch.pending.append(data)
    if watch.runner is None:
        assert watch.loop is not None
        watch.runner = watch.loop.create_task(_run_async_hooks(watch))


async def _run_async_hooks(watch: _Watch) -> None:
    try:
        while watch.pending and not watch.finished:
            data = watch.pending.popleft()
            try:
                await watch.handler.handle_oob(data)
            except Exception:
                result = _report(watch.handler)
                if inspect.isawaitable(result):
                    await result
    finally:
        watch.runner = None


_reporting: set[asyncio.Future[Any]] = set()  # async handle_error() calls running


def _await_report(result: Any) -> None:
    if inspect.isawaitable(result):
        task = asyncio.ensure_future(result)
        _reporting.add(task)
        task.add_done_callback(_reporting.discard)


# -- the process's watcher -----------------------------------------------------------------

_current: _Watcher | None = None
_start_lock = threading.Lock()


def _watcher() -> _Watcher:
    global _current
    current = _current
    if current is not None and current.pid == os.getpid():
        return current
    with _start_lock:
        if _current is None or _current.pid != os.getpid():
            _current = _Watcher()
        return _current


def _after_fork_in_child() -> None:
    global _current, _start_lock
    _start_lock = threading.Lock()  # the parent's may have been held at the fork
    if _current is not None and _current.pid != os.getpid():
        _current.forget_in_child()
        _current = None


os.register_at_fork(after_in_child=_after_fork_in_child)


def watch(handler: Any, sock: socket.socket, loop: asyncio.AbstractEventLoop | None) -> None:
    """Watch ``sock`` for urgent data for ``handler`` (its setup() calls this).

    ``loop``: the async handler's loop, or None for a sync handler.
    """
    prepare_reads(handler, sock, sync=loop is None)
    state = _Watch(handler, sock, loop)
    handler._oob_watch = state
    _watcher().add(state)


def prepare_reads(handler: Any, sock: socket.socket, *, sync: bool = True) -> None:
    """Make the reads of ``sock`` take urgent data first (see _before_read). A sync
    handler calls it before it makes its files, which keep the socket's methods."""
    if getattr(type(sock), "_takes_urgent_first", False):
        return
    if isinstance(sock, ssl.SSLSocket):
        raise TypeError(
            f"{type(handler).__name__} has handle_oob, but its connection is TLS: "
            "TLS has no urgent data"
        )
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        raise TypeError(
            f"{type(handler).__name__} has handle_oob, but its connection is not TCP: "
            "urgent data is TCP's"
        )
    if sync:
        _python_timeouts(handler, sock)
    sock.__class__ = _reader_class(type(sock))


def unwatch(handler: Any) -> None:
    """Stop watching the handler's connection; before its socket closes (finish())."""
    state: _Watch | None = handler.__dict__.pop("_oob_watch", None)
    if state is None:
        return
    _watcher().remove(state)
    runner = state.runner
    if runner is not None and not runner.done():
        runner.cancel()


# -- reads that take the urgent byte first ---------------------------------------------------

_READER_CLASSES: dict[type[socket.socket], type[socket.socket]] = {}


def _reader_class(base: type[socket.socket]) -> type[socket.socket]:
    if getattr(base, "_takes_urgent_first", False):
        return base
    made = _READER_CLASSES.get(base)
    if made is None:
        recv, recv_into = base.recv, base.recv_into

        def urgent_first_recv(self: socket.socket, bufsize: int, flags: int = 0) -> bytes:
            _before_read(self)
            data: bytes = recv(self, bufsize, flags)
            return data

        def urgent_first_recv_into(self: socket.socket, *args: Any, **kwargs: Any) -> int:
            _before_read(self)
            received: int = recv_into(self, *args, **kwargs)
            return received

        namespace = {
            "__slots__": (), "__module__": base.__module__, "_takes_urgent_first": True,
            "recv": urgent_first_recv, "recv_into": urgent_first_recv_into,
        }  # fmt: skip
        made = type(base.__name__, (base,), namespace)
        made.__qualname__ = base.__qualname__
        _READER_CLASSES[base] = made
    return made


def _before_read(sock: socket.socket) -> None:
    """Wait for normal data (within the socket's timeout), taking urgent bytes that
    come first, so that the read never starts at an urgent mark not yet taken."""
    current = _current
    watch = None if current is None else current.by_socket.get(sock.fileno())
    if watch is None:
        return
    timeout = sock.gettimeout()
    deadline = None if timeout is None else time.monotonic() + timeout
    poller = select.poll()
    poller.register(watch.fd, select.POLLIN | select.POLLPRI)
    while True:
        wait = None if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
        events = poller.poll(wait)
        if not events:
            if timeout:
                raise TimeoutError("timed out")  # as recv() under settimeout() would
            return  # non-blocking: recv() says EAGAIN
        mask = events[0][1]
        taken = bool(mask & select.POLLPRI) and watch.take()
        if mask & ~select.POLLPRI or not taken or wait == 0:
            return  # data, the end or an error, for recv() to see


def _python_timeouts(handler: Any, sock: socket.socket) -> None:
    """Put a sync connection under Python's timeouts, which _before_read() keeps:
    under the kernel's, servekit.limits reads with the C method, around it."""
    if sock.gettimeout() is not None:
        return
    server = handler.server
    limited = any(
        getattr(server, name, None) is not None
        for name in ("idle_timeout", "read_timeout", "max_line_length")
    )
    if not limited:
        return  # the stdlib's files, which read through recv_into()
    idle = getattr(handler, "timeout", None)
    if idle is None:
        idle = getattr(server, "idle_timeout", None)
    # Any timeout but None tells ConnectionLimits so; it sets the real one per read.
    sock.settimeout(idle if idle is not None else 0.0)
