"""The command line: ``servekit serve MODULE:ATTR``.

``ATTR`` is a request handler class, served on every ``--listen`` address
with make_server's options, or a function that takes no arguments and
returns a ready server. With ``--source MODULE:ATTR`` (a request source
class that is not a socket), each ``--listen`` address is the source's.
One process serves every address, each on its own thread. SIGTERM and
SIGINT stop gracefully (stop accepting, let requests in flight finish
within ``--shutdown-timeout``); a second one stops at once. SIGUSR1 logs
every server's statistics; they are also logged every ``--status-interval``
seconds.

Errors in the arguments or in importing the target print one line and exit
with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import logging
import math
import os
import random
import signal
import socket
import sys
import threading
import time
from collections import deque
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import servekit
from servekit import _cliconfig, _logsetup, _process, _reload, _systemd, access, options
from servekit._metrics_http import MetricsEndpoint, Reporter, bind_error, collector
from servekit._signalguard import SIGNAL_LOOK
from servekit.aio.handlers import AsyncBaseRequestHandler
from servekit.aio.server import AsyncServerMixIn, loop_for
from servekit.factory import _build, _describe, make_server, make_source_server, tls_context
from servekit.handlers import BaseRequestHandler
from servekit.metrics import WorkerReports
from servekit.options import CONCURRENCY_MODELS, QUEUE_OPTIONS, ServerConfig
from servekit.prefork import WORKER_BOOT_FAILED, Supervisor, WorkerChannel
from servekit.rpc import _rpcgen_cli as rpcgen_cli
from servekit.rpc import rpcbind
from servekit.rpc import server as rpc_server
from servekit.rpc.program import Program
from servekit.sockets import TCPServer
from servekit.sql import _cli as queue_cli
from servekit.sql.source import is_queue_address

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence

    from servekit.core import BaseServer

__all__ = ["main"]

logger = logging.getLogger(__name__)

#: How often the one-line status is logged at INFO, in seconds.
DEFAULT_STATUS_INTERVAL = 60.0
#: A worker whose serving loop sends no heartbeat for this long is stuck (a
#: synchronous handler that hangs, a deadlock) and is replaced; loops beat at
#: least every poll_interval (0.5 s), so 30 s leaves a wide margin.
DEFAULT_WORKER_TIMEOUT = 30.0


class UsageError(Exception):
    """A mistake of the person at the command line: one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """Errors in one line, ``servekit: error: ...``, as every other error here;
    the usage is one ``--help`` away, not printed over the mistake."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # No abbreviations: --keyfile-password SECRET would be taken for
        # --keyfile-password-file, and a later flag could change what one means.
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        _usage_error(UsageError(message))


def _option(name: str) -> Callable[[str], Any]:
    """The type function of option ``name``, from servekit.options."""

    def parse(text: str) -> Any:
        try:
            return options.parse(name, text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc).partition(": ")[2]) from None

    parse.__name__ = name
    return parse


def _seconds(flag: str, *, none: bool = True) -> Callable[[str], float | None]:
    def parse(text: str) -> float | None:
        if none and text.strip().lower() == "none":
            return None
        try:
            value = float(text)
        except ValueError:
            value = -1.0
        if not math.isfinite(value) or value <= 0:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a number of seconds > 0" + (" or 'none'" if none else "")
            )
        return value

    parse.__name__ = flag
    return parse


def _umask(text: str) -> int:
    try:
        return _process.parse_umask(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


_umask.octal = True  # type: ignore[attr-defined]  # a TOML integer is written in octal


def _whole(flag: str, minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= {minimum}")
        return value

    parse.__name__ = flag
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="servekit", description="Run servekit servers.")
    parser.add_argument("--version", action="version", version=f"servekit {servekit.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    serve = commands.add_parser(
        "serve",
        help="serve a handler class or a server factory",
        description="Serve MODULE:ATTR, a request handler class or a function returning a server.",
    )
    serve.add_argument("target", metavar="MODULE:ATTR", nargs="?", default=_UNSET,
                       help="what to serve (or app in the -c file, or SERVEKIT_APP)")  # fmt: skip
    serve.add_argument("-c", "--config", dest="config_file", metavar="FILE",
                       help="a TOML file of options: make_server's names, plus app, listen "
                       "and workers; the command line and SERVEKIT_* variables win over it "
                       "(see docs/cli.md)")  # fmt: skip
    serve.add_argument("--check-config", action="store_true",
                       help="check the configuration, print each option's value and source, "
                       "and exit")  # fmt: skip
    serve.add_argument("--json", action="store_true", help="--check-config: as JSON")
    serve.add_argument(
        "--listen", action="append", metavar="ADDRESS",
        help="listen address, repeatable (default 127.0.0.1:8000); see docs/addresses.md",
    )  # fmt: skip
    serve.add_argument(
        "--source", metavar="MODULE:ATTR", default=_UNSET,
        help="a request source class that is not a socket (a servekit.BaseServer subclass "
        "taking (address, handler)); each --listen ADDRESS is given to it as it is",
    )  # fmt: skip
    serve.add_argument("--concurrency", choices=CONCURRENCY_MODELS, default=_UNSET,
                       help="how requests run (default: pool)")  # fmt: skip
    serve.add_argument("--loop", choices=["auto", "asyncio", "uvloop"], default=_UNSET,
                       help="--concurrency async: its loop (default: auto, uvloop if any)",
                       )  # fmt: skip
    for option in options.OPTIONS.values():
        if option.name in _NOT_ON_THE_COMMAND_LINE:
            continue
        # Given or not matters (a pool option for another model is refused):
        # the default is filled in later, and shown in --help.
        serve.add_argument(
            option.cli_flag, dest=option.name, type=_option(option.name), default=_UNSET,
            metavar="N" if option.kind == "count" else "SECONDS",
            help=f"{option.help} (default: {_shown(option.default)})",
        )  # fmt: skip
    serve.add_argument("--certfile", default=_UNSET, help="TLS certificate chain (PEM)")
    serve.add_argument("--keyfile", default=_UNSET, help="TLS private key, if not in --certfile")
    serve.add_argument("--cafile", default=_UNSET,
                       help="ask for client certificates signed by these CAs")  # fmt: skip
    serve.add_argument("--client-cert", choices=["optional", "required"], default=_UNSET,
                       help="with --cafile: refuse clients without a certificate, or let them "
                       "in (default: required)")  # fmt: skip
    serve.add_argument("--keyfile-password-file", metavar="FILE", default=_UNSET,
                       help="the encrypted key's password, read from this file (or give it in "
                       "SERVEKIT_KEYFILE_PASSWORD; never on the command line)")  # fmt: skip
    serve.add_argument("--tls-min-version", choices=["1.2", "1.3"], default=_UNSET,
                       help="the oldest TLS version accepted (default: 1.2)")  # fmt: skip
    serve.add_argument("--tls-ciphers", metavar="CIPHERS", default=_UNSET,
                       help="OpenSSL cipher list for TLS 1.2 (default: the system's)")  # fmt: skip
    serve.add_argument("--proxy-protocol", action="store_true", default=_UNSET,
                       help="read a PROXY v1/v2 header from trusted proxies")  # fmt: skip
    serve.add_argument("--trusted-proxy", action="append", metavar="NETWORK",
                       help="address, network or 'unix' allowed to send PROXY headers")  # fmt: skip
    serve.add_argument("--no-rpcbind", action="store_true", default=_UNSET,
                       help="an RPC program: leave the host's rpcbind alone")  # fmt: skip
    serve.add_argument("--workers", type=_whole("workers", 1), default=_UNSET,
                       help="prefork: this many worker processes under a supervisor "
                       "(default: one process, no supervisor)")  # fmt: skip
    serve.add_argument("--worker-timeout", type=_seconds("worker-timeout"), default=_UNSET,
                       help="--workers: kill a worker whose serving loop is silent this long "
                       f"(default: {DEFAULT_WORKER_TIMEOUT:g})")  # fmt: skip
    serve.add_argument("--max-requests", type=_whole("max-requests", 1), default=_UNSET,
                       help="--workers: restart a worker after this many requests "
                       "(default: none)")  # fmt: skip
    serve.add_argument("--max-requests-jitter", type=_whole("max-requests-jitter", 0),
                       default=_UNSET,
                       help="--max-requests: add up to this many at random, so workers "
                       "restart apart (default: 0)")  # fmt: skip
    serve.add_argument("--reuse-port", action="store_true", default=_UNSET,
                       help="set SO_REUSEPORT on the listening sockets")  # fmt: skip
    serve.add_argument("--pid", metavar="FILE", default=_UNSET,
                       help="write the pid of the process that takes signals here (the "
                       "supervisor under --workers); removed at exit")  # fmt: skip
    serve.add_argument("--user", default=_UNSET,
                       help="started as root: bind, then serve as this user "
                       "(name or uid)")  # fmt: skip
    serve.add_argument("--group", default=_UNSET,
                       help="with or without --user: serve as this group (default: the "
                       "user's own)")  # fmt: skip
    serve.add_argument("--umask", type=_umask, default=_UNSET, metavar="MODE",
                       help="the process's umask, octal (e.g. 027)")  # fmt: skip
    serve.add_argument("--reload", action="store_true", default=_UNSET,
                       help="development: serve the code anew when a .py file under the "
                       "working directory or --app-dir changes")  # fmt: skip
    serve.add_argument("--chdir", metavar="DIR", default=_UNSET,
                       help="change to this directory first (before --pid and the "
                       "import)")  # fmt: skip
    serve.add_argument("--app-dir", metavar="DIR", default=_UNSET,
                       help="import MODULE:ATTR from this directory (as well as the "
                       "current one)")  # fmt: skip
    serve.add_argument("--log-level", default=_UNSET,
                       choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
                       help="(default: INFO)")  # fmt: skip
    serve.add_argument("--log-config", metavar="FILE", type=_logsetup.check_log_config,
                       default=_UNSET,
                       help="a logging.config dictionary, JSON or TOML (by the file's "
                       "extension), in place of servekit's own set-up (default: none)")  # fmt: skip
    serve.add_argument("--log-file", metavar="FILE", default=_UNSET,
                       help="servekit's log lines go to this file, appended, not stderr; "
                       "SIGUSR2 reopens it (default: stderr)")  # fmt: skip
    serve.add_argument("--access-log", metavar="FILE", default=_UNSET,
                       help="the connection log: a line per connection or datagram, to this "
                       "file or - for stderr (default: none)")  # fmt: skip
    serve.add_argument("--access-log-format", metavar="FORMAT", default=_UNSET,
                       type=_logsetup.check_access_format,
                       help="the connection log's line, a format over named fields (see "
                       "docs/cli.md; default: "
                       f"{access.DEFAULT_FORMAT.replace('%', '%%')})")  # fmt: skip
    serve.add_argument("--status-interval", type=_seconds("status-interval"),
                       default=_UNSET,
                       help="seconds between status lines; 'none' for none "
                       f"(default: {DEFAULT_STATUS_INTERVAL:g})")  # fmt: skip
    serve.add_argument("--metrics", metavar="ADDRESS", default=_UNSET,
                       help="serve Prometheus metrics at http://ADDRESS/metrics, e.g. "
                       "127.0.0.1:9100 (default: none)")  # fmt: skip
    rpcbind_command = commands.add_parser(
        "rpcbind",
        help="a small rpcbind and portmapper (versions 2, 3 and 4)",
        description="Serve rpcbind (program 100000, versions 2, 3 and 4): by default where "
        "rpcbind does (port 111 over TCP and UDP, and unix:/run/rpcbind.sock). SET and UNSET "
        "are taken from loopback and the local socket only.",
    )
    rpcbind_command.add_argument(
        "--listen", action="append", metavar="ADDRESS",
        help="repeatable (default: tcp://0.0.0.0:111, udp://0.0.0.0:111, "
        "unix:/run/rpcbind.sock)",
    )  # fmt: skip
    rpcbind_command.add_argument("--log-level", default="INFO",
                         choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"])  # fmt: skip
    rpcinfo_command = commands.add_parser(
        "rpcinfo",
        help="rpcinfo's -p, -t, -u and -n: what a host's rpcbind lists, and pings",
        description="rpcinfo -p [HOST], rpcinfo [-n PORT] -t|-u HOST PROG [VERS]: rpcinfo's "
        "options, output and exit status.",
        add_help=False, prefix_chars="\0",  # every argument is rpcinfo's, as rpcinfo reads it
    )  # fmt: skip
    rpcinfo_command.add_argument("rpcinfo_args", nargs=argparse.REMAINDER)
    rpcgen_cli.add_parser(commands)
    queue_cli.add_parser(commands)
    return parser


#: An option not given: told apart from "none", which turns a limit off.
_UNSET: Any = type("_Unset", (), {"__repr__": lambda self: "default"})()

# make_server takes these, the command line does not.
_NOT_ON_THE_COMMAND_LINE: frozenset[str] = frozenset()


#: The supervisor's servers only hold the listening sockets, and serve nothing:
#: every limit that may be off is off.
_LIMITS_OFF: dict[str, Any] = {
    option.name: None for option in options.OPTIONS.values() if option.none
}
_LISTENER = replace(ServerConfig(concurrency="sync"), **_LIMITS_OFF)


def _cli_options() -> list[str]:
    return [name for name in options.OPTIONS if name not in _NOT_ON_THE_COMMAND_LINE]


def _shown(default: object) -> str:
    return (
        "none"
        if default is None
        else f"{default:g}"
        if isinstance(default, float)
        else str(default)
    )


#: The defaults of serve's own options (those of make_server are servekit.options').
_COMMAND_DEFAULTS: dict[str, Any] = {
    "concurrency": "pool", "certfile": None, "keyfile": None, "cafile": None,
    "proxy_protocol": False, "no_rpcbind": False, "workers": None, "log_level": "INFO",
    "status_interval": DEFAULT_STATUS_INTERVAL, "source": None, "reuse_port": False,
    "pid": None, "user": None, "group": None, "umask": None, "chdir": None, "app_dir": None,
    "reload": False,
    "client_cert": "required", "keyfile_password_file": None, "tls_min_version": None,
    "tls_ciphers": None,
    "metrics": None,
    "log_config": None, "log_file": None, "access_log": None,
    "access_log_format": access.DEFAULT_FORMAT,
}  # fmt: skip

#: The variable that may hold an encrypted key's password (a flag would show it in ps).
KEYFILE_PASSWORD_VARIABLE = "SERVEKIT_KEYFILE_PASSWORD"


def configure(
    parser: argparse.ArgumentParser, args: argparse.Namespace, environ: Mapping[str, str]
) -> None:
    """What the command line left out, from SERVEKIT_* variables, then the -c file,
    then the defaults of serve's own options; ``args.origins`` says which gave each."""
    if args.json and not args.check_config:
        raise UsageError("--json goes with --check-config")
    try:
        args.origins = _cliconfig.layer(
            _serve_parser(parser), args, unset=_UNSET, environ=environ, path=args.config_file
        )
    except _cliconfig.ConfigError as exc:
        raise UsageError(str(exc)) from None
    for name, default in _COMMAND_DEFAULTS.items():
        if getattr(args, name) is _UNSET:
            setattr(args, name, default)
    if args.trusted_proxy is None:
        args.trusted_proxy = []
    args.keyfile_password = environ.get(KEYFILE_PASSWORD_VARIABLE)
    if args.target is _UNSET:
        raise UsageError(
            "nothing to serve: give MODULE:ATTR, app in the configuration file (-c), "
            "or SERVEKIT_APP"
        )


