"""Async servers: every connection a task on one asyncio loop, under the usual hooks.

The loop is uvloop's when it is installed (``servekit[fast]``), asyncio's
otherwise; ``loop = "asyncio"`` or ``"uvloop"`` on the class forces one.

Two ways to run:

- ``server.serve_forever()`` from plain code blocks, running its own loop
  (in the calling thread), until ``shutdown()`` from any thread, or Ctrl-C
  in the main thread (see ``serve_forever``);
- inside a program's own loop, ``serve_forever()`` returns a coroutine:
  ``async with server: await server.serve_forever()``.

The hooks keep their meaning: ``verify_request`` (it may be a coroutine
function) runs before a connection gets its handler, ``handle_error`` logs
what a handler raised, ``service_actions`` runs every ``poll_interval``,
``server.stats`` counts, ``max_connections`` pauses accepting, and a stop
drains the connections within ``shutdown_timeout`` before cutting them.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
import socket
import ssl
import threading
from typing import TYPE_CHECKING, Any, Literal, Self, cast

from servekit._drain import plan
from servekit._oob import wants_oob
from servekit._preface import (
    PrefaceFailed,
    check_proxy_peer,
    handshake_timed_out,
    preface_deadline,
    read_proxy_header_async,
    remaining,
    tls_failed,
)
from servekit.aio._threads import HandlerThreads
from servekit.aio._threads import stop as stop_handler_threads
from servekit.aio.accept import Acceptor
from servekit.aio.handlers import AsyncBaseRequestHandler
from servekit.aio.stream import Stream, Watchdog
from servekit.limits import drop_datagram, report, too_long_datagram
from servekit.options import DEFAULT_MAX_HANDLER_THREADS
from servekit.sockets import (
    TCPServer,
    UDPServer,
    UnixDatagramServer,
    UnixStreamServer,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine

    from servekit.core import RequestHandlerFactory

    _Base = TCPServer
else:
    _Base = object

__all__ = [
    "AsyncServerMixIn",
    "AsyncTCPServer",
    "AsyncUDPServer",
    "AsyncUnixDatagramServer",
    "AsyncUnixStreamServer",
    "loop_for",
]

logger = logging.getLogger(__name__)

LoopChoice = Literal["auto", "asyncio", "uvloop"]


def loop_for(handler: Any, loop: LoopChoice) -> LoopChoice:
    """The loop to serve ``handler`` on: ``loop``, except that a handler with
    ``handle_oob`` gets asyncio's, whose transports read through the socket object,
    where an urgent byte is taken before the read passes its mark; uvloop reads in
    C and would lose it (docs/oob.md). ValueError if uvloop is asked for by name."""
    if loop == "asyncio" or not wants_oob(handler):
        return loop
    if loop == "uvloop":
        raise ValueError(
            f"{getattr(handler, '__name__', handler)} has handle_oob, which needs asyncio's "
            "event loop (uvloop reads past an urgent byte): use loop='asyncio' or 'auto'"
        )
    return "asyncio"


def run(coroutine: Coroutine[Any, Any, None], loop: LoopChoice = "auto") -> None:
    """Run ``coroutine`` to completion on uvloop (when installed, or required) or asyncio."""
    if loop != "asyncio":
        try:
            import uvloop  # type: ignore[import-not-found,unused-ignore]
        except ImportError:
            if loop == "uvloop":
                raise RuntimeError("loop='uvloop' but uvloop is not installed: "
                                   "pip install 'servekit[fast]'") from None  # fmt: skip
        else:
            uvloop.run(coroutine)
            return
    asyncio.run(coroutine)


def _loop_name(loop: asyncio.AbstractEventLoop) -> str:
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


def _call_in(loop: asyncio.AbstractEventLoop, callback: Callable[[], object]) -> bool:
    """Run ``callback`` in ``loop``: now if this is its thread (True), else soon (False)."""
    try:
        here = asyncio.get_running_loop() is loop
    except RuntimeError:
        here = False
    if here:
        callback()
    else:
        loop.call_soon_threadsafe(callback)
    return here


class AsyncServerMixIn(_Base):
    """Serve a source's requests as asyncio tasks; put it before the server class.

    The source is any request source (see ``servekit.core``): a socket server
    class, or a ``BaseServer`` subclass with ``fileno()`` and a non-blocking
    ``get_request()``. The loop drives the same hooks as the sync loop:
    get_request(), process_request() (here: start the request's task), then
    in the task verify_request(), finish_request() and shutdown_request() (and
    so close_request()); each may be overridden, and any but get_request() and
    process_request() may be a coroutine function, which the task awaits.

    A stream connection reaches verify_request(), finish_request() and the
    handler (``self.request``) as its ``servekit.aio.Stream``, after its PROXY
    header and TLS handshake: ``request.transport``, ``request.get_extra_info()``.
    """

    #: Which event loop serve_forever() starts: "auto" (uvloop if installed), "asyncio", "uvloop".
    loop: LoopChoice = "auto"

    #: The most requests in their handlers at once, for a source whose requests
    #: are not connections (max_connections bounds those): datagrams, jobs, rows.
    #: Past it a datagram is dropped (counted in stats.limits, logged) as a full
    #: socket buffer would drop it, and another source's requests wait in the
    #: source until one finishes; an unbounded server would queue tasks, and
    #: memory, for as long as a flood lasts.
    max_in_flight: int = 1024
    #: The most handlers' ``to_thread()`` calls running at once, each on a thread
    #: of the server's (see servekit.aio._threads); more wait their turn.
    max_handler_threads: int = DEFAULT_MAX_HANDLER_THREADS
    _aio_threads: HandlerThreads | None = None
    # The loop takes every request, through its reader on fileno() (see holds_request).
    _takes_held_requests = False

    _aio_loop: asyncio.AbstractEventLoop | None = None
    _aio_stop: asyncio.Event | None = None
    _aio_acceptor: Acceptor | None = None
    _aio_watchdog: Watchdog | None = None
    #: Set by a second Ctrl-C: the drain waits no longer.
    _aio_hurry: asyncio.Event | None = None
    #: Ctrl-Cs during this serve_forever() (the blocking one, in the main thread).
    _aio_interrupts = 0
    #: True while serving a source whose requests max_in_flight bounds.
    _aio_bounds_tasks = False
    #: True while serving datagrams whose closing hooks do nothing (see
    #: _closes_datagrams_for_nothing).
    _aio_quiet_close = False
    _aio_full = False

    def __init__(
        self,
        server_address: Any,
        RequestHandlerClass: RequestHandlerFactory,
        *args: Any,
        **kwargs: Any,
    ) -> None:
        if isinstance(RequestHandlerClass, type) and not issubclass(
            RequestHandlerClass, AsyncBaseRequestHandler
        ):
            raise TypeError(
                f"{RequestHandlerClass.__name__} is a sync handler: the async engine runs "
                "servekit.aio.AsyncStreamRequestHandler subclasses (async def handle). Serve a "
                "sync handler with concurrency='pool' or 'threads' instead."
            )
        self._aio_lock = threading.Lock()
        self._aio_stopped = threading.Event()
        self._aio_stopped.set()
        self._aio_tasks: set[asyncio.Task[None]] = set()
        super().__init__(server_address, RequestHandlerClass, *args, **kwargs)

    # -- running and stopping -------------------------------------------------

    def serve_forever(self, poll_interval: float = 0.5) -> Any:  # None, or a coroutine
        """Serve until shutdown(): blocking, or as a coroutine inside a running loop.

        Blocking in the main thread, with Python's default SIGINT handler, Ctrl-C
        stops as shutdown() does (the connections get ``shutdown_timeout`` to
        finish), and then raises KeyboardInterrupt from here, as the sync servers
        do; a second Ctrl-C meanwhile cuts the connections at once. The loop
        takes SIGINT as a callback of its own: asyncio.run() would raise the
        second KeyboardInterrupt inside whatever task or transport callback was
        running (tracebacks for each; uvloop can swallow it, and the stop then
        waits for all of ``shutdown_timeout``).
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            return self._serve(poll_interval)
        interruptible = (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        )
        self._aio_interrupts = 0
        choice = self.event_loop()
        if choice != self.loop:
            logger.info("%s: on asyncio's loop, not uvloop: the handler has handle_oob", self)
        run(self._serve(poll_interval, interruptible), choice)
        if self._aio_interrupts:
            raise KeyboardInterrupt
        return None

    def shutdown(self) -> None:
        """Stop serving; from any thread. Waits for the loop to finish, unless
        called from the loop's own thread (a handler, or code beside it)."""
        with self._aio_lock:
            self._shutdown_flag = True
            loop, stop = self._aio_loop, self._aio_stop
        if loop is None or stop is None:
            return
        try:
            here = _call_in(loop, stop.set)
        except RuntimeError:  # the loop closed meanwhile: serving is over
            return
        if not here:
            self._aio_stopped.wait()

    def handle_request(self) -> None:
        raise NotImplementedError(
            f"{type(self).__name__} serves with serve_forever(); "
            "handle_request() is for the sync servers"
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.shutdown()
        self.server_close()

    def event_loop(self) -> LoopChoice:
        """The loop serve_forever() starts (see loop_for)."""
        return loop_for(self.RequestHandlerClass, self.loop)

    async def _serve(self, poll_interval: float, interruptible: bool = False) -> None:
        loop = asyncio.get_running_loop()
        self._aio_stopped.clear()
        takes_sigint = False
        try:
            with self._aio_lock:  # shutdown() from another thread sees both, or neither
                if self._shutdown_flag:
                    return  # shutdown() came first
                self._aio_loop, self._aio_stop = loop, asyncio.Event()
            self._aio_hurry = asyncio.Event()
            if interruptible:
                loop.add_signal_handler(signal.SIGINT, self._interrupted)
                takes_sigint = True
            self._aio_watchdog = Watchdog(loop)
            logger.info("%s: serving on the %s event loop", self, _loop_name(loop))
            datagrams = None
            listener = getattr(self, "socket", None)  # a source need not be a socket
            if isinstance(listener, socket.socket):
                listener.setblocking(False)
            self._aio_bounds_tasks = not (
                listener is not None and self.socket_type == socket.SOCK_STREAM
            )
            self._aio_quiet_close = False
            if listener is not None and self.socket_type == socket.SOCK_DGRAM:
                self._aio_quiet_close = self._closes_datagrams_for_nothing()
                datagrams = await self._open_datagrams(loop)
            else:
                self._aio_acceptor = Acceptor(loop, self, self._arrived)
                self._aio_acceptor.start()
            service = loop.create_task(self._service_loop(poll_interval))
            try:
                await self._aio_stop.wait()
            finally:
                service.cancel()
                if self._aio_acceptor is not None:
                    self._aio_acceptor.stop()
                if datagrams is not None:
                    datagrams.taking = False
                stopping = loop.time()
                await self._drain()
                await self._stop_handler_threads(stopping)
                if datagrams is not None:
                    datagrams.transport.close()  # after the drain: replies go out through it
        finally:
            if takes_sigint:
                loop.remove_signal_handler(signal.SIGINT)  # back to default_int_handler
            with self._aio_lock:
                self._aio_loop = self._aio_stop = self._aio_acceptor = None
                self._shutdown_flag = False
            self._aio_hurry = None
            self._aio_stopped.set()

    def _interrupted(self) -> None:
        """SIGINT, as a callback of the loop (see serve_forever): the first stops
        gracefully, the next cuts the connections at once."""
        self._aio_interrupts += 1
        stop, hurry = self._aio_stop, self._aio_hurry
        if stop is None or hurry is None:
            return
        if self._aio_interrupts == 1:
            if self._aio_tasks and self.shutdown_timeout != 0:
                logger.info("%s: interrupted, stopping: %d request(s) in flight get up to %ss "
                            "(Ctrl-C again to cut them)",
                            self, len(self._aio_tasks), self.shutdown_timeout)  # fmt: skip
            stop.set()
            return
        if not hurry.is_set():
            logger.warning("%s: interrupted again: cut %d connection(s) still open",
                           self, self.cut_requests())  # fmt: skip
            hurry.set()

    async def _drain(self) -> None:
        """Let the requests finish within shutdown_timeout, then cut them (the
        policy of servekit._drain, which every model follows); a second Ctrl-C
        cuts them at once. Tasks still running after the grace are cancelled."""
        tasks = set(self._aio_tasks)
        if not tasks:
            return
        hurry = self._aio_hurry
        assert hurry is not None  # _serve made it

        def cut() -> None:
            if not hurry.is_set():  # else a second Ctrl-C has cut them already
                self._cut_late_requests()

        steps = plan(self, cut=cut)
        timeout = next(steps)
        try:
            while True:
                timeout = steps.send(await _all_done(tasks, timeout, hurry))
        except StopIteration as done:
            if done.value:
                return
        pending = [task for task in tasks if not task.done()]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)

    def _to_thread(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Awaitable[Any]:
        """A handler's to_thread(): ``fn`` on one of the server's handler threads."""
        threads = self._aio_threads
        if threads is None:
            threads = self._aio_threads = HandlerThreads(
                self.max_handler_threads, type(self).__name__
            )
        return asyncio.wrap_future(threads.submit(fn, args, kwargs))

    async def _stop_handler_threads(self, stopping: float) -> None:
        """After the drain: to_thread() calls still running (a handler that did not
        await one) get what is left of shutdown_timeout since the stop began."""
        threads, self._aio_threads = self._aio_threads, None
        if threads is None:
            return
        timeout = self.shutdown_timeout
        if timeout is not None:
            timeout = max(0.0, timeout - (asyncio.get_running_loop().time() - stopping))
        await stop_handler_threads(threads, self, timeout)

    async def _service_loop(self, poll_interval: float) -> None:
        while True:
            await asyncio.sleep(poll_interval)
            self.service_actions()

    # -- the request contract, driven by this loop ------------------------------

    def _arrived(self, request: Any, client_address: Any) -> None:
        """The source gave a request (a connection, a datagram, a job): account for
        it and hand it to process_request(), in the loop's thread, as the sync loop does."""
        self.request_accepted(request, client_address)
        try:
            outcome = self.process_request(request, client_address)
            if outcome is not None and inspect.isawaitable(outcome):  # an async override
                self._start(self._awaited(outcome, request, client_address))
        except Exception:
            self._report_error(request, client_address)
            self._close_now(request)

    def process_request(self, request: Any, client_address: Any) -> Any:
        """Serve the request in a task of its own: the async engine's hand-off, as a
        new thread is ThreadingMixIn's. The task opens the request (a connection's
        PROXY header and TLS handshake), awaits verify_request(), finish_request()
        and shutdown_request(); any of them may be a coroutine function.

        An override may call this, or be a coroutine function itself (the engine
        then runs it as the request's task)."""
        loop = self._aio_loop  # _start(), inlined: a call less per request
        assert loop is not None
        self._aio_tasks.add(loop.create_task(self._request_task(request, client_address)))

    # A coroutine function where the sync servers have a function: the
    # contract lets the async engine await any hook but the loop's own.
    async def finish_request(self, request: Any, client_address: Any) -> None:  # type: ignore[override]
        """Build the handler for the request and await its run(): setup(),
        handle(), finish()."""
        await self._async_handler(request, client_address).run()

    def shutdown_request(self, request: Any) -> Any:  # an override may be a coroutine function
        """End the request; for a connection, what was written still goes out first."""
        if request.__class__ is Stream:
            self.close_request(request)  # the transport sends what it holds, then closes
        else:
            super().shutdown_request(request)

    def close_request(self, request: Any) -> None:
        """Clean up after the request; for a connection, close its transport."""
        if request.__class__ is Stream:
            self._forget_request(request.sock)  # its TCP_INFO first: the transport closes it
            request.transport.close()
        else:
            super().close_request(request)

    def _start(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run a request's coroutine as a task; the coroutine leaves _aio_tasks
        itself, when it ends (a done callback would cost every held connection
        another 136 bytes)."""
        loop = self._aio_loop
        assert loop is not None
        self._aio_tasks.add(loop.create_task(coroutine))

    async def _awaited(self, outcome: Awaitable[Any], request: Any, client_address: Any) -> None:
        """A process_request() override's coroutine, as a request task."""
        try:
            await outcome
        except Exception:
            self._report_error(request, client_address)
        finally:
            self._task_done()

    async def _request_task(self, request: Any, client_address: Any) -> None:
        try:
            if isinstance(request, socket.socket):  # a connection: its preface first
                request, client_address = await self._open_request(request, client_address)
            allowed = self.verify_request(request, client_address)
            if allowed is not True and inspect.isawaitable(allowed):
                allowed = await allowed
            if not allowed:
                if self._access is not None:
                    self._access.refused(request)
                return
            self._counters.requests += 1  # Stats.request(), a call less per request
            # The bound method is not kept: this frame lives as long as the connection.
            if getattr(self.finish_request, "__func__", None) is not _FINISH_REQUEST:
                outcome = self.finish_request(request, client_address)  # maybe not async
                if inspect.isawaitable(outcome):
                    await outcome
                return
            # finish_request()'s steps, and run()'s, here: their frames would be
            # held as long as the connection is, 208 bytes each per idle one
            # (and, for a datagram, made and unmade for each).
            handler = self._async_handler(request, client_address)
            if type(handler).run is not AsyncBaseRequestHandler.run:
                await handler.run()
                return
            await handler.setup()
            try:
                await handler.handle()
            finally:
                await handler.finish()
        except Exception:
            self._report_error(request, client_address)
        finally:
            # A connection whose preface failed is still the socket: closed as one.
            if request.__class__ is not tuple or not self._aio_quiet_close:
                try:
                    closing: Any = self.shutdown_request(request)  # an override may be async
                    if closing is not None and inspect.isawaitable(closing):
                        await closing
                except Exception:
                    self._report_error(request, client_address)
            self._aio_tasks.discard(asyncio.current_task())  # _task_done(), a call less
            if self._aio_full:
                self._room_in_flight()

    def _closes_datagrams_for_nothing(self) -> bool:
        """True when shutdown_request() and close_request() of a datagram would run only
        the datagram servers' own, which do nothing: the task then skips the four calls
        (a tenth of a datagram's Python calls). Asked when serving starts; an override,
        on the class or the instance, runs as ever."""
        if vars(self).keys() & {"shutdown_request", "close_request"}:
            return False
        if self._access is not None:
            return False  # the connection log writes each datagram's line at its close
        cls = type(self)
        if (
            cls.shutdown_request is not AsyncServerMixIn.shutdown_request
            or cls.close_request is not AsyncServerMixIn.close_request
        ):
            return False
        after = cls.__mro__[cls.__mro__.index(AsyncServerMixIn) + 1 :]

        def next_one(name: str) -> Any:
            return next((vars(k)[name] for k in after if name in vars(k)), None)

        return (
            next_one("shutdown_request") is UDPServer.shutdown_request
            and next_one("close_request") is UDPServer.close_request
        )

    def _task_done(self) -> None:
        """The last step of a request's task: it leaves _aio_tasks (see _start)."""
        self._aio_tasks.discard(asyncio.current_task())
        if self._aio_full:
            self._room_in_flight()

    def _close_now(self, request: Any) -> None:
        """shutdown_request() for a request no task took (process_request() failed)."""
        closing: Any = self.shutdown_request(request)  # an override may be async
        if inspect.isawaitable(closing):
            self._start(self._awaited(closing, request, None))

    def _async_handler(self, request: Any, client_address: Any) -> AsyncBaseRequestHandler:
        """The handler for a request. A handler class is checked when the server
        is made; a factory that is not a class only now, by what it returns."""
        handler = self.RequestHandlerClass(request, client_address, self)
        if not isinstance(handler, AsyncBaseRequestHandler):
            raise TypeError(
                f"the handler factory returned an instance of {type(handler).__qualname__}, "
                "not an async handler: the async engine runs servekit.aio.AsyncBaseRequestHandler "
                "subclasses (async def handle). Serve a sync handler with "
                "concurrency='pool' or 'threads' instead."
            )
        return handler

    # -- connections and datagrams -------------------------------------------------

    async def _open_request(
        self, request: socket.socket, client_address: Any
    ) -> tuple[Stream, Any]:
        """A connected socket as finish_request() gets it: its ``Stream``, after the
        PROXY header and the TLS handshake if the server expects them, with the real
        client's address. (Any other request is finish_request()'s as it came.)"""
        request.setblocking(False)  # the loop's sock_recv() reads a PROXY header from it
        deadline = preface_deadline(self.handshake_timeout)
        try:
            client_address = await self._proxy_preface(request, client_address, deadline)
            stream = Stream(
                asyncio.get_running_loop(), self.idle_timeout, self._aio_watchdog, request
            )
            await self._open(request, stream, deadline)
        except PrefaceFailed as exc:
            raise report(self, client_address, exc, request) from None
        if self._access is not None:
            self._access.preface_done(request, stream, client_address)
        return stream, client_address

    async def _proxy_preface(
        self, conn: socket.socket, address: Any, deadline: float | None
    ) -> Any:
        """The real client's address from a PROXY header, when the server expects one."""
        if not self.proxy_protocol:
            return address
        check_proxy_peer(address, self.trusted_proxies)
        real = await read_proxy_header_async(conn, deadline)
        return address if real is None else real

    async def _open(self, conn: socket.socket, stream: Stream, deadline: float | None) -> None:
        """Make ``stream`` the protocol of ``conn``, after the TLS handshake if the
        server speaks TLS, within handshake_timeout."""
        loop = asyncio.get_running_loop()
        context = self.ssl_context
        if context is None:
            await loop.connect_accepted_socket(lambda: stream, conn)
            return
        try:
            async with asyncio.timeout(remaining(deadline, "TLS handshake")):
                await loop.connect_accepted_socket(lambda: stream, conn, ssl=context)
        except TimeoutError:
            failure = handshake_timed_out("TLS handshake")
        except (ssl.SSLError, OSError) as exc:
            failure = tls_failed(exc)
        else:
            return
        # Its bytes are not counted, as on the other models: after a TLS error the
        # transport has closed the socket already, after a timeout not yet.
        if self._access is not None:
            self._access.limit(conn, failure)  # before its line is written, just below
        self._forget_failed_handshake(conn)
        raise failure

    async def _open_datagrams(self, loop: asyncio.AbstractEventLoop) -> _Receiver:
        """The protocol (and its transport) that hands each datagram to a task. The
        transport reads up to 256 KiB, so a datagram over max_packet_size is seen
        whole, and dropped with a log line.

        It gets a duplicate of the socket: closing a transport closes its socket,
        and ``self.socket`` outlives it (until server_close(); serve_forever() may
        run again).
        """
        _, receiver = await loop.create_datagram_endpoint(
            lambda: _Receiver(self), sock=self.socket.dup()
        )
        return receiver

    def _datagram_received(
        self, data: bytes, address: Any, transport: asyncio.DatagramTransport
    ) -> None:
        max_size = getattr(self, "max_packet_size", 8192)
        if len(data) > max_size:
            drop_datagram(self, address, "max_packet_size", too_long_datagram(max_size))
            return
        if len(self._aio_tasks) >= self.max_in_flight:
            drop_datagram(
                self, address, "max_in_flight",
                f"{self.max_in_flight} datagrams already in their handlers; "
                "raise max_in_flight, or make the handlers faster",
            )  # fmt: skip
            return
        # As for connections, the task leaves _aio_tasks itself, in the step that
        # sent its reply: a done callback would run later, and a datagram that
        # came between would find max_in_flight still taken.
        self._arrived((data, transport), address)

    def _limit_idle(self, request: Any) -> None:
        """Nothing to do: the connection's Stream keeps idle_timeout, and the socket
        must stay non-blocking (with a timeout, the loop's sock_recv() would block
        the whole loop inside recv while a PROXY header trickles in)."""

    def ready_for_request(self) -> bool:
        if self._aio_bounds_tasks and len(self._aio_tasks) >= self.max_in_flight:
            if not self._aio_full:
                self._aio_full = True
                self._counters.limit("max_in_flight")
                logger.warning(
                    "%s: max_in_flight=%d requests in their handlers; taking no more "
                    "until one finishes",
                    self, self.max_in_flight,
                )  # fmt: skip
            return False
        return super().ready_for_request()

    def _room_in_flight(self) -> None:
        """A request ended while max_in_flight were running: take requests again."""
        if len(self._aio_tasks) < self.max_in_flight:
            self._aio_full = False
            logger.info(
                "%s: below max_in_flight=%d again; taking requests", self, self.max_in_flight
            )
            self.wake_loop()

    def wake_loop(self) -> None:
        acceptor, loop = self._aio_acceptor, self._aio_loop
        if acceptor is not None and loop is not None:
            _call_in(loop, acceptor.room)


_FINISH_REQUEST = AsyncServerMixIn.finish_request


async def _all_done(
    tasks: set[asyncio.Task[None]], seconds: float | None, hurry: asyncio.Event
) -> bool:
    """Wait until every task is done (True), or ``seconds`` pass, or ``hurry`` is
    set (a second Ctrl-C), unless it was set already (False)."""
    everything = asyncio.ensure_future(asyncio.wait(tasks))
    waits: set[asyncio.Future[Any]] = {everything}
    if not hurry.is_set():
        waits.add(asyncio.ensure_future(hurry.wait()))
    try:
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()  # the waits, not the tasks they wait for
    return all(task.done() for task in tasks)


class _Receiver(asyncio.DatagramProtocol):
    """A datagram server's protocol: each datagram to the server, until the stop."""

    # The transport comes with connection_made(): uvloop may deliver a
    # datagram before create_datagram_endpoint() has returned.
    transport: asyncio.DatagramTransport

    def __init__(self, server: AsyncServerMixIn) -> None:
        self.server = server
        # False once the server stops: those that come while the handlers in
        # flight finish get none (uvloop's datagram transports cannot pause).
        self.taking = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.DatagramTransport", transport)

    def datagram_received(self, data: bytes, address: Any) -> None:
        if self.taking:
            self.server._datagram_received(data, address, self.transport)
        else:
            logger.debug("%s: stopping; ignored a datagram from %r", self.server, address)


class AsyncTCPServer(AsyncServerMixIn, TCPServer):
    """TCP connections served by async handlers."""


class AsyncUnixStreamServer(AsyncServerMixIn, UnixStreamServer):
    """Unix stream connections served by async handlers."""


class AsyncUDPServer(AsyncServerMixIn, UDPServer):
    """UDP datagrams served by async handlers, one task per datagram."""


class AsyncUnixDatagramServer(AsyncServerMixIn, UnixDatagramServer):
    """Unix datagrams served by async handlers, one task per datagram."""
