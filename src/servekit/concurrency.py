"""How requests run: mixins over any request source, and their named combinations.

Put the mixin first: ``class MyServer(ThreadingMixIn, TCPServer)``. The
mixins override ``process_request`` (where a request is handed off) and
``server_close`` (where the hand-offs are waited for), nothing else.

- ``ThreadingMixIn``: a new thread per request (the stdlib's semantics).
- ``ForkingMixIn``: a new child process per request, at most ``max_children``
  at once (the stdlib's semantics).
- ``ThreadPoolMixIn``: at most ``max_workers`` reused threads and
  ``max_pending`` queued requests; when both are full the server stops
  accepting until one finishes.

Stopping: ``shutdown()`` stops accepting; ``server_close()`` then lets the
requests in flight finish within ``shutdown_timeout`` seconds (None: wait for
ever, the stdlib's behaviour), cuts the connections still open after that,
and logs how many it cut.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
from functools import cached_property
from time import monotonic
from typing import TYPE_CHECKING, Any

from servekit._drain import drain as _drain
from servekit._pool import PoolLoad, WorkerPool
from servekit.errors import LimitExceeded
from servekit.limits import ThrottledLog
from servekit.sockets import TCPServer, UDPServer

if TYPE_CHECKING:
    from collections.abc import Callable

    from servekit.core import BaseServer

    _MixinBase = BaseServer
else:
    _MixinBase = object

__all__ = [
    "ThreadPoolMixIn",
    "ThreadPoolTCPServer",
    "ThreadPoolUDPServer",
    "ThreadingMixIn",
    "ThreadingTCPServer",
    "ThreadingUDPServer",
]

logger = logging.getLogger(__name__)

if hasattr(os, "fork"):

    class ForkingMixIn(_MixinBase):
        """Mix-in class to handle each request in a new process.

        Class variables that may be overridden:

        - timeout: seconds of inactivity after which zombies are collected
        - max_children: at most this many children at once; the loop waits
          for one to exit before forking more
        - block_on_close: server_close() waits for all children to exit
        """

        timeout: float | None = 300
        _hands_off_requests = True
        _takes_held_requests = False  # a child ends with its request: the loop takes the next
        active_children: set[int] | None = None
        max_children = 40
        # If true, server_close() waits until all child processes complete.
        block_on_close = True

        def collect_children(self, *, blocking: bool = False) -> None:
            """Internal routine to wait for children that have exited."""
            if self.active_children is None:
                return

            # If we're above the max number of children, wait and reap them
            # until we go back below threshold. waitpid(-1) collects children
            # in as many calls as there are dead ones, at the cost of maybe
            # reaping children we did not spawn, hence only above max_children.
            while len(self.active_children) >= self.max_children:
                try:
                    pid, status = os.waitpid(-1, 0)
                    self._child_exited(pid, status)
                except ChildProcessError:
                    # we don't have any children, we're done
                    self.active_children.clear()
                except OSError:
                    break

            # Now reap all defunct children.
            self._reap_exited(blocking=blocking)

        def _reap_exited(self, *, blocking: bool = False) -> None:
            """Reap the children that have exited; never blocks unless ``blocking``."""
            for pid in (self.active_children or set()).copy():
                try:
                    flags = 0 if blocking else os.WNOHANG
                    pid, status = os.waitpid(pid, flags)
                    # if the child hasn't exited yet, pid will be 0 and ignored
                    if pid:
                        self._child_exited(pid, status)
                except ChildProcessError:
                    # someone else reaped it
                    if self.active_children is not None:
                        self.active_children.discard(pid)
                except OSError:
                    pass

        def _child_exited(self, pid: int, status: int) -> None:
            if self.active_children is not None:
                self.active_children.discard(pid)
            if os.waitstatus_to_exitcode(status) != 0:
                self._counters.error()  # the child's handle_error ran there
            if len(self.active_children or ()) == self.max_children - 1:
                self.wake_loop()

        def open_requests(self) -> int:
            return super().open_requests() + len(self.active_children or ())

        def ready_for_request(self) -> bool:
            # At max_children, the stdlib blocks the loop in waitpid(); here the
            # loop waits for a child without blocking, so shutdown() still works.
            if len(self.active_children or ()) >= self.max_children:
                self._reap_exited()
                if len(self.active_children or ()) >= self.max_children:
                    return False
            return super().ready_for_request()

        def cut_requests(self) -> int:
            children = list(self.active_children or ())
            for pid in children:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            return len(children)

        def _children_done(self, timeout: float | None) -> bool:
            """Reap children until none is left or ``timeout`` passes."""
            if timeout is None:
                self.collect_children(blocking=True)
                return True
            deadline = monotonic() + timeout
            while True:
                self._reap_exited()
                if not self.active_children:
                    return True
                if monotonic() >= deadline:
                    return False
                # No event tells a parent a child exited without a signal
                # handler it may not own; poll children at a modest rate.
                threading.Event().wait(min(0.02, max(0.0, deadline - monotonic())))

        def handle_timeout(self) -> None:
            """Wait for zombies after self.timeout seconds of inactivity.

            May be extended, do not override.
            """
            self.collect_children()

        def service_actions(self) -> None:
            """Collect the zombie child processes regularly in the ForkingMixIn.

            service_actions is called in the BaseServer's serve_forever loop.
            It never blocks: at max_children, the loop stops accepting instead.
            """
            self._reap_exited()

        def process_request(self, request: Any, client_address: Any) -> None:
            """Fork a new subprocess to process the request."""
            pid = os.fork()
            if pid:
                # Parent process
                if self.active_children is None:
                    self.active_children = set()
                self.active_children.add(pid)
                if self._access is not None:
                    self._access.forget(request)  # the child writes its line
                self.close_request(request)
                return
            # Child process. This must never return, hence os._exit()!
            status = 1
            try:
                self._in_forked_child()
                self._run_request(request, client_address)
                status = 0
            except Exception:
                self._report_error(request, client_address)
                status = 0 if isinstance(sys.exception(), LimitExceeded) else 1
            finally:
                try:
                    self.shutdown_request(request)
                finally:
                    os._exit(status)

        def server_close(self) -> None:
            super().server_close()
            if not self.block_on_close:
                self.collect_children()
            elif self.shutdown_timeout is None:
                self.collect_children(blocking=True)
            else:
                _drain(self, self._children_done)
                self._kill_children()

        def _kill_children(self) -> None:
            """SIGKILL children that outlived SIGTERM (a handler may catch it)."""
            for pid in list(self.active_children or ()):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self._reap_exited(blocking=True)

    __all__ += ["ForkingMixIn", "ForkingTCPServer", "ForkingUDPServer"]


class _Threads(list[threading.Thread]):
    """Joinable list of all non-daemon threads.

    The stdlib reaps the finished ones at every append, a walk over all the
    threads alive: with 10,000 connections held that was 2 ms of CPU per new
    connection, and half of them timed out. Reaping once the list has doubled
    since the last reap keeps it as short (finished threads go at the next
    append) at a constant cost per append.

    The threads started here count themselves out when their request ends, and
    join() waits for that count, not in ``Thread.join()``: on CPython before
    3.13, a KeyboardInterrupt inside ``Thread.join()`` marks the thread, still
    running, as stopped (bpo-45274's fix releases its lock), and the stop that a
    second Ctrl-C hurried then found nothing to cut and left the thread behind.
    """

    _reap_at = 0  # reap when the list is this long

    def __init__(self) -> None:
        super().__init__()
        self._ended = threading.Condition()
        self._running = 0

    def start(self, target: Callable[..., object], args: tuple[Any, ...], *, daemon: bool) -> None:
        """Run ``target(*args)`` in a new thread; join() waits for it unless ``daemon``."""
        if daemon:
            threading.Thread(target=target, args=args, daemon=True).start()
            return
        thread = _CountedThread(self, target, args)
        self.append(thread)
        with self._ended:
            self._running += 1
        try:
            thread.start()
        except BaseException:
            self._count_out()
            raise

    def _count_out(self) -> None:
        with self._ended:
            self._running -= 1
            self._ended.notify_all()

    def append(self, thread: threading.Thread) -> None:
        if len(self) >= self._reap_at:
            self.reap()
            self._reap_at = 2 * len(self) + 1
        if thread.daemon:
            return
        super().append(thread)

    def join(self, timeout: float | None = None) -> bool:
        """Join every thread; with a timeout, True if all ended in time."""
        deadline = None if timeout is None else monotonic() + timeout
        with self._ended:
            if not self._ended.wait_for(lambda: not self._running, timeout):
                self.reap()
                return False
        # Their requests have ended: these joins take a moment (or wait for a
        # thread that code written for the stdlib started and append()ed itself).
        for thread in list(self):
            thread.join(None if deadline is None else max(0.0, deadline - monotonic()))
        self.reap()
        return not self

    def reap(self) -> None:
        self[:] = (thread for thread in self if thread.is_alive())


class _CountedThread(threading.Thread):
    """A request's thread (named for its target, as threading names it) that counts
    itself out of its _Threads when the request ends."""

    def __init__(
        self, threads: _Threads, target: Callable[..., object], args: tuple[Any, ...]
    ) -> None:
        super().__init__(target=target, args=args, daemon=False)
        self._counted_in = threads

    def run(self) -> None:
        try:
            super().run()
        finally:
            self._counted_in._count_out()


class _NoThreads:
    """Degenerate version of _Threads."""

    def start(self, target: Callable[..., object], args: tuple[Any, ...], *, daemon: bool) -> None:
        threading.Thread(target=target, args=args, daemon=daemon).start()

    def append(self, thread: threading.Thread) -> None:
        pass

    def join(self, timeout: float | None = None) -> bool:
        return True


class _RequestThreads(_MixinBase):
    """What runs on a request's own thread, for ThreadingMixIn and ThreadPoolMixIn."""

    _hands_off_requests = True

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """Same as in BaseServer but as a thread.

        In addition, exception handling is done here.
        """
        try:
            self._run_request(request, client_address)
        except Exception:
            self._report_error(request, client_address)
        finally:
            self.shutdown_request(request)


class ThreadingMixIn(_RequestThreads):
    """Mix-in class to handle each request in a new thread.

    Class variables that may be overridden:

    - daemon_threads: request threads do not keep the process alive
    - block_on_close: server_close() waits for non-daemon request threads
    """

    # Decides how threads will act upon termination of the main process
    daemon_threads = False
    # A request's thread ends with it: the loop takes the next (see holds_request).
    _takes_held_requests = False
    # If true, server_close() waits until all non-daemonic threads terminate.
    block_on_close = True
    # Threads object used by server_close() to wait for all threads completion.
    _threads: _Threads | _NoThreads = _NoThreads()

    def process_request(self, request: Any, client_address: Any) -> None:
        """Start a new thread to process the request."""
        if self.block_on_close:
            vars(self).setdefault("_threads", _Threads())
        self._threads.start(
            self.process_request_thread, (request, client_address), daemon=self.daemon_threads
        )

    def server_close(self) -> None:
        super().server_close()
        _drain(self, self._threads.join)  # shutdown_timeout None: join(None), for ever


class ThreadPoolMixIn(_RequestThreads):
    """Mix-in class to handle requests on a pool of reused threads.

    Class variables that may be overridden:

    - max_workers: threads kept warm; started as requests need them, then kept
    - max_threads: while every thread is taken, extra threads are started up
      to this many, and leave after ten idle seconds (see _pool), so that
      slow clients holding threads do not stall everyone else. None (the
      default): up to max_connections for streams, without bound if that is
      None; max_workers for datagrams
    - max_pending: requests accepted and waiting for a thread once
      max_threads are all taken; when the queue is full too, the server stops
      accepting (clients wait in the kernel's backlog) and resumes as soon as
      one finishes
    """

    max_workers = 32
    max_pending = 64
    max_threads: int | None = None
    # Unlike the stdlib's classes, this one stops accepting while its workers
    # and queue are full, and relies on the kernel's backlog as the next
    # queue: the stdlib's 5 would leave clients in SYN retries (make_server's
    # backlog; the kernel caps it at net.core.somaxconn).
    request_queue_size = socket.SOMAXCONN

    _pool: WorkerPool | None = None
    _pool_full = False
    # A worker whose request ends takes the next the source holds (_take_held_request).
    _takes_held_requests = True

    def _worker_pool(self) -> WorkerPool:
        pool = self._pool
        if pool is None:
            pool = self._pool = WorkerPool(
                self.process_request_thread,
                max_workers=self.max_workers,
                max_pending=self.max_pending,
                max_threads=self._thread_ceiling(),
                on_room=self._pool_has_room,
                name=type(self).__name__,
                take_next=self._take_held_request,
            )
        return pool

    def _thread_ceiling(self) -> int | None:
        """max_threads, or what it means when None: a stream connection may hold
        a thread for as long as its client is slow, so streams grow up to
        max_connections (without bound if that is None, as the threads model
        does); a datagram's work, or a request from a source that is not a
        socket, is the handler's alone: those do not grow past max_workers."""
        if self.max_threads is not None:
            return self.max_threads
        if getattr(self, "socket_type", None) != socket.SOCK_STREAM:
            return self.max_workers  # datagrams, and sources that are not sockets
        return getattr(self, "max_connections", None)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Queue the request for the next free worker thread."""
        self._worker_pool().submit(request, client_address)

    def ready_for_request(self) -> bool:
        pool = self._pool
        # Raise the flag before looking: a worker finishing in between then
        # sees it and wakes the loop, so no wake-up is lost.
        was_full, self._pool_full = self._pool_full, True
        if pool is not None and not pool.has_room():
            if not was_full:
                self._counters.limit("max_pending")
                self._pool_full_log(
                    "%s: all %s threads busy (max_threads) and %d requests queued "
                    "(max_pending); not accepting until one finishes",
                    self, pool.max_threads, pool.max_pending,
                )  # fmt: skip
            return False
        self._pool_full = False
        return super().ready_for_request()

    @cached_property
    def _pool_full_log(self) -> ThrottledLog:
        # A saturated pool fills again as soon as a request ends: once a line
        # per fill was a line per accepted connection (1,111 for 1,880).
        return ThrottledLog(logger)

    def pool_load(self) -> PoolLoad:
        """The pool's threads, busy threads and queued requests now."""
        pool = self._pool
        return PoolLoad(0, 0, 0) if pool is None else pool.load()

    def _pool_has_room(self) -> None:
        if self._pool_full:
            self._pool_full = False
            self.wake_loop()

    def server_close(self) -> None:
        super().server_close()
        pool = self._pool
        if pool is not None:
            _drain(self, pool.close)


if hasattr(os, "fork"):

    class ForkingUDPServer(ForkingMixIn, UDPServer):
        pass

    class ForkingTCPServer(ForkingMixIn, TCPServer):
        pass


class ThreadingUDPServer(ThreadingMixIn, UDPServer):
    pass


class ThreadingTCPServer(ThreadingMixIn, TCPServer):
    pass


class ThreadPoolUDPServer(ThreadPoolMixIn, UDPServer):
    pass


class ThreadPoolTCPServer(ThreadPoolMixIn, TCPServer):
    pass


if hasattr(socket, "AF_UNIX"):
    from servekit.sockets import UnixDatagramServer, UnixStreamServer

    class ThreadingUnixStreamServer(ThreadingMixIn, UnixStreamServer):
        pass

    class ThreadingUnixDatagramServer(ThreadingMixIn, UnixDatagramServer):
        pass

    class ThreadPoolUnixStreamServer(ThreadPoolMixIn, UnixStreamServer):
        pass

    class ThreadPoolUnixDatagramServer(ThreadPoolMixIn, UnixDatagramServer):
        pass

    __all__ += [
        "ThreadPoolUnixDatagramServer",
        "ThreadPoolUnixStreamServer",
        "ThreadingUnixDatagramServer",
        "ThreadingUnixStreamServer",
    ]

    if hasattr(os, "fork"):

        class ForkingUnixStreamServer(ForkingMixIn, UnixStreamServer):
            pass

        class ForkingUnixDatagramServer(ForkingMixIn, UnixDatagramServer):
            pass

        __all__ += ["ForkingUnixDatagramServer", "ForkingUnixStreamServer"]