def _serve_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    serve: argparse.ArgumentParser = commands.choices["serve"]
    return serve


def _named(args: argparse.Namespace, name: str, flag: str) -> str:
    """How to name an option in an error: as its source gave it."""
    key = _cliconfig.key_of(name)
    origin = getattr(args, "origins", {}).get(key)
    if origin == _cliconfig.ENVIRONMENT:
        return _cliconfig.ENV_PREFIX + key.upper()
    if origin == _cliconfig.FILE:
        return f"{args.config_file}: {key}"
    return flag


def check_configuration(args: argparse.Namespace) -> str:
    """--check-config: the application imports; each option's value and source."""
    load_target(args.target)
    values = {_cliconfig.key_of(dest): value for dest, value in vars(args).items()}
    values["rpcbind"] = not args.no_rpcbind
    if args.umask is not None:
        values["umask"] = f"{args.umask:03o}"  # as a shell's umask shows it
    return _cliconfig.describe(values, args.origins, as_json=args.json)


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse what would be ignored, then fill in the defaults of make_server's options
    (configure() has filled those of serve's own); UsageError names the flag."""
    pool = args.concurrency == "pool"
    given = {name: value is not _UNSET for name, value in vars(args).items()}
    needs = {
        "--threads": ("max_workers", pool, "--concurrency pool"),
        "--max-pending": ("max_pending", pool, "--concurrency pool"),
        "--loop": ("loop", args.concurrency == "async", "--concurrency async"),
        "--max-handler-threads": (
            "max_handler_threads", args.concurrency == "async", "--concurrency async",
        ),
        "--trusted-proxy": ("trusted_proxy", args.proxy_protocol, "--proxy-protocol"),
        "--worker-timeout": ("worker_timeout", args.workers is not None, "--workers N"),
        "--max-requests": (
            "max_requests", args.workers is not None,
            "--workers N (a single process has no supervisor to restart it)",
        ),
        "--max-requests-jitter": (
            "max_requests_jitter", given["max_requests"], "--max-requests",
        ),
    }  # fmt: skip
    for flag, (name, applies, what) in needs.items():
        if given[name] and getattr(args, name) != [] and not applies:
            raise UsageError(f"{_named(args, name, flag)} does nothing without {what}")
    _queue_source(args)
    if args.source is None:
        queue_flags = [options.OPTIONS[n].cli_flag for n in sorted(QUEUE_OPTIONS) if given[n]]
        if queue_flags:
            raise UsageError(
                f"{', '.join(queue_flags)}: queue options do nothing without a queue to serve "
                "(--listen sqlite:FILE or --listen postgresql://...)"
            )
    else:
        _check_source_arguments(args, given)
    defaults: dict[str, Any] = {option.name: option.default for option in options.OPTIONS.values()}
    defaults.update(
        loop="auto", worker_timeout=DEFAULT_WORKER_TIMEOUT, max_requests=None,
        max_requests_jitter=0,
    )  # fmt: skip
    for name, default in defaults.items():
        if getattr(args, name, None) is _UNSET:
            setattr(args, name, default)
    args.config = server_config(args)


#: The --source a queue's address (sqlite:, postgresql://) stands for.
QUEUE_SOURCE = "servekit.sql.source:QueueServer"
_QUEUE_FLAGS = frozenset(options.OPTIONS[name].cli_flag for name in QUEUE_OPTIONS)


def _queue_source(args: argparse.Namespace) -> None:
    """--listen with a queue's URL: serve the queue's rows (the source QUEUE_SOURCE)."""
    queues = [address for address in args.listen or [] if is_queue_address(address)]
    if not queues:
        return
    if len(queues) != len(args.listen):
        raise UsageError(
            "--listen: a queue's rows and a socket's requests are not served by one handler; "
            "serve the queue and the sockets with two commands"
        )
    if args.source is not None and args.source != QUEUE_SOURCE:
        raise UsageError(f"--source {args.source}: {queues[0]} is a queue, not that source's")
    args.source = QUEUE_SOURCE


def _check_source_arguments(args: argparse.Namespace, given: dict[str, bool]) -> None:
    """--source: its addresses are the source's, and socket options do not apply."""
    _split_target(args.source)
    if not args.listen:
        raise UsageError("--source needs --listen ADDRESS: what the source reads from")
    takes = options.ANY_SOURCE_OPTIONS | (QUEUE_OPTIONS if args.source == QUEUE_SOURCE else set())
    socket_flags = [
        options.OPTIONS[name].cli_flag
        for name in _cli_options()
        if given[name] and name not in takes
    ]
    socket_flags += [
        flag
        for flag, value in (
            ("--certfile", args.certfile), ("--keyfile", args.keyfile),
            ("--cafile", args.cafile), ("--proxy-protocol", args.proxy_protocol),
        )
        if value
    ]  # fmt: skip
    queue_flags = [flag for flag in socket_flags if flag in _QUEUE_FLAGS]
    if queue_flags:
        raise UsageError(
            f"{', '.join(queue_flags)}: queue options do nothing for --source {args.source} "
            "(they are a queue's: --listen sqlite:FILE or postgresql://...)"
        )
    if socket_flags:
        served = "a queue" if args.source == QUEUE_SOURCE else f"--source {args.source}"
        raise UsageError(
            f"{', '.join(socket_flags)}: socket options do nothing for {served}, "
            "a request source that is not a socket"
        )
    # Its defaults are a socket's limits: for a source, leave them out of the config.
    for name in _cli_options():
        if name not in takes:
            setattr(args, name, options.OPTIONS[name].default)


def _keyfile_password(args: argparse.Namespace) -> str | None:
    """The key's password: --keyfile-password-file's first line, or the variable's."""
    from_variable: str | None = getattr(args, "keyfile_password", None)
    path = args.keyfile_password_file
    if path is None:
        return from_variable
    if from_variable is not None:
        raise UsageError(
            f"--keyfile-password-file and {KEYFILE_PASSWORD_VARIABLE} both give the key's "
            "password: keep one"
        )
    try:
        with open(path, encoding="utf-8") as file:
            return file.readline().rstrip("\r\n")
    except OSError as exc:
        raise UsageError(f"--keyfile-password-file {path}: {exc.strerror}") from None


def server_config(args: argparse.Namespace) -> ServerConfig:
    """make_server's options from the arguments, checked; UsageError says what is wrong."""
    try:
        return ServerConfig(
            concurrency=args.concurrency,
            certfile=args.certfile, keyfile=args.keyfile, cafile=args.cafile,
            client_cert=args.client_cert, keyfile_password=_keyfile_password(args),
            tls_min_version=args.tls_min_version, tls_ciphers=args.tls_ciphers,
            proxy_protocol=args.proxy_protocol, trusted_proxies=args.trusted_proxy,
            rpcbind=not args.no_rpcbind, reuse_port=args.reuse_port,
            **{name: getattr(args, name) for name in _cli_options()},
        )  # fmt: skip
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None


def load_target(spec: str) -> Any:
    """Import ``MODULE:ATTR`` (ATTR may be dotted) from the current directory too."""
    module_name, attr = _split_target(spec)
    _add_working_directory()
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


def _split_target(spec: str) -> tuple[str, str]:
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"{spec!r} is not MODULE:ATTR (for example echo:EchoHandler)")
    return module_name, attr


