"""The server options: each declared once, with its type, range, default and why.

``ServerConfig`` holds every option of ``make_server``, frozen and checked
when it is made; ``OPTIONS`` declares the numeric ones (counts and seconds)
with their help, range and the reason for their default. ``make_server``
builds a ServerConfig before it binds a socket, and ``servekit serve`` builds
its limit options from OPTIONS and one ServerConfig from its arguments, so a
wrong type or a bad range is one clear error at start, never a traceback at
the first client. The defaults are production defaults; the stdlib classes
keep the stdlib's own (no limits), because code written for them may rely on
that.
"""

from __future__ import annotations

import inspect
import math
import os
import sys
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol, get_args

from servekit.proxy import parse_networks

__all__ = [
    "ANY_SOURCE_OPTIONS",
    "CONCURRENCY_MODELS",
    "DEFAULT_ACK_BATCH",
    "DEFAULT_CLAIM_BATCH",
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_LEASE",
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_HANDLER_THREADS",
    "DEFAULT_MAX_LINE_LENGTH",
    "DEFAULT_MAX_PENDING",
    "DEFAULT_MAX_WORKERS",
    "DEFAULT_READ_TIMEOUT",
    "DEFAULT_RETRY_BACKOFF",
    "DEFAULT_SHUTDOWN_TIMEOUT",
    "OPTIONS",
    "QUEUE_OPTIONS",
    "Concurrency",
    "Option",
    "ServerConfig",
    "StrPath",
    "TLSContext",
    "check",
    "parse",
]

# The production defaults. Why each is what it is: the ``why`` of its entry in
# OPTIONS below, shown with it in help(ServerConfig).
DEFAULT_MAX_WORKERS: Final = 64  #: threads of the pool kept warm
DEFAULT_MAX_PENDING: Final = 256  #: requests queued for a full pool
DEFAULT_MAX_HANDLER_THREADS: Final = 32  #: async: to_thread() calls running at once
DEFAULT_MAX_CONNECTIONS: Final = 1024  #: open connections at once, in every model
DEFAULT_SHUTDOWN_TIMEOUT: Final = 25.0  #: seconds a stop lets requests in flight run
DEFAULT_IDLE_TIMEOUT: Final = 300.0  #: seconds a connection may carry no traffic either way
DEFAULT_READ_TIMEOUT: Final = 30.0  #: seconds a request may take after its first byte
DEFAULT_MAX_LINE_LENGTH: Final = 65536  #: the longest line StreamRequestHandler reads
DEFAULT_HANDSHAKE_TIMEOUT: Final = 10.0  #: seconds for the TLS handshake and PROXY header
DEFAULT_LEASE: Final = 30.0  #: seconds a claimed row is the worker's (extended while it runs)
DEFAULT_RETRY_BACKOFF: Final = 1.0  #: seconds before a failed row's first retry
DEFAULT_MAX_ATTEMPTS: Final = 5  #: attempts of a row before it is dead
DEFAULT_CLAIM_BATCH: Final = 1  #: rows claimed in one query
DEFAULT_ACK_BATCH: Final = 1  #: rows acknowledged in one transaction (1: each at its end)

Kind = Literal["count", "seconds"]


@dataclass(frozen=True, slots=True)
class Option:
    """One numeric option of make_server (and of ``servekit serve``)."""

    name: str  #: make_server's keyword argument, and ServerConfig's field
    kind: Kind  #: "count": an int >= minimum; "seconds": a finite float >= 0
    default: int | float | None
    help: str
    minimum: int = 0  #: for counts
    none: bool = True  #: None turns it off (no limit)
    flag: str = ""  #: the command line's name, if not --name-with-dashes
    #: Seconds: 0 allowed? A timeout of 0 would cut every connection at once.
    zero: bool = False
    #: What None means, where it is not "no limit".
    none_means: str = "no limit"
    #: Why the default is what it is, where it is a choice worth explaining.
    why: str = ""

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")


