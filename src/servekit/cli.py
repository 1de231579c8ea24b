"""The command line: ``servekit serve MODULE:ATTR``.

``ATTR`` is a request handler class, served on every ``--listen`` address
with make_server's options, or a function that takes no arguments and
returns a ready server. One process serves every address, each on its own
thread. SIGTERM and SIGINT stop gracefully (stop accepting, let requests in
flight finish within ``--shutdown-timeout``); a second one stops at once.
SIGUSR1 logs every server's statistics; they are also logged every
``--status-interval`` seconds.

Errors in the arguments or in importing the target print one line and exit
with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any, NoReturn

import servekit
from servekit.factory import (
    CONCURRENCY_MODELS,
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_LINE_LENGTH,
    DEFAULT_MAX_PENDING,
    DEFAULT_MAX_WORKERS,
    DEFAULT_READ_TIMEOUT,
    DEFAULT_SHUTDOWN_TIMEOUT,
    make_server,
)
from servekit.handlers import BaseRequestHandler

if TYPE_CHECKING:
    from collections.abc import Sequence

    from servekit.core import BaseServer

__all__ = ["main"]

logger = logging.getLogger(__name__)

#: How often the one-line status is logged at INFO, in seconds.
DEFAULT_STATUS_INTERVAL = 60.0


class UsageError(Exception):
    """A mistake of the person at the command line: one line, exit status 2."""


def _limit(text: str) -> float | None:
    """A limit in seconds; "none" turns it off."""
    if text.lower() == "none":
        return None
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def _count(text: str) -> int | None:
    if text.lower() == "none":
        return None
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive count")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="servekit", description="Run servekit servers.")
    parser.add_argument("--version", action="version", version=f"servekit {servekit.__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="serve a handler class or a server factory",
        description="Serve MODULE:ATTR, a request handler class or a function returning a server.",
    )
    serve.add_argument("target", metavar="MODULE:ATTR")
    serve.add_argument(
        "--listen", action="append", metavar="ADDRESS",
        help="listen address, repeatable (default 127.0.0.1:8000); see docs/addresses.md",
    )  # fmt: skip
    serve.add_argument("--concurrency", choices=CONCURRENCY_MODELS, default="pool")
    serve.add_argument("--threads", type=int, default=DEFAULT_MAX_WORKERS,
                       help="worker threads of the pool")  # fmt: skip
    serve.add_argument("--max-pending", type=int, default=DEFAULT_MAX_PENDING)
    serve.add_argument("--max-connections", type=_count, default=DEFAULT_MAX_CONNECTIONS)
    serve.add_argument("--shutdown-timeout", type=_limit, default=DEFAULT_SHUTDOWN_TIMEOUT)
    serve.add_argument("--idle-timeout", type=_limit, default=DEFAULT_IDLE_TIMEOUT)
    serve.add_argument("--read-timeout", type=_limit, default=DEFAULT_READ_TIMEOUT)
    serve.add_argument("--max-line-length", type=_count, default=DEFAULT_MAX_LINE_LENGTH)
    serve.add_argument("--handshake-timeout", type=_limit, default=DEFAULT_HANDSHAKE_TIMEOUT)
    serve.add_argument("--certfile", help="TLS certificate chain (PEM)")
    serve.add_argument("--keyfile", help="TLS private key, if not in --certfile")
    serve.add_argument("--cafile", help="require client certificates signed by these CAs")
    serve.add_argument("--proxy-protocol", action="store_true",
                       help="read a PROXY v1/v2 header from trusted proxies")  # fmt: skip
    serve.add_argument("--trusted-proxy", action="append", default=[], metavar="NETWORK",
                       help="address, network or 'unix' allowed to send PROXY headers")  # fmt: skip
    serve.add_argument("--log-level", default="INFO",
                       choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"])  # fmt: skip
    serve.add_argument("--status-interval", type=_limit, default=DEFAULT_STATUS_INTERVAL,
                       help="seconds between status lines; 'none' for none")  # fmt: skip
    return parser


def load_target(spec: str) -> Any:
    """Import ``MODULE:ATTR`` (ATTR may be dotted) from the current directory too."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"{spec!r} is not MODULE:ATTR (for example echo:EchoHandler)")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise UsageError(f"cannot import {module_name!r}: {type(exc).__name__}: {exc}") from exc
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise UsageError(f"{module_name!r} has no attribute {attr!r}") from None
    return target