def _add_working_directory() -> None:
    """Import the target from the working directory, as ``python -m`` would.

    The ``servekit`` script's sys.path starts with its own folder (a venv's
    bin/), not the working directory, where the application usually is.
    """
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


def make_servers(target: Any, args: argparse.Namespace) -> list[BaseServer]:
    """The servers ``target`` asks for: one per --listen, or the one a factory returns."""
    if args.source is not None:
        return _make_from_source(target, args)
    if _is_handler_class(target):
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


def _make_from_source(handler: Any, args: argparse.Namespace) -> list[BaseServer]:
    """--source: one server per --listen address, each the source's own."""
    if not _is_handler_class(handler):
        raise UsageError(f"--source needs a request handler class; {args.target} is not one")
    source = load_target(args.source)
    servers = []
    for address in args.listen:
        try:
            servers.append(make_source_server(source, address, handler, config=args.config))
        except (ValueError, TypeError, OSError) as exc:
            raise UsageError(f"cannot serve {address} from {args.source}: {exc}") from exc
    for server in servers:
        if isinstance(server, AsyncServerMixIn):
            server.loop = args.loop
    return servers


def _is_handler_class(target: Any) -> bool:
    """A handler class, or what make_server serves as one (an RPC program)."""
    return isinstance(target, Program) or (
        isinstance(target, type)
        and issubclass(target, (BaseRequestHandler, AsyncBaseRequestHandler))
    )