OPTIONS: Final[dict[str, Option]] = {
    option.name: option
    for option in (
        Option("max_workers", "count", DEFAULT_MAX_WORKERS,
               "pool: threads kept warm (it grows past them while all are busy)",
               minimum=1, none=False, flag="--threads",
               why="enough to keep two cores busy with handlers that wait on I/O most of "
               "the time, few enough that their stacks stay small; the pool grows past "
               "them, up to max_connections, while every one is taken"),
        Option("max_pending", "count", DEFAULT_MAX_PENDING,
               "pool: requests queued for a thread before accepting pauses", none=False,
               why="beyond it, clients wait in the kernel backlog at no cost to the server"),
        Option("max_handler_threads", "count", DEFAULT_MAX_HANDLER_THREADS,
               "async: handlers' to_thread() calls running at once; more wait their turn",
               minimum=1, none=False,
               why="asyncio's own executor stops at 32 threads: enough for the blocking "
               "calls of many connections, few enough that their stacks stay small and "
               "a library they share is not swamped"),
        Option("max_connections", "count", DEFAULT_MAX_CONNECTIONS,
               "open connections at once; past it, clients wait in the backlog", minimum=1,
               why="each holds a descriptor and, in the thread models, a thread; 1,024 "
               "stays far below the usual open-file limit"),
        Option("shutdown_timeout", "seconds", DEFAULT_SHUTDOWN_TIMEOUT,
               "a stop lets requests in flight run this long, then cuts them", zero=True,
               none_means="wait for ever",
               why="under the 30 s Kubernetes and 90 s systemd give a service between "
               "SIGTERM and SIGKILL"),
        Option("idle_timeout", "seconds", DEFAULT_IDLE_TIMEOUT,
               "close a connection with no traffic for this long"),
        Option("read_timeout", "seconds", DEFAULT_READ_TIMEOUT,
               "a request must be complete this long after its first byte"),
        Option("max_line_length", "count", DEFAULT_MAX_LINE_LENGTH,
               "the longest line a stream handler reads, newline included", minimum=1,
               why="http.server's own bound"),
        Option("handshake_timeout", "seconds", DEFAULT_HANDSHAKE_TIMEOUT,
               "the TLS handshake and the PROXY header must be done within this",
               why="a real client needs a few round trips (milliseconds); 10 s covers a "
               "slow mobile link and no more"),
        Option("max_packet_size", "count", None,
               "the longest datagram taken; longer ones are dropped and logged", minimum=1,
               none_means="the server class's own, 8192"),
        Option("backlog", "count", None,
               "listen backlog, if above the system's SOMAXCONN", minimum=1,
               none_means="the system's SOMAXCONN"),
        Option("lease", "seconds", DEFAULT_LEASE,
               "queue: a claimed row is the worker's this long, extended while it runs",
               none=False,
               why="long enough that a busy database or a paused process (a GC, a swap) "
               "does not lose a running row, short enough that a row whose worker died "
               "runs again within half a minute"),
        Option("retry_backoff", "seconds", DEFAULT_RETRY_BACKOFF,
               "queue: a failed row waits this long before its next attempt, doubling "
               "each time (at most 10 minutes, less up to a quarter of jitter)", none=False,
               why="a transient failure (a timeout, a lock) has usually passed a second "
               "later, and five attempts then span about 15 seconds"),
        Option("max_attempts", "count", DEFAULT_MAX_ATTEMPTS,
               "queue: attempts of a row (unless it was enqueued with its own) before it "
               "is dead", minimum=1, none=False,
               why="enough to ride out a transient failure, few enough that a row that "
               "can never succeed is set aside within a minute"),
        Option("claim_batch", "count", DEFAULT_CLAIM_BATCH,
               "queue: rows claimed in one query (and held, not started, at most)",
               minimum=1, none=False,
               why="one: a row claimed ahead waits for this process while another may be "
               "free; raise it for throughput when rows are many and short"),
        Option("ack_batch", "count", DEFAULT_ACK_BATCH,
               "queue: rows whose handlers returned, acknowledged together in one "
               "transaction (none waits more than 50 ms)", minimum=1, none=False,
               why="one: a row is done in the database when its handler returns, so a "
               "worker that dies runs none of its finished rows again; raise it with "
               "claim_batch for throughput when rows are many, short and idempotent"),
    )
}  # fmt: skip

