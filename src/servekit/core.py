"""BaseServer: the request loop and its hooks. It knows nothing of sockets.

A request source is anything with ``fileno()`` that turns readable when a
request is waiting, and a ``get_request()`` that returns ``(request,
client_address)``. TCP and UDP sockets, Unix sockets, the asyncio engine, ONC
RPC and a SQL table all plug in here, under the same hooks.

Theory of operation (what differs from the stdlib, and why):

- ``serve_forever`` watches a wake-up pipe beside the request source, so
  ``shutdown()`` is noticed at once instead of after ``poll_interval``.
- ``shutdown()`` knows which thread runs the loop: called from that thread
  (a handler of a synchronous server) it asks the loop to stop and returns
  instead of waiting for itself; called when no loop runs it returns at once,
  and a ``serve_forever`` started afterwards returns immediately, as in the
  stdlib, where the same race is common in tests.
- Errors go to the ``servekit`` logger, never to stderr by ``print``.
- A request source that fails for lack of resources (see ``sockets``) pauses
  the loop for a growing, capped delay instead of spinning at full CPU.
"""

from __future__ import annotations

import logging
import math
import select
import selectors
import signal
import sys
import threading
import time
from collections.abc import Callable
from functools import cached_property
from time import monotonic
from typing import TYPE_CHECKING, Any, Self

from servekit._signalguard import SignalGuard
from servekit._wakeup import Waker
from servekit.errors import LimitExceeded
from servekit.stats import Stats, StatsSnapshot

if TYPE_CHECKING:
    from servekit.access import AccessLog

__all__ = ["BaseServer"]

logger = logging.getLogger(__name__)

#: How the server builds a handler: any callable taking (request, client_address, server).
RequestHandlerFactory = Callable[[Any, Any, "BaseServer"], object]

# poll() needs no extra file descriptor and one system call per wait, where
# epoll needs both; with two descriptors to watch it is the cheapest.
if hasattr(selectors, "PollSelector"):
    _ServerSelector: type[selectors.BaseSelector] = selectors.PollSelector
else:  # pragma: no cover - platforms without poll()
    _ServerSelector = selectors.SelectSelector

#: Waits up to a timeout in milliseconds (None: no limit); returns ``(fd, events)`` pairs.
_Wait = Callable[[float | None], list[tuple[int, int]]]


def _readable_wait(*fds: int) -> _Wait:
    """A wait for any of ``fds`` to turn readable, for the loop's every pass.

    ``select.poll``'s own method, not a selector: ``selectors`` wraps each wait
    in Python code (a key lookup and a list per event) that costs 0.6 us, a
    twentieth of a datagram's whole round trip.
    """
    if hasattr(select, "poll"):
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        return poller.poll

    def wait(timeout_ms: float | None) -> list[tuple[int, int]]:  # pragma: no cover - no poll()
        timeout = None if timeout_ms is None else timeout_ms / 1000
        readable, _, _ = select.select(fds, (), (), timeout)
        return [(fd, select.POLLIN) for fd in readable]

    return wait


def _milliseconds(seconds: float | None) -> float | None:
    """poll()'s timeout: None blocks, and so would a negative one, hence the floor."""
    return None if seconds is None else max(0, math.ceil(seconds * 1000))