def _make(
    address: str, handler: type[Any], args: argparse.Namespace, shown: str | None = None
) -> BaseServer:
    if args.loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
        raise UsageError("--loop uvloop, but uvloop is not installed: pip install 'servekit[fast]'")
    if args.concurrency == "async":
        try:
            loop_for(handler, args.loop)  # a handler the loop cannot serve: before binding
        except ValueError as exc:
            raise UsageError(f"cannot serve {shown or address}: {exc}") from None
    try:
        server = make_server(address, handler, config=args.config)
    except (ValueError, TypeError, OSError) as exc:
        raise UsageError(f"cannot serve {shown or address}: {exc}") from exc
    if isinstance(server, AsyncServerMixIn):
        server.loop = args.loop
    return server


_RUNNER_SIGNALS = frozenset(
    {signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP}
)


def reopen_logs() -> None:
    """SIGUSR2: reopen the log files (logrotate moved them); said in the new ones."""
    logger.info("SIGUSR2: reopened %d log file(s)", _logsetup.reopen())


class Runner:
    """Serve until a signal: one thread per server, the main thread minds signals.

    The signal handlers only note the signal and wake the main thread, which
    then acts (logs, stops, cuts): a handler that logged itself could run while
    the main thread was inside a write to the same stream, and the logging
    module's stream is not reentrant (RuntimeError, and the stop was lost).
    """

    def __init__(
        self,
        servers: list[BaseServer],
        status_interval: float | None,
        *,
        escalate: bool = True,
        notifier: _systemd.Notifier | None = None,
    ) -> None:
        self.servers = servers
        self.status_interval = status_interval
        #: systemd's notifications (one process; a prefork's are the supervisor's).
        self.notifier = notifier or _systemd.Notifier(None)
        # In a prefork worker a repeated signal is not a request to hurry: a
        # service manager signals every process of the group, and the supervisor
        # forwards its own; stopping at once is the supervisor's call (SIGKILL).
        self.escalate = escalate
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._pending: deque[int] = deque()
        self._stop_signals = 0

    def stop(self) -> None:
        """Stop gracefully, as on a first SIGTERM; from any thread."""
        self._stop.set()
        self._wake.set()

    def _on_signal(self, signum: int, frame: object) -> None:
        self._pending.append(signum)
        self._wake.set()

    def _handle_signals(self) -> None:
        """Act on the signals noted since the last look (in the main thread)."""
        while self._pending:
            signum = self._pending.popleft()
            if signum == signal.SIGUSR1:
                self.log_status()
                continue
            if signum == signal.SIGUSR2:
                reopen_logs()
                continue
            if signum == signal.SIGHUP:
                self.notifier.reloading()
                self.reload_tls()
                self.notifier.ready("reloaded")
                continue
            self._stop_signals += 1
            name = signal.strsignal(signum)
            if self._stop_signals == 1 or not self.escalate:
                if not self._stop.is_set():
                    again = " (again to stop at once)" if self.escalate else ""
                    logger.info("%s: stopping gracefully%s", name, again)
                    self.notifier.stopping()
                    self._stop.set()
                continue
            logger.warning("%s again: stopping at once", name)
            for server in self.servers:
                server.cut_requests()
            logging.shutdown()
            os._exit(1)

    def log_status(self) -> None:
        for server in self.servers:
            logger.info("status %s: %s", server, server.stats.summary())

    def reload_tls(self) -> None:
        """SIGHUP: read each server's certificate and key again. New connections
        get the new ones; those open keep theirs. Files that fail leave the old."""
        reloaded = 0
        for server in self.servers:
            config: ServerConfig | None = getattr(server, "config", None)
            if config is None or config.certfile is None:
                continue
            try:
                server.ssl_context = tls_context(config)  # type: ignore[attr-defined]
            except (ValueError, OSError) as exc:
                logger.error("SIGHUP: %s keeps its TLS certificate: %s", server, exc)
                continue
            reloaded += 1
            logger.info("SIGHUP: %s reloaded its TLS certificate from %s", server, config.certfile)
        if not reloaded:
            logger.info("SIGHUP: no TLS certificate was reloaded")

    @contextlib.contextmanager
    def noting_signals(self) -> Iterator[None]:
        """Note the runner's signals from now on, to act on them once run() runs."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in _RUNNER_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def run(self, started: Callable[[], None] | None = None) -> int:
        """Serve until stopped; ``started()`` is called once every loop runs."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in _RUNNER_SIGNALS}
        loops = [
            threading.Thread(target=server.serve_forever, name=f"serve {server}", daemon=True)
            for server in self.servers
        ]
        try:
            # Only this thread may take our signals: delivered to a serving
            # thread, one would not wake this thread's wait, and be left
            # pending. Threads inherit the mask of the thread that starts them.
            signal.pthread_sigmask(signal.SIG_BLOCK, _RUNNER_SIGNALS)
            try:
                for loop in loops:
                    loop.start()
            finally:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, _RUNNER_SIGNALS)
            if started is not None:
                started()
            self.notifier.ready(f"serving {len(self.servers)} address(es)")
            self._serve_until_stopped(loops)
            self.notifier.stopping()
            self._close(loops)  # our handlers stay: a second signal must still stop at once
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 0

    def _serve_until_stopped(self, loops: list[threading.Thread]) -> None:
        interval = self.status_interval
        next_status = None if interval is None else time.monotonic() + interval
        # systemd's watchdog is fed from here, while every serving loop is alive: at
        # least four looks a period, so that a ping is never late.
        watchdog = self.notifier.watchdog_interval
        look = None if watchdog is None else watchdog / 4
        while not self._stop.is_set():
            # SIGNAL_LOOK: a signal that woke no wait (it landed just before it) is
            # handled within that, not at the next status line or never.
            timeout = SIGNAL_LOOK if look is None else min(look, SIGNAL_LOOK)
            if next_status is not None:
                timeout = min(timeout, max(0.0, next_status - time.monotonic()))
            if self._wake.wait(timeout):
                self._wake.clear()
                self._handle_signals()
            if interval is not None and next_status is not None and time.monotonic() >= next_status:
                self.log_status()
                next_status = time.monotonic() + interval
            if look is not None and all(loop.is_alive() for loop in loops):
                self.notifier.beat()

    def _close(self, loops: list[threading.Thread]) -> None:
        """Stop every server, each in a thread of its own, and wait for them and their
        loops, minding signals meanwhile: a second one stops at once."""
        closers = [
            threading.Thread(target=lambda s=server: (s.shutdown(), s.server_close()))
            for server in self.servers
        ]

        done = threading.Event()

        def close_all() -> None:
            for closer in closers:
                closer.start()
            for thread in closers + loops:
                thread.join()
            done.set()  # before the wake-up: a wake-up cleared unseen is no lost stop
            self._wake.set()

        threading.Thread(target=close_all, name="servekit stop").start()
        while not done.is_set():
            self._wake.wait(SIGNAL_LOOK)
            self._wake.clear()
            self._handle_signals()
        logger.info("stopped")


