"""``--metrics ADDRESS``: GET /metrics over HTTP/1.1, and the workers' reports.

The endpoint is http.server's request handler served by servekit itself, on
a thread of its own beside the application's servers, with limits of its own
(a few connections, short timeouts): a slow or stuck scraper holds at most
those, never a thread or a connection of the application.
"""

from __future__ import annotations

import contextlib
import http.server
import logging
import signal
import threading
from typing import TYPE_CHECKING, Final

from servekit._promtext import CONTENT_TYPE
from servekit.addresses import parse_address
from servekit.factory import _build
from servekit.metrics import HighWater, families, report_of
from servekit.options import ServerConfig

if TYPE_CHECKING:
    from collections.abc import Callable

    from servekit.core import BaseServer
    from servekit.prefork import WorkerChannel
    from servekit.sockets import TCPServer

__all__ = ["MetricsEndpoint", "Reporter", "collector"]

logger = logging.getLogger(__name__)

#: The endpoint's own limits: Prometheus keeps one connection per target, so
#: a few is room for a second scraper or a curl; a request line and headers
#: take a scraper milliseconds, so seconds are generous.
ENDPOINT_CONFIG: Final = ServerConfig(
    concurrency="threads",
    max_connections=4,
    idle_timeout=30.0,
    read_timeout=5.0,
    max_line_length=8192,
    shutdown_timeout=1.0,
)
#: How often a worker reports its servers to the supervisor, in seconds: what
#: a scrape under --workers may lag behind (and what a killed worker loses).
REPORT_INTERVAL: Final = 1.0

#: The signals the command's main thread minds; the threads here block them, or
#: one delivered to them would not wake the main thread's wait.
_MAIN_THREAD_SIGNALS: Final = frozenset({
    signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU,
})  # fmt: skip


def collector(servers: list[BaseServer]) -> Callable[[], str]:
    """The text of one process's servers, counters never going down."""
    high = HighWater()
    return lambda: high.render(families(report_of(server) for server in servers))


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: a scraper reuses its connection
    server_version = "servekit-metrics"
    timeout = ENDPOINT_CONFIG.read_timeout
    collect: Callable[[], str]

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def _answer(self, *, body: bool) -> None:
        if self.path.partition("?")[0] != "/metrics":
            self.send_error(404, "only /metrics here")
            return
        try:
            text = type(self).collect().encode()
        except Exception:
            logger.exception("metrics: cannot render them")
            self.send_error(500)
            return
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        if body:
            self.wfile.write(text)

    def log_message(self, format: str, *args: object) -> None:
        logger.debug("metrics: %s %s", self.address_string(), format % args)


class MetricsEndpoint:
    """The endpoint, bound at once (so a bad address is refused before anything
    serves), serving from start() until close()."""

    def __init__(self, address: str) -> None:
        """ValueError for an address that is not HOST:PORT; OSError if it cannot be bound."""
        if parse_address(address).transport != "tcp":
            raise ValueError(f"{address} is not a TCP address (HOST:PORT)")
        self._handler: type[_Handler] = type("MetricsHandler", (_Handler,), {})
        self.server: TCPServer = _build(address, self._handler, ENDPOINT_CONFIG)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        host = f"[{host}]" if ":" in str(host) else host
        return f"http://{host}:{port}/metrics"

    def start(self, collect: Callable[[], str]) -> None:
        self._handler.collect = staticmethod(collect)
        self._thread = _start_thread(self.server.serve_forever, "servekit metrics")
        logger.info("metrics at %s", self.url)

    def close(self) -> None:
        if self._thread is not None:
            self.server.shutdown()
            self._thread.join()
        self.server.server_close()

    def close_in_child(self) -> None:
        """In a forked worker: let go of the socket, nothing else (its thread is
        the supervisor's, and does not exist here)."""
        with contextlib.suppress(OSError):
            self.server.socket.close()


class Reporter:
    """In a prefork worker: send the servers' reports to the supervisor every
    REPORT_INTERVAL seconds, from a thread of its own, and once more at the end."""

    def __init__(self, servers: list[BaseServer], channel: WorkerChannel) -> None:
        self._servers = servers
        self._channel = channel
        self._stop = threading.Event()
        self._warned = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = _start_thread(self._run, "servekit metrics reports")

    def stop(self) -> None:
        """Stop, and send the last figures: a worker that exits keeps its count."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._send()

    def _run(self) -> None:
        while not self._stop.wait(REPORT_INTERVAL):
            self._send()

    def _send(self) -> None:
        for server in self._servers:
            if not self._channel.report(report_of(server).encode()) and not self._warned:
                self._warned = True  # a full pipe: the next report carries the totals
                logger.debug("worker: a metrics report was not sent (pipe full or too long)")


def _start_thread(target: Callable[[], object], name: str) -> threading.Thread:
    thread = threading.Thread(target=target, name=name, daemon=True)
    # Threads inherit the mask of the thread that starts them.
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _MAIN_THREAD_SIGNALS)
    try:
        thread.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    return thread


def bind_error(address: str, exc: OSError | ValueError) -> str:
    """The one line for an address the endpoint cannot have."""
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return f"--metrics {address}: cannot serve metrics there: {reason}"