#: The options of the SQL queue source (servekit.sql), and only of it.
QUEUE_OPTIONS: Final = frozenset(
    {"lease", "retry_backoff", "max_attempts", "claim_batch", "ack_batch"}
)
#: The options that apply to every request source, sockets or not.
ANY_SOURCE_OPTIONS: Final = frozenset(
    {"concurrency", "shutdown_timeout", "max_workers", "max_pending", "max_handler_threads"}
)

#: How requests run, by name (also the names of ``--concurrency``).
Concurrency = Literal["pool", "threads", "fork", "sync", "async"]
CONCURRENCY_MODELS: Final[tuple[Concurrency, ...]] = get_args(Concurrency)

#: A file's path, as the ssl module takes it.
StrPath = str | os.PathLike[str]


class TLSContext(Protocol):
    """The shape of an ``ssl.SSLContext``, for typing ServerConfig.ssl_context.

    This module imports no ``ssl`` (it is sans-IO: docs/architecture.md), so
    the field is typed by shape; ServerConfig still refuses, at run time,
    anything that is not a real ``ssl.SSLContext``.
    """

    def wrap_socket(self, sock: Any, server_side: bool = ...) -> Any: ...


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Every option of ``make_server``, each checked when the config is made.

    A wrong type or a bad range is a TypeError or ValueError naming the
    option and saying what it takes, raised here, so before any socket is
    bound. ``make_server(address, Handler, config=config)`` serves with it
    (keywords given beside it override its values), and ``server.config`` is
    the ServerConfig a server was made from. Change one with
    ``dataclasses.replace(config, idle_timeout=60)``, which checks again.

    The numeric options (counts and seconds) are declared in ``OPTIONS``,
    with their range and the reason for their default; they are listed at
    the end of this text. None turns off the ones marked so.
    """

    #: How requests run: "pool" (a bounded thread pool), "threads" (a thread
    #: per request), "fork" (a process per request), "sync" (one at a time) or
    #: "async" (asyncio tasks, for servekit.aio handlers).
    concurrency: Concurrency = "pool"
    #: The listen backlog, if above socket.SOMAXCONN.
    backlog: int | None = None
    #: Set SO_REUSEPORT, so that several processes may bind the same port.
    reuse_port: bool = False
    #: The permission bits of a Unix socket file (0o660), set before it listens.
    socket_file_mode: int | None = None
    #: The longest datagram taken (None: the server class's own, 8192).
    max_packet_size: int | None = None
    #: "pool": threads kept warm.
    max_workers: int = DEFAULT_MAX_WORKERS
    #: "pool": requests queued for a thread before accepting pauses.
    max_pending: int = DEFAULT_MAX_PENDING
    #: "async": handlers' to_thread() calls running at once.
    max_handler_threads: int = DEFAULT_MAX_HANDLER_THREADS
    #: Open connections at once (streams).
    max_connections: int | None = DEFAULT_MAX_CONNECTIONS
    #: Seconds a stop lets requests in flight run before cutting them.
    shutdown_timeout: float | None = DEFAULT_SHUTDOWN_TIMEOUT
    #: Seconds a connection may carry no traffic either way.
    idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT
    #: Seconds a request may take after its first byte.
    read_timeout: float | None = DEFAULT_READ_TIMEOUT
    #: The longest line a stream handler reads, newline included.
    max_line_length: int | None = DEFAULT_MAX_LINE_LENGTH
    #: Serve TLS with this ssl.SSLContext (or give certfile instead).
    ssl_context: TLSContext | None = None
    #: Serve TLS with this certificate chain (PEM); the key is in it or in keyfile.
    certfile: StrPath | None = None
    #: The private key of certfile, if not in certfile itself.
    keyfile: StrPath | None = None
    #: With certfile: client certificates signed by these authorities (see client_cert).
    cafile: StrPath | None = None
    #: With cafile: "required" (a client without a certificate is refused) or
    #: "optional" (let in; one it presents is checked).
    client_cert: Literal["optional", "required"] = "required"
    #: With certfile: the password of an encrypted private key.
    keyfile_password: str | bytes | None = field(default=None, repr=False)
    #: With certfile: the oldest TLS version accepted, "1.2" or "1.3" (None: the
    #: system's default, TLS 1.2).
    tls_min_version: Literal["1.2", "1.3"] | None = None
    #: With certfile: the OpenSSL cipher list for TLS 1.2 (None: the system's).
    tls_ciphers: str | None = None
    #: Seconds for the TLS handshake and the PROXY header together.
    handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT
    #: Read a PROXY v1 or v2 header from peers in trusted_proxies, refuse others.
    proxy_protocol: bool = False
    #: The peers allowed to send a PROXY header: addresses ("127.0.0.1"),
    #: networks ("10.0.0.0/8") or "unix". Any iterable of str; kept as a tuple.
    trusted_proxies: tuple[str, ...] = ()
    #: An rpc.Program's server registers its versions with the host's rpcbind
    #: when it starts listening, and unregisters them when it closes.
    rpcbind: bool = True
    #: Queue (servekit.sql): seconds a claimed row is the worker's, extended while it runs.
    lease: float = DEFAULT_LEASE
    #: Queue: seconds before a failed row's first retry, doubling each time.
    retry_backoff: float = DEFAULT_RETRY_BACKOFF
    #: Queue: attempts of a row (unless enqueued with its own) before it is dead.
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    #: Queue: rows claimed in one query.
    claim_batch: int = DEFAULT_CLAIM_BATCH
    #: Queue: rows whose handlers returned, acknowledged together (1: each at its end).
    ack_batch: int = DEFAULT_ACK_BATCH

    def __post_init__(self) -> None:
        if self.concurrency not in CONCURRENCY_MODELS:
            error = ValueError if isinstance(self.concurrency, str) else TypeError
            raise error(
                f"unknown concurrency {self.concurrency!r}; "
                f"choose one of {', '.join(CONCURRENCY_MODELS)}"
            )
        for name in OPTIONS:
            # Frozen: normalising (5 seconds to 5.0) has to go around __setattr__.
            object.__setattr__(self, name, check(name, getattr(self, name)))
        for name in ("reuse_port", "proxy_protocol", "rpcbind"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, not {getattr(self, name)!r}")
        self._check_socket_file_mode()
        self._check_tls()
        object.__setattr__(self, "trusted_proxies", _proxies(self.trusted_proxies))
        if self.proxy_protocol and not self.trusted_proxies:
            raise ValueError(
                "proxy_protocol needs trusted_proxies: the addresses of the proxies allowed to "
                "say who the client is (for example ['127.0.0.1', '10.0.0.0/8'])"
            )

    def _check_socket_file_mode(self) -> None:
        mode: object = self.socket_file_mode
        if mode is None:
            return
        message = f"socket_file_mode must be permission bits such as 0o660, not {mode!r}"
        if isinstance(mode, bool) or not isinstance(mode, int):
            raise TypeError(message)
        if not 0 <= mode <= 0o7777:
            raise ValueError(message)

    def _check_tls(self) -> None:
        context: object = self.ssl_context
        # An SSLContext exists only once ssl is imported, so looking the class
        # up in sys.modules is exact, and keeps this module free of the import.
        ssl = sys.modules.get("ssl")
        if context is not None and (ssl is None or not isinstance(context, ssl.SSLContext)):
            raise TypeError(f"ssl_context must be an ssl.SSLContext, not {context!r}")
        for name in ("certfile", "keyfile", "cafile"):
            path = getattr(self, name)
            if path is not None and not isinstance(path, (str, bytes, os.PathLike)):
                raise TypeError(f"{name} must be a path (str or os.PathLike), not {path!r}")
        if self.certfile is not None and self.ssl_context is not None:
            raise ValueError("pass ssl_context or certfile, not both")
        if self.certfile is None and (self.keyfile is not None or self.cafile is not None):
            raise ValueError("keyfile and cafile need certfile (the server's certificate)")
        self._check_tls_settings()

    def _check_tls_settings(self) -> None:
        if self.client_cert not in ("optional", "required"):
            raise ValueError(
                f"client_cert must be 'optional' or 'required', not {self.client_cert!r}"
            )
        if self.tls_min_version not in (None, "1.2", "1.3"):
            raise ValueError(
                f"tls_min_version must be '1.2' or '1.3', not {self.tls_min_version!r}"
            )
        for name, kinds in (("tls_ciphers", str), ("keyfile_password", (str, bytes))):
            value = getattr(self, name)
            if value is not None and not isinstance(value, kinds):
                raise TypeError(f"{name} must be a string, not {type(value).__name__}")
        given = [
            name
            for name in ("keyfile_password", "tls_min_version", "tls_ciphers")
            if getattr(self, name) is not None
        ]
        if self.client_cert != "required":
            given.append("client_cert")
        if given and self.certfile is None:
            raise ValueError(
                f"{', '.join(given)} need certfile (servekit builds the TLS context from "
                "it); with ssl_context, set them on that context"
            )
        if self.client_cert != "required" and self.cafile is None:
            raise ValueError("client_cert needs cafile: the authorities that sign them")


def _proxies(value: object) -> tuple[str, ...]:
    """trusted_proxies as a tuple of str, each a valid network; else an error naming it."""
    if isinstance(value, (str, bytes)):
        raise TypeError(
            f"trusted_proxies must be a list of addresses or networks, not the string "
            f"{value!r} (write [{value!r}])"
        )
    if not isinstance(value, Iterable):
        raise TypeError(
            f"trusted_proxies must be a list of addresses, networks or 'unix', not {value!r}"
        )
    proxies = tuple(value)
    for proxy in proxies:
        if not isinstance(proxy, str):
            raise TypeError(f"trusted_proxies holds {proxy!r}: each must be a str")
    try:
        parse_networks(proxies)
    except ValueError as exc:
        raise ValueError(f"trusted_proxies: {exc}") from None
    return proxies


def check(name: str, value: Any) -> Any:
    """``value`` if it is valid for option ``name``; else TypeError or ValueError naming it."""
    option = OPTIONS[name]
    if value is None:
        if option.none:
            return None
        raise TypeError(f"{name} must be {_what(option)}, not None")
    if option.kind == "count":
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be {_what(option)}, not {value!r}")
        if value < option.minimum:
            raise ValueError(f"{name} must be {_what(option)}, not {value}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be {_what(option)}, not {value!r}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not option.zero):
        raise ValueError(f"{name} must be {_what(option)}, not {value}")
    return float(value)


def parse(name: str, text: str) -> Any:
    """The command line's text for option ``name``, checked; ValueError says what is wrong."""
    option = OPTIONS[name]
    if option.none and text.strip().lower() == "none":
        return None
    try:
        value: int | float = int(text) if option.kind == "count" else float(text)
    except ValueError:
        raise ValueError(f"{option.cli_flag}: {text!r} is not {_what(option, cli=True)}") from None
    try:
        return check(name, value)
    except (TypeError, ValueError):
        raise ValueError(f"{option.cli_flag}: {text!r} is not {_what(option, cli=True)}") from None


def _what(option: Option, *, cli: bool = False) -> str:
    if option.kind == "count":
        what = f"a whole number >= {option.minimum}"
    else:
        what = "a number of seconds " + (">= 0" if option.zero else "> 0")
    if not option.none:
        return what
    return what + (" or 'none'" if cli else " or None") + f" ({option.none_means})"


def _option_lines() -> str:
    lines = ["", "The numeric options:"]
    for option in OPTIONS.values():
        default = "None" if option.default is None else f"{option.default:g}"
        text = f"{option.name} (default {default}): {option.help}; {_what(option)}."
        if option.why:
            text += f" Why {default}: {option.why}."
        lines.append(textwrap.fill(text, 76, initial_indent="- ", subsequent_indent="  "))
    return "\n".join(lines)


# help(ServerConfig) shows each numeric option's range and why from OPTIONS,
# instead of a second copy of them to keep in step.
if ServerConfig.__doc__ is not None:  # None under python -OO
    ServerConfig.__doc__ = inspect.cleandoc(ServerConfig.__doc__) + "\n" + _option_lines()