def main(argv: Sequence[str] | None = None) -> NoReturn:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "rpcinfo":
        from servekit.rpc import rpcinfo

        sys.exit(rpcinfo.main(args.rpcinfo_args))
    if args.command == "queue":
        sys.exit(queue_cli.run(args))
    if args.command == "rpcgen":
        sys.exit(rpcgen_cli.run(args))
    if args.command == "serve":
        # Before any worker or child is forked: only this process speaks to systemd.
        args.notifier = _systemd.Notifier.from_environment()
        try:
            configure(parser, args, os.environ)
        except UsageError as exc:
            _usage_error(exc)
    if args.command == "serve":
        try:
            args.log_connections = _set_up_logging(args)
        except UsageError as exc:
            _usage_error(exc)
    else:
        logging.basicConfig(level=args.log_level, format=_logsetup.LOG_FORMAT)
    if args.command == "rpcbind":
        sys.exit(_rpcbind(args))
    try:
        check_arguments(args)
        if args.check_config:
            print(check_configuration(args))  # noqa: T201 - the CLI's own output
            sys.exit(0)
        if args.reload:
            sys.exit(_reloading(args, sys.argv[1:] if argv is None else list(argv)))
        pid_file = _set_up_process(args)
    except UsageError as exc:
        _usage_error(exc)
    try:
        sys.exit(_serve(args))
    finally:
        if pid_file is not None:
            pid_file.remove()