def make_servers(target: Any, args: argparse.Namespace) -> list[BaseServer]:
    """The servers ``target`` asks for: one per --listen, or the one a factory returns."""
    if isinstance(target, type) and issubclass(target, BaseRequestHandler):
        return [_make(address, target, args) for address in args.listen or ["127.0.0.1:8000"]]
    if isinstance(target, type) or not callable(target):
        raise UsageError(
            f"{args.target} is neither a request handler class nor a function returning a server"
        )
    if args.listen:
        raise UsageError(f"{args.target} makes its own server: --listen does not apply")
    server = target()
    if not isinstance(server, servekit.BaseServer):
        raise UsageError(f"{args.target}() returned {type(server).__name__}, not a server")
    return [server]


def _make(address: str, handler: type[BaseRequestHandler], args: argparse.Namespace) -> BaseServer:
    try:
        return make_server(
            address, handler,
            concurrency=args.concurrency, max_workers=args.threads, max_pending=args.max_pending,
            max_connections=args.max_connections, shutdown_timeout=args.shutdown_timeout,
            idle_timeout=args.idle_timeout, read_timeout=args.read_timeout,
            max_line_length=args.max_line_length, handshake_timeout=args.handshake_timeout,
            certfile=args.certfile, keyfile=args.keyfile, cafile=args.cafile,
            proxy_protocol=args.proxy_protocol, trusted_proxies=args.trusted_proxy,
        )  # fmt: skip
    except (ValueError, OSError) as exc:
        raise UsageError(f"cannot serve {address}: {exc}") from exc


class Runner:
    """Serve until a signal: one thread per server, the main thread minds signals."""

    def __init__(self, servers: list[BaseServer], status_interval: float | None) -> None:
        self.servers = servers
        self.status_interval = status_interval
        self._stop = threading.Event()
        self._signals = 0

    def _on_stop_signal(self, signum: int, frame: object) -> None:
        self._signals += 1
        if self._signals == 1:
            logger.info("%s: stopping gracefully (again to stop at once)", signal.strsignal(signum))
            self._stop.set()
            return
        logger.warning("%s again: stopping at once", signal.strsignal(signum))
        for server in self.servers:
            server._cut_requests()
        os._exit(1)

    def _on_usr1(self, signum: int, frame: object) -> None:
        self.log_status()

    def log_status(self) -> None:
        for server in self.servers:
            logger.info("status %s: %s", server, server.stats.summary())

    def run(self) -> int:
        previous = {
            sig: signal.signal(sig, handler)
            for sig, handler in (
                (signal.SIGTERM, self._on_stop_signal),
                (signal.SIGINT, self._on_stop_signal),
                (signal.SIGUSR1, self._on_usr1),
            )
        }
        loops = [
            threading.Thread(target=server.serve_forever, name=f"serve {server}", daemon=True)
            for server in self.servers
        ]
        try:
            for loop in loops:
                loop.start()
            while not self._stop.wait(self.status_interval):
                self.log_status()
            self._close(loops)  # our handlers stay: a second signal must still stop at once
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 0

    def _close(self, loops: list[threading.Thread]) -> None:
        closers = [
            threading.Thread(target=lambda s=server: (s.shutdown(), s.server_close()))
            for server in self.servers
        ]
        for closer in closers:
            closer.start()
        for closer in closers + loops:
            closer.join()
        logger.info("stopped")


def main(argv: Sequence[str] | None = None) -> NoReturn:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        servers = make_servers(load_target(args.target), args)
    except UsageError as exc:
        print(f"servekit: error: {exc}", file=sys.stderr)  # noqa: T201 - the CLI's own output
        sys.exit(2)
    sys.exit(Runner(servers, args.status_interval).run())