class BaseServer:
    """Base class for server classes.

    Methods for the caller:

    - __init__(server_address, RequestHandlerClass)
    - serve_forever(poll_interval=0.5)
    - shutdown()
    - handle_request()  # if you do not use serve_forever()
    - fileno() -> int   # for selector

    Methods that may be overridden:

    - server_bind()
    - server_activate()
    - get_request() -> request, client_address
    - handle_timeout()
    - verify_request(request, client_address)
    - server_close()
    - process_request(request, client_address)
    - shutdown_request(request)
    - close_request(request)
    - service_actions()
    - handle_error(request, client_address)

    Methods for derived classes:

    - finish_request(request, client_address)

    servekit's hooks for request sources (what a source overrides to get
    stats, limits and a graceful stop on every model; see docs/architecture.md):

    - request_accepted(request, client_address)  # count or track what get_request() gave
    - open_requests() -> int   # requests taken and not yet closed: stats.open
    - ready_for_request() -> bool   # False while a limit is reached
    - cut_requests() -> int    # a stop ran out of time: end what still runs
    - get_request_failed(exc)  # get_request() raised OSError: skip, or pause_requests()

    and methods a source calls:

    - wake_loop()              # room again after ready_for_request() said False
    - pause_requests(seconds)  # ask get_request() nothing for a while
    - get_request_recovered()  # (extended) the first success after a pause

    Class variables that may be overridden by derived classes or instances:

    - timeout
    - address_family
    - socket_type
    - allow_reuse_address
    - allow_reuse_port

    Instance variables:

    - RequestHandlerClass
    - socket
    - stats (read only: a StatsSnapshot of the counters)

    servekit adds:

    - shutdown_timeout: how long server_close() lets requests in flight run
      before cutting them (None, the stdlib's behaviour: wait for ever)
    """

    timeout: float | None = None
    shutdown_timeout: float | None = None

    # Class-level defaults keep subclasses that skip BaseServer.__init__ working.
    # The loop's own state has mangled names, as in the stdlib, so that a
    # subclass's ``self._lock`` or ``self._waker`` cannot collide with it.
    __loop_lock = threading.Lock()
    __waker: Waker | None = None
    __serving_thread: int | None = None
    __signal_guard: SignalGuard | None = None
    #: True for the models whose process_request() hands the request to a
    #: thread or a process rather than running it: the loop's signal guard
    #: then covers process_request() too (see _take_request).
    _hands_off_requests = False
    #: True for the models whose thread that finished a request takes the next
    #: one the source holds (holds_request()) before it waits: the loop itself
    #: here, the pool's workers. A source that holds requests needs to wake the
    #: loop (make fileno() readable) only for those no such thread will take.
    _takes_held_requests = True
    _shutdown_flag = False
    _requests_resume_at = 0.0
    #: True in a child forked to serve a request (see _in_forked_child).
    _request_in_child = False
    #: The connection log, when servekit.access.enable() turned it on; every
    #: use is behind one ``is not None`` test, so that off it costs nothing.
    _access: AccessLog | None = None

    def __init__(self, server_address: Any, RequestHandlerClass: RequestHandlerFactory) -> None:
        """Constructor.  May be extended, do not override."""
        self.server_address = server_address
        self.RequestHandlerClass = RequestHandlerClass
        self.__is_shut_down = threading.Event()
        self.__loop_lock = threading.Lock()
        self._shutdown_flag = False

    # Code written for the stdlib sets ``server._BaseServer__shutdown_request =
    # True`` to stop the loop. A property keeps that working and wakes the loop.
    @property
    def __shutdown_request(self) -> bool:
        return self._shutdown_flag

    @__shutdown_request.setter
    def __shutdown_request(self, value: bool) -> None:
        self._shutdown_flag = bool(value)
        waker = self.__waker
        if value and waker is not None:
            waker.wake()

    def server_activate(self) -> None:
        """Called by constructor to activate the server.

        May be overridden.
        """

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Handle one request at a time until shutdown.

        ``shutdown()`` stops the loop at once. ``poll_interval`` is how often
        ``service_actions()`` runs while no request arrives. Ignores
        ``self.timeout``.
        """
        self.__is_shut_down.clear()
        try:
            # Say the loop runs before touching the source, so that a shutdown()
            # from now on waits for it instead of closing the source under it.
            with self.__loop_lock:
                if self._shutdown_flag:
                    return  # shutdown() was called before the loop started
                self.__serving_thread = threading.get_ident()
            with Waker() as waker:
                wait = _readable_wait(self.fileno(), waker.fd)
                timeout_ms = _milliseconds(poll_interval)
                with self.__loop_lock:
                    self.__waker = waker
                self.__signal_guard = SignalGuard.for_this_thread()
                while not self._shutdown_flag:
                    ready = self._wait_for_request(wait, waker, timeout_ms)
                    # bpo-35017: shutdown() called during select(), exit immediately.
                    if self._shutdown_flag:
                        break
                    if ready:
                        self._handle_request_noblock()
                    self.service_actions()
        finally:
            guard, self.__signal_guard = self.__signal_guard, None
            with self.__loop_lock:
                self.__waker = None
                self.__serving_thread = None
                self._shutdown_flag = False
            self.__is_shut_down.set()
            if guard is not None:
                guard.uninstall()

    def _wait_for_request(self, wait: _Wait, waker: Waker, timeout_ms: float | None) -> bool:
        """Wait until a request is ready, the loop is woken, or ``timeout_ms`` passes."""
        if self._requests_resume_at:
            paused = self._requests_resume_at - monotonic()
            if paused > 0:
                waker.wait(paused if timeout_ms is None else min(paused, timeout_ms / 1000))
                return False
        if not self.ready_for_request():
            waker.wait(None if timeout_ms is None else timeout_ms / 1000)
            return False  # wake_loop() says when there is room again
        if not self._hands_off_requests and self.holds_request():
            return True  # the request just run left the next one ready: no wait
        ready = False
        for fd, _ in wait(timeout_ms):
            if fd == waker.fd:
                waker.drain()
            else:
                ready = True
        return ready

    def shutdown(self) -> None:
        """Stop the serve_forever loop.

        Blocks until the loop has finished, except when called from the thread
        running the loop (a handler of a synchronous server), where it returns
        and the loop stops after the current request. Safe to call when no
        loop is running: it returns at once. If the loop is still in a request
        after ``shutdown_timeout`` seconds, that request's connection is cut.
        """
        with self.__loop_lock:
            self._shutdown_flag = True
            waker = self.__waker
            serving = self.__serving_thread
        if serving is None:
            return
        if waker is not None:
            waker.wake()
        if serving == threading.get_ident():
            return
        # A synchronous server finishes the request it is in before the loop
        # ends; shutdown_timeout bounds how long that may take.
        if not self.__is_shut_down.wait(self.shutdown_timeout):
            self._cut_late_requests()
            self.__is_shut_down.wait()

    def fileno(self) -> int:
        """Return a descriptor that turns readable when a request is waiting.

        A request source must define this and get_request().
        """
        raise NotImplementedError(
            f"{type(self).__name__} must define fileno() and get_request() to be a request source"
        )

    def get_request(self) -> tuple[Any, Any]:
        """Return ``(request, client_address)`` for a waiting request.

        Called when fileno() is readable. Raise OSError to skip this wake-up.
        """
        raise NotImplementedError(
            f"{type(self).__name__} must define fileno() and get_request() to be a request source"
        )

    def holds_request(self) -> bool:
        """True when the source itself holds a request that get_request() returns
        at once, without a system call (a queue's rows claimed ahead); a socket's
        requests are the kernel's, and fileno() says when one waits.

        A source that holds requests may leave fileno() unreadable for them
        while a thread of the model is bound to look here: the loop of a sync
        model before each wait, a pool worker when its request ends (see
        ``_takes_held_requests``). Such a worker then takes the next request
        itself, through get_request(), request_accepted() and
        verify_request() in its own thread, so those must be thread-safe in
        a source that returns True. The default: False.
        """
        return False

    def service_actions(self) -> None:
        """Called by the serve_forever() loop.

        May be overridden by a subclass / Mixin to implement any code that
        needs to be run during the loop.
        """

    # The distinction between handling, getting, processing and finishing a
    # request is fairly arbitrary.  Remember:
    #
    # - handle_request() is the top-level call.  It calls selector.select(),
    #   get_request(), verify_request() and process_request()
    # - get_request() is different for stream or datagram sockets
    # - process_request() is the place that may fork a new process or create a
    #   new thread to finish the request
    # - finish_request() instantiates the request handler class; this
    #   constructor will handle the request all by itself

    def handle_request(self) -> None:
        """Handle one request, possibly blocking.

        Respects self.timeout.
        """
        # Support people who used socket.settimeout() to escape
        # handle_request before self.timeout was available.
        sock = getattr(self, "socket", None)
        timeout = sock.gettimeout() if sock is not None else None
        if timeout is None:
            timeout = self.timeout
        elif self.timeout is not None:
            timeout = min(timeout, self.timeout)
        deadline = None if timeout is None else monotonic() + timeout
        # The loop accommodates early wakeups and a paused request source.
        with _ServerSelector() as selector:
            selector.register(self, selectors.EVENT_READ)
            while True:
                paused = self._requests_resume_at - monotonic()
                if paused > 0:
                    wait = paused if timeout is None else min(paused, timeout)
                    time.sleep(wait)
                elif self.holds_request() or selector.select(timeout):
                    return self._handle_request_guarded()
                if deadline is not None:
                    timeout = deadline - monotonic()
                    if timeout < 0:
                        return self.handle_timeout()

    def _handle_request_guarded(self) -> None:
        """handle_request()'s one request, under a signal guard of its own when
        serve_forever() holds none (see _signalguard)."""
        if self.__signal_guard is not None:
            self._handle_request_noblock()
            return
        guard = SignalGuard.for_this_thread()
        self.__signal_guard = guard
        try:
            self._handle_request_noblock()
        finally:
            self.__signal_guard = None
            if guard is not None:
                guard.uninstall()  # a Ctrl-C that came meanwhile is raised here

    def _handle_request_noblock(self) -> None:
        """Handle one request, without blocking.

        I assume that selector.select() has returned that the socket is
        readable before this function was called, so there should be no risk of
        blocking in get_request().
        """
        guard = self.__signal_guard
        if guard is None:
            self._take_request(None)
            return
        guard.hold()
        try:
            self._take_request(guard)
        finally:
            guard.release()

    def _take_request(self, guard: SignalGuard | None) -> None:
        """Get, verify and process one request. Under ``guard``, the signal
        handlers wait until the request is counted and, for a model that hands
        requests off, handed off (see _signalguard); a handler run inline gets
        its signals as it runs."""
        try:
            request, client_address = self.get_request()
        except OSError as exc:
            self.get_request_failed(exc)
            return
        if self._requests_resume_at:
            self.get_request_recovered()
        self.request_accepted(request, client_address)
        if guard is not None and not self._hands_off_requests:
            try:
                guard.release()
            except:
                self.shutdown_request(request)
                raise
        if self._verify_in_worker or self.verify_request(request, client_address):
            self._counters.requests += 1  # Stats.request(), a call less per request
            try:
                self.process_request(request, client_address)
            except Exception:
                self._report_error(request, client_address)
                self.shutdown_request(request)
            except:
                self.shutdown_request(request)
                raise
        else:
            self._refuse(request)

    def _refuse(self, request: Any) -> None:
        """verify_request() said no: noted in the connection log, and closed."""
        if self._access is not None:
            self._access.refused(request)
        self.shutdown_request(request)

    def _take_held_request(self) -> tuple[Any, Any] | None:
        """For a worker whose request just ended: the next request the source
        holds (holds_request()), taken, counted and verified in this thread, to
        run here instead of going through the loop and back to a worker; None
        when the source holds none, or no serve_forever() loop is taking
        requests (handle_request() takes one a call; shutdown() stops taking)."""
        while self.__serving_thread is not None and not self._shutdown_flag:
            if not self.holds_request():
                return None
            try:
                request, client_address = self.get_request()
            except OSError:
                return None  # another thread took it first
            try:  # a hook that raises here must not lose the request: this is a worker
                self.request_accepted(request, client_address)
                if self._verify_in_worker or self.verify_request(request, client_address):
                    self._counters.request_in_worker()
                    return request, client_address
            except Exception:
                self._report_error(request, client_address)
                self.shutdown_request(request)
            else:
                self._refuse(request)
        return None

    def _in_forked_child(self) -> None:
        """First thing in a child forked to serve a request (ForkingMixIn, a
        handler's fork()): the loop's signal guard, held while the request was
        handed off, is the parent's; the child must get its own signals at once.
        The loop, its wake-up and its lock (maybe held by a thread the child
        lacks) are the parent's too: a shutdown() in the child returns at once,
        and fork() forks no further."""
        guard, self.__signal_guard = self.__signal_guard, None
        if guard is not None:
            guard.abandon()
        _child_signals()
        waker, self.__waker = self.__waker, None
        if waker is not None:
            waker.close()
        self.__loop_lock = threading.Lock()
        self.__serving_thread = None
        self._request_in_child = True

    # -- the hooks of a request source: stats, limits, a graceful stop --------
    #
    # Every model drives them (the sync loop, the threads, the pool, fork and
    # the async engine); a source that overrides them gets the same behaviour
    # on each. The defaults suit a source whose requests need no closing.

    @cached_property
    def _counters(self) -> Stats:
        return Stats()

    @property
    def stats(self) -> StatsSnapshot:
        """A consistent copy of this server's counters (see StatsSnapshot)."""
        return self._counters.snapshot(self.open_requests())

    def request_accepted(self, request: Any, client_address: Any) -> None:
        """Called for each request get_request() returned, before verify_request(),
        in the loop's thread (or the worker's that takes a request the source held:
        see holds_request()). Override to count or track it (see open_requests())."""

    @property
    def _verify_in_worker(self) -> bool:
        """True when verify_request() must wait for what the worker learns first
        (a PROXY header, a TLS handshake): see sockets.TCPServer."""
        return False

    def open_requests(self) -> int:
        """How many requests were taken and are not closed yet: ``stats.open``.

        Override in a source whose requests stay open (connections, claimed
        rows), together with request_accepted() and close_request()."""
        return 0

    def ready_for_request(self) -> bool:
        """False while a limit is reached: the loop stops calling get_request()
        (requests wait in the source: a socket's backlog, a table) until
        ``wake_loop()``. Extend it (call super()) in a source or model with a limit."""
        return True

    def wake_loop(self) -> None:
        """Make the serving loop look again at once (room freed, state changed);
        from any thread. The async engine overrides it to wake its loop."""
        waker = self.__waker
        if waker is not None:
            waker.wake()

    def _report_error(self, request: Any, client_address: Any) -> None:
        """Count the error and call handle_error(); for use inside ``except``.

        A client that went past a limit is not a handler error: the limit
        logged and counted it when it tripped.
        """
        if self._access is not None:
            self._access.failed(request)
        if isinstance(sys.exception(), LimitExceeded):
            return
        self._counters.error()
        self.handle_error(request, client_address)

    def _cut_late_requests(self) -> None:
        """shutdown_timeout ran out: cut what is still running, and say so."""
        cut = self.cut_requests()
        logger.warning(
            "%s: cut %d connection(s) still open after shutdown_timeout=%ss",
            self, cut, self.shutdown_timeout,
        )  # fmt: skip

    def cut_requests(self) -> int:
        """Force requests still running to end (close their connections);
        return how many were cut. Called when shutdown_timeout runs out, and on
        a second Ctrl-C or SIGTERM; from any thread."""
        return 0

    def get_request_failed(self, exc: OSError) -> None:
        """Called when get_request() raises OSError (BlockingIOError excepted on
        the async engine: nothing waits). The stdlib ignores it, and so does this.

        A source that can run out of resources, or lose its backend, overrides
        this to log and call ``pause_requests()``.
        """

    def pause_requests(self, seconds: float) -> None:
        """Stop calling get_request() for ``seconds``; shutdown() still wakes the loop."""
        self._requests_resume_at = monotonic() + seconds

    def get_request_recovered(self) -> None:
        """Called on the first successful get_request() after a pause; extend it
        (call super()) to log the recovery."""
        self._requests_resume_at = 0.0

    def handle_timeout(self) -> None:
        """Called if no new request arrives within self.timeout.

        Overridden by ForkingMixIn.
        """

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Verify the request.  May be overridden.

        Return True if we should proceed with this request.
        """
        return True

    def process_request(self, request: Any, client_address: Any) -> None:
        """Call finish_request.

        Overridden by ForkingMixIn and ThreadingMixIn.
        """
        self._run_request(request, client_address)
        self.shutdown_request(request)

    def server_close(self) -> None:
        """Called to clean-up the server.

        May be overridden.
        """

    def _run_request(self, request: Any, client_address: Any) -> None:
        """What every model runs for a request: finish_request(), and where a
        source needs it first (TLS, PROXY), its preface and verify_request()."""
        self.finish_request(request, client_address)

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Finish one request by instantiating RequestHandlerClass."""
        self.RequestHandlerClass(request, client_address, self)

    def shutdown_request(self, request: Any) -> None:
        """Called to shutdown and close an individual request."""
        self.close_request(request)

    def close_request(self, request: Any) -> None:
        """Called to clean up an individual request."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Handle an error gracefully.  May be overridden.

        Called from inside an ``except`` block. The default logs the traceback
        and the client address at ERROR on the ``servekit.core`` logger, and
        the server goes on serving. A client that went away (a reset, a broken
        pipe: ``ConnectionError``) is no bug of the handler: one INFO line.
        """
        exc = sys.exception()
        if isinstance(exc, ConnectionError):
            logger.info("client %s went away: %s: %s", client_address, type(exc).__name__, exc)
            return
        logger.error(
            "Exception occurred during processing of request from %s",
            client_address,
            exc_info=True,  # noqa: LOG014 - handle_error is called from an except block
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *args: object) -> None:
        self.server_close()

    def __repr__(self) -> str:
        state = " serving" if self.__serving_thread is not None else ""
        return f"<{type(self).__name__} {self.server_address!r}{state}>"


def _child_signals() -> None:
    """A child serving a request ends on SIGTERM, which the parent's stop sends when
    it cuts. Ctrl-C reaches the whole process group, and is the parent's to act
    on: its stop lets the child finish within shutdown_timeout, and a second
    Ctrl-C cuts it (a KeyboardInterrupt in the child cut it at the first)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # `servekit serve` blocks its signals in the serving threads a child may fork from.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