def _set_up_logging(args: argparse.Namespace) -> bool:
    """--log-config, --log-file, --log-level, --access-log: True if connections are
    logged. Files open before --chdir, so a relative path is the starting folder's."""
    if args.log_config is not None and args.log_file is not None:
        raise UsageError(
            f"{_named(args, 'log_file', '--log-file')} does nothing with "
            f"{_named(args, 'log_config', '--log-config')}: name the file in the latter"
        )
    given_level = args.origins.get("log_level") != _cliconfig.DEFAULT
    try:
        return _logsetup.set_up(
            level=args.log_level if given_level or args.log_config is None else None,
            log_config=args.log_config, log_file=args.log_file,
            access_log=args.access_log, access_format=args.access_log_format,
        )  # fmt: skip
    except ValueError as exc:
        raise UsageError(f"{_named(args, 'log_config', '--log-config')} {exc}") from None
    except OSError as exc:
        access_file = args.access_log not in (None, "-") and exc.filename == os.path.abspath(
            args.access_log
        )
        name, flag = ("access_log", "--access-log") if access_file else ("log_file", "--log-file")
        raise UsageError(f"{_named(args, name, flag)} {exc.filename}: {exc.strerror}") from None


def _log_connections(servers: list[BaseServer], args: argparse.Namespace) -> None:
    """--access-log (or a --log-config naming servekit.access): each server's connections."""
    if getattr(args, "log_connections", False):
        for server in servers:
            access.enable(server, args.access_log_format)


def _reloading(args: argparse.Namespace, argv: list[str]) -> int:
    """--reload: this process watches the files and runs the server as a child."""
    top = Path(args.chdir) if args.chdir is not None else Path.cwd()
    roots = [top] + ([top / args.app_dir] if args.app_dir is not None else [])
    files = [top / args.config_file] if args.config_file is not None else []
    reloader = _reload.Reloader(
        _reload.child_command(argv), roots, files, prefork=args.workers is not None
    )
    return reloader.run()


def _set_up_process(args: argparse.Namespace) -> _process.PidFile | None:
    """--umask, --chdir, --app-dir, the user and group looked up, the pid file: before
    anything is bound or imported."""
    if args.umask is not None:
        os.umask(args.umask)
    try:
        if args.chdir is not None:
            os.chdir(args.chdir)
        if args.app_dir is not None:
            sys.path.insert(0, os.path.abspath(args.app_dir))
        args.identity = _process.resolve_identity(args.user, args.group)
        pid_file = None if args.pid is None else _process.PidFile(args.pid)
        if pid_file is not None:
            pid_file.write()
    except OSError as exc:
        raise UsageError(f"--chdir {args.chdir}: {exc.strerror}") from None
    except _process.ProcessError as exc:
        raise UsageError(str(exc)) from None
    return pid_file


def _serve(args: argparse.Namespace) -> int:
    """Serve until stopped; the exit status."""
    try:
        args.metrics_endpoint = _metrics_endpoint(args.metrics)
        if args.workers is not None:
            return _prefork(args)
    except UsageError as exc:
        _usage_error(exc)
    runner = Runner([], args.status_interval, notifier=args.notifier)
    # From before the first bind: a SIGTERM while the servers are made is a graceful
    # stop once they serve, not the default action that ends the process at once.
    with runner.noting_signals():
        try:
            servers, listeners = _single_process(args)
        except UsageError as exc:
            _usage_error(exc)
        if args.metrics_endpoint is not None:
            args.metrics_endpoint.start(collector(servers))
        try:
            _log_connections(servers, args)
            runner.servers = servers
            return runner.run()
        finally:
            if args.metrics_endpoint is not None:
                args.metrics_endpoint.close()
            for listener in listeners:
                listener.server_close()


def _metrics_endpoint(address: str | None) -> MetricsEndpoint | None:
    """--metrics: bound before anything serves, so a bad address is one error line."""
    if address is None:
        return None
    try:
        return MetricsEndpoint(address)
    except (OSError, ValueError) as exc:
        raise UsageError(bind_error(address, exc)) from None


def _single_process(args: argparse.Namespace) -> tuple[list[BaseServer], list[BaseServer]]:
    """The servers, and the listening sockets bound before a drop to --user (closed
    after the servers: a Unix socket's file goes then)."""
    identity: _process.Identity | None = args.identity
    if identity is None or args.source is not None:
        if identity is not None:
            identity.take()  # a source that is not a socket binds nothing
        return make_servers(load_target(args.target), args), []
    addresses = args.listen or ["127.0.0.1:8000"]
    listeners = [_bind(address, args) for address in addresses]
    identity.take()
    target = load_target(args.target)  # imported as the user, not as root
    if not _is_handler_class(target):
        raise UsageError(
            f"--user/--group need a request handler class: {args.target} makes its own "
            "server, which would bind after the drop"
        )
    servers = [
        _make(f"fd://{os.dup(listener.fileno())}", target, args, shown=address)
        for listener, address in zip(listeners, addresses, strict=True)
    ]
    return servers, listeners


#: Where ``servekit rpcbind`` serves by default: where rpcbind does.
RPCBIND_ADDRESSES = ("tcp://0.0.0.0:111", "udp://0.0.0.0:111", "unix:/run/rpcbind.sock")


def _rpcbind(args: argparse.Namespace) -> int:
    """``servekit rpcbind``: every address serves one shared registry."""

    registry = rpcbind.Registry()
    program = rpcbind.rpcbind_program()
    servers: list[BaseServer] = []
    try:
        for address in args.listen or RPCBIND_ADDRESSES:
            server = make_server(address, program, rpcbind=False, socket_file_mode=0o666)
            if not isinstance(server, TCPServer):
                raise ValueError(f"{address} is not a socket address")
            server.rpcbind_registry = registry  # type: ignore[attr-defined]
            servers.append(server)
            sock = server.socket
            registry.add_self(sock.family, sock.type, sock.getsockname())
    except (OSError, ValueError, TypeError) as exc:
        for made in servers:
            made.server_close()
        _usage_error(UsageError(f"cannot serve rpcbind: {exc}"))
    return Runner(servers, None).run()


def _usage_error(exc: UsageError) -> NoReturn:
    print(f"servekit: error: {exc}", file=sys.stderr)  # noqa: T201 - the CLI's own output
    sys.exit(2)


def _prefork(args: argparse.Namespace) -> int:
    """Bind the sockets here, then let a supervisor keep the workers serving on them.

    The supervisor imports nothing of the application (not even the package
    of the target's module, which importing the module would run): each
    worker does, after the fork, so the workers a SIGHUP starts serve the
    code as it is on disk now. The first worker to start checks the target;
    if it cannot serve, its one error line ends the start with status 2.
    """
    _split_target(args.target)
    _add_working_directory()
    listeners = []
    if args.source is None:  # a source that is not a socket: each worker opens its own
        listeners = [_bind(address, args) for address in args.listen or ["127.0.0.1:8000"]]
    for listener in listeners:
        logger.info(
            "listening on %s (%d worker(s), %s)",
            _describe(listener), args.workers, args.concurrency,
        )  # fmt: skip

    endpoint: MetricsEndpoint | None = args.metrics_endpoint
    reports = None if endpoint is None else WorkerReports()

    def worker_main(channel: WorkerChannel) -> int:
        if endpoint is not None:
            endpoint.close_in_child()
        return _serve_in_worker(args, listeners, channel)

    def close_listeners() -> None:
        if endpoint is not None:
            endpoint.close()
        for listener in listeners:
            if not args.no_rpcbind:
                _unregister_rpc(listener)
            listener.server_close()

    supervisor = Supervisor(
        worker_main, workers=args.workers, worker_timeout=args.worker_timeout,
        shutdown_timeout=args.config.shutdown_timeout, on_exit=close_listeners, reports=reports,
        notifier=getattr(args, "notifier", None),
    )  # fmt: skip
    if endpoint is not None and reports is not None:
        endpoint.start(lambda: reports.render(supervisor.counts()))
    status = supervisor.run()
    if supervisor.boot_error is not None:
        _usage_error(UsageError(supervisor.boot_error))
    return status


def _unregister_rpc(listener: BaseServer) -> None:
    """The service stops: take out of rpcbind what its workers registered at this
    socket (they do not unregister, the others serving on; see rpc.server)."""
    sock = getattr(listener, "socket", None)
    if sock is None:
        return
    local, portmap = rpc_server.rpcbind_places()
    netid = rpcbind.netid_of(sock.family, sock.type)
    uaddr = rpcbind.universal_address(sock.family, sock.getsockname())
    done = rpcbind.unregister_address(netid, uaddr, local=local, portmap=portmap)
    if done:
        logger.info("unregistered %d program version(s) at %s %s from rpcbind", done, netid, uaddr)


def _bind(address: str, args: argparse.Namespace) -> BaseServer:
    """A server that only holds the listening socket, for the workers to inherit."""
    try:
        config = replace(_LISTENER, backlog=args.config.backlog, reuse_port=args.reuse_port)
        return _build(address, BaseRequestHandler, config)
    except (ValueError, TypeError, OSError) as exc:
        raise UsageError(f"cannot serve {address}: {exc}") from exc


def _serve_in_worker(
    args: argparse.Namespace, listeners: list[BaseServer], channel: WorkerChannel
) -> int:
    runner = Runner([], args.status_interval, escalate=False)
    # From the fork on, as _serve() does from before the first bind: a SIGTERM while the
    # application is imported (a roll, a stop) is a graceful stop once it serves, not the
    # default action that ends the worker at once.
    with runner.noting_signals():
        try:
            servers = _worker_servers(args, listeners)
        except UsageError as exc:
            channel.failed(str(exc))
            return WORKER_BOOT_FAILED
        _log_connections(servers, args)
        runner.servers = servers
        limit = None
        if args.max_requests is not None:
            limit = args.max_requests + random.randint(0, args.max_requests_jitter)
        for server in servers:
            _beat_from_loop(server, channel, runner, limit)
        reporter = Reporter(servers, channel) if args.metrics is not None else None
        if reporter is not None:
            reporter.start()
        try:
            return runner.run(started=channel.ready)
        finally:
            if reporter is not None:
                reporter.stop()


def _worker_servers(args: argparse.Namespace, listeners: list[BaseServer]) -> list[BaseServer]:
    """A worker's servers, on the supervisor's listeners (UsageError if it cannot)."""
    identity: _process.Identity | None = getattr(args, "identity", None)
    if identity is not None:
        identity.take()  # before the application is imported
    target = load_target(args.target)
    if not _is_handler_class(target):
        raise UsageError(f"--workers needs a request handler class; {args.target} is not one")
    if args.source is not None:
        servers = _make_from_source(target, args)
    else:
        addresses = args.listen or ["127.0.0.1:8000"]
        servers = [
            _make(f"fd://{lis.fileno()}", target, args, shown=address)
            for lis, address in zip(listeners, addresses, strict=True)
        ]
    for server in servers:
        if hasattr(server, "rpc_unregister_at_close"):
            server.rpc_unregister_at_close = False  # the supervisor's, at the end
        # Every worker waits on the same socket and all wake for one client;
        # the losers must get EAGAIN from accept(), not block in it.
        if isinstance(getattr(server, "socket", None), socket.socket):
            server.socket.setblocking(False)  # type: ignore[attr-defined]
    return servers


def _beat_from_loop(
    server: BaseServer, channel: WorkerChannel, runner: Runner, max_requests: int | None
) -> None:
    """Send the heartbeat from the serving loop itself, so a stuck loop stops beating;
    and once the worker has served max_requests, ask the supervisor to replace it.
    It serves on until its replacement does: a replacement that cannot start (a
    bad deploy on disk) must not leave the service with fewer workers, or none."""
    own_actions = server.service_actions
    asked = False

    def service_actions() -> None:
        nonlocal asked
        own_actions()
        channel.beat()
        if max_requests is not None and not asked and server.stats.requests >= max_requests:
            asked = True
            logger.info(
                "worker %d served max_requests=%d; asking for a replacement",
                os.getpid(), max_requests,
            )  # fmt: skip
            channel.replace_me()

    server.service_actions = service_actions  # type: ignore[method-assign]
