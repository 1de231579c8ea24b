"""make_server: a server from a listen address, with production defaults.

The stdlib classes keep the stdlib's defaults (a backlog of 5, no
SO_REUSEADDR), because code written for them may depend on them. A server
made here gets what a production server wants instead:

- a listen backlog of at least ``socket.SOMAXCONN`` (the kernel caps it at
  ``net.core.somaxconn``), so a burst of connections waits in the kernel
  rather than being refused;
- SO_REUSEADDR on TCP, so a restart does not fail on TIME_WAIT connections;
- dual-stack on ``[::]`` where the OS allows, so one socket takes IPv4 too.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import fields, replace
from typing import TYPE_CHECKING, Any, Literal, cast

from servekit import _oob
from servekit import concurrency as concurrency_module
from servekit.activation import inherited_sockets
from servekit.addresses import ListenAddress, format_address, parse_address
from servekit.aio import server as aio_server_module
from servekit.aio.handlers import (
    AsyncBaseRequestHandler,
    AsyncDatagramRequestHandler,
    AsyncStreamRequestHandler,
)
from servekit.aio.server import (
    AsyncServerMixIn,
)
from servekit.concurrency import (
    ForkingMixIn,
    ThreadingMixIn,
    ThreadPoolMixIn,
)
from servekit.core import BaseServer
from servekit.handlers import DatagramRequestHandler, StreamRequestHandler
from servekit.options import (
    ANY_SOURCE_OPTIONS,
    CONCURRENCY_MODELS,
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_LINE_LENGTH,
    DEFAULT_MAX_PENDING,
    DEFAULT_MAX_WORKERS,
    DEFAULT_READ_TIMEOUT,
    DEFAULT_SHUTDOWN_TIMEOUT,
    QUEUE_OPTIONS,
    Concurrency,
    ServerConfig,
    StrPath,
)
from servekit.proxy import parse_networks
from servekit.rpc.program import Program
from servekit.rpc.server import handler_class as rpc_handler_class
from servekit.rpc.server import server_class as rpc_server_class
from servekit.sockets import TCPServer, UDPServer, UnixDatagramServer, UnixStreamServer
from servekit.sql import source as queue_source_module
from servekit.sql.source import QueueServer, is_queue_address
from servekit.tls import server_context

if TYPE_CHECKING:
    import ssl
    from collections.abc import Iterable

    from servekit.core import RequestHandlerFactory

__all__ = [
    "CONCURRENCY_MODELS",
    "check_handler_fits",
    "make_server",
    "make_source_server",
    "socket_type_of",
    "with_model",
]

logger = logging.getLogger(__name__)

# The production defaults and why each is what it is: servekit.options.
__all__ += [
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_LINE_LENGTH",
    "DEFAULT_MAX_PENDING",
    "DEFAULT_MAX_WORKERS",
    "DEFAULT_READ_TIMEOUT",
    "DEFAULT_SHUTDOWN_TIMEOUT",
]

#: The socket source of each transport make_server knows; with_model() gives
#: the class of each model for it (the named class, such as ThreadPoolTCPServer).
_SOURCES: dict[str, type[TCPServer]] = {
    "tcp": TCPServer,
    "udp": UDPServer,
    "unix": UnixStreamServer,
    "unix-dgram": UnixDatagramServer,
}


class _Default:
    """A keyword of make_server not given: the config's value, or ServerConfig's default.

    Told apart from a value given, even one equal to the default, so that a
    keyword always overrides ``config=``; its repr is the default, for help().
    """

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value

    def __repr__(self) -> str:
        return repr(self.value)


_DEFAULTS: dict[str, Any] = {field.name: _Default(field.default) for field in fields(ServerConfig)}


def make_server(
    address: str,
    handler: RequestHandlerFactory | Program,
    *,
    config: ServerConfig | None = None,
    concurrency: Concurrency = _DEFAULTS["concurrency"],
    backlog: int | None = _DEFAULTS["backlog"],
    reuse_port: bool = _DEFAULTS["reuse_port"],
    rpcbind: bool = _DEFAULTS["rpcbind"],
    socket_file_mode: int | None = _DEFAULTS["socket_file_mode"],
    max_packet_size: int | None = _DEFAULTS["max_packet_size"],
    max_workers: int = _DEFAULTS["max_workers"],
    max_pending: int = _DEFAULTS["max_pending"],
    max_handler_threads: int = _DEFAULTS["max_handler_threads"],
    max_connections: int | None = _DEFAULTS["max_connections"],
    shutdown_timeout: float | None = _DEFAULTS["shutdown_timeout"],
    idle_timeout: float | None = _DEFAULTS["idle_timeout"],
    read_timeout: float | None = _DEFAULTS["read_timeout"],
    max_line_length: int | None = _DEFAULTS["max_line_length"],
    ssl_context: ssl.SSLContext | None = _DEFAULTS["ssl_context"],
    certfile: StrPath | None = _DEFAULTS["certfile"],
    keyfile: StrPath | None = _DEFAULTS["keyfile"],
    cafile: StrPath | None = _DEFAULTS["cafile"],
    client_cert: Literal["optional", "required"] = _DEFAULTS["client_cert"],
    keyfile_password: str | bytes | None = _DEFAULTS["keyfile_password"],
    tls_min_version: Literal["1.2", "1.3"] | None = _DEFAULTS["tls_min_version"],
    tls_ciphers: str | None = _DEFAULTS["tls_ciphers"],
    handshake_timeout: float | None = _DEFAULTS["handshake_timeout"],
    proxy_protocol: bool = _DEFAULTS["proxy_protocol"],
    trusted_proxies: Iterable[str] = _DEFAULTS["trusted_proxies"],
    lease: float = _DEFAULTS["lease"],
    retry_backoff: float = _DEFAULTS["retry_backoff"],
    max_attempts: int = _DEFAULTS["max_attempts"],
    claim_batch: int = _DEFAULTS["claim_batch"],
    ack_batch: int = _DEFAULTS["ack_batch"],
) -> TCPServer | QueueServer:
    """Make a bound, listening server for ``address`` that runs ``handler``.

    ``address`` is any form of ``servekit.addresses`` (``"127.0.0.1:8000"``,
    ``"udp://[::]:5353"``, ``"unix:/run/app.sock"``, ``"fd://3"``,
    ``"systemd"``, ...), or a queue's URL (``"sqlite:jobs.db"``,
    ``"postgresql://user@host/db?queue=emails"``): a ``servekit.sql.QueueServer``
    whose requests are the queue's rows, with the queue's options ``lease``,
    ``retry_backoff``, ``max_attempts``, ``claim_batch`` and ``ack_batch`` (docs/sql.md).
    The options are those of ``servekit.options.ServerConfig``: pass one as
    ``config``, or the options as keywords, or both (a keyword given
    overrides the config's value). ``server.config`` is the ServerConfig the
    server was made from.

    ``concurrency`` picks how requests run: ``"pool"`` (a bounded pool of
    ``max_workers`` threads and ``max_pending`` queued requests), ``"threads"``
    (a thread per request), ``"fork"`` (a process per request) or ``"sync"``
    (one at a time), or ``"async"`` (asyncio tasks; the handler is a
    ``servekit.aio.AsyncStreamRequestHandler``, whose ``to_thread()`` calls run
    on at most ``max_handler_threads`` threads).
    ``backlog`` raises the listen backlog above ``socket.SOMAXCONN``;
    ``rpcbind`` (for an ``rpc.Program``) registers it with the host's rpcbind;
    ``reuse_port`` sets SO_REUSEPORT; ``socket_file_mode`` sets the permission
    bits of a Unix socket file; ``max_packet_size`` bounds datagrams.

    Limits (``help(ServerConfig)`` says why each default):
    ``max_connections`` open at once, ``shutdown_timeout`` for requests in
    flight at a stop, and per connection ``idle_timeout``, ``read_timeout``
    and ``max_line_length``. None turns a limit off.

    TLS: pass ``ssl_context``, or ``certfile`` (and ``keyfile``, decrypted with
    ``keyfile_password``) to build one; ``cafile`` then asks for client
    certificates signed by its authorities (``client_cert`` "required", the
    default, or "optional"); ``tls_min_version`` ("1.2", "1.3") and
    ``tls_ciphers`` (an OpenSSL cipher list) narrow what is accepted.
    The handshake runs in the worker within ``handshake_timeout``.
    PROXY protocol: ``proxy_protocol=True`` reads a v1 or v2 header from peers
    in ``trusted_proxies`` (addresses, networks, "unix") and refuses others.

    The bound address is in ``server.server_address`` and logged at INFO.
    Every value is checked before a socket is bound: TypeError or ValueError
    names a wrong type, a bad range, or a handler that does not fit the
    transport or the model; OSError says binding failed.
    """
    passed = locals()
    given = {
        field.name: passed[field.name]
        for field in fields(ServerConfig)
        if not isinstance(passed[field.name], _Default)
    }
    if config is None:
        config = ServerConfig(**given)
    elif not isinstance(config, ServerConfig):
        raise TypeError(f"config must be a servekit.options.ServerConfig, not {config!r}")
    elif given:
        config = replace(config, **given)
    _check_callable(handler)
    if is_queue_address(address):
        if isinstance(handler, Program):
            raise TypeError(f"{handler!r} is an RPC program: serve it on a socket, not {address}")
        return cast("QueueServer", make_source_server(QueueServer, address, handler, config=config))
    _refuse_queue_options(config)
    server = _build(address, handler, config)
    logger.info(
        "listening on %s (%s, %s)", _describe(server), config.concurrency, type(server).__name__
    )
    return server


#: Each model's mixin ("sync" needs none): what with_model() puts before a source.
_MIXINS: dict[str, type[Any] | None] = {
    "sync": None,
    "threads": ThreadingMixIn,
    "pool": ThreadPoolMixIn,
    "fork": ForkingMixIn,
    "async": AsyncServerMixIn,
}


def with_model(source: type[BaseServer], concurrency: str) -> type[BaseServer]:
    """``source`` (a request source class) run the ``concurrency`` way: the class
    ``class ThreadPoolSource(ThreadPoolMixIn, Source)`` would be, made once."""
    if concurrency not in _MIXINS:
        raise ValueError(
            f"unknown concurrency {concurrency!r}; choose one of {', '.join(CONCURRENCY_MODELS)}"
        )
    mixin = _MIXINS[concurrency]
    if mixin is None or issubclass(source, mixin):
        return source
    return _combined(mixin, source)


def _combined(mixin: type[Any], source: type[BaseServer]) -> type[BaseServer]:
    made = _COMBINED.get((mixin, source))
    if made is None:
        name = mixin.__name__.removesuffix("MixIn").removesuffix("Server") + source.__name__
        # A subclass of a source whose combination with this model is a class of
        # its own (AsyncQueueServer: what the source does differently there) gets
        # that class first: its overrides, then the model's, then the subclass's.
        named = next(
            (_COMBINED[(mixin, base)] for base in source.__mro__[1:] if (mixin, base) in _COMBINED),
            mixin,
        )
        made = type(name, (named, source), {"__module__": source.__module__})
        _COMBINED[(mixin, source)] = made
    return made


def _named_combinations(*modules: Any) -> dict[tuple[type[Any], type[Any]], type[BaseServer]]:
    """The classes ``modules`` define as ``class X(SomeMixIn, Source): pass``, by
    (mixin, source): what with_model() gives for those pairs, so that
    make_server("tcp...", concurrency="pool") is a ThreadPoolTCPServer, as a user
    of the stdlib's names would expect, with no table to keep beside them."""
    mixins = {mixin for mixin in _MIXINS.values() if mixin is not None}
    found: dict[tuple[type[Any], type[Any]], type[BaseServer]] = {}
    for module in modules:
        for value in vars(module).values():
            if isinstance(value, type) and len(value.__bases__) == 2:
                mixin, source = value.__bases__
                if mixin in mixins and issubclass(source, BaseServer):
                    found[(mixin, source)] = value
    return found


_COMBINED = _named_combinations(concurrency_module, aio_server_module, queue_source_module)


def make_source_server(
    source: type[BaseServer],
    address: Any,
    handler: RequestHandlerFactory,
    *,
    config: ServerConfig | None = None,
) -> BaseServer:
    """A server for a request source that is not a socket: ``source(address,
    handler)``, combined with the model ``config.concurrency`` names.

    ``source`` is a ``servekit.BaseServer`` subclass with ``fileno()`` and a
    non-blocking ``get_request()`` (see docs/architecture.md); ``address`` is
    given to it as it is. Of the config, what applies to any source applies:
    ``concurrency``, ``shutdown_timeout``, for the pool ``max_workers`` and
    ``max_pending``, for async ``max_handler_threads``; the socket options must
    stay at their defaults (TypeError or ValueError otherwise, before the source
    is made).
    """
    if config is None:
        config = ServerConfig()
    elif not isinstance(config, ServerConfig):
        raise TypeError(f"config must be a servekit.options.ServerConfig, not {config!r}")
    if not (isinstance(source, type) and issubclass(source, BaseServer)):
        raise TypeError(
            f"source must be a request source class (a servekit.BaseServer subclass), "
            f"not {source!r}"
        )
    if isinstance(handler, Program):
        raise TypeError(
            f"{handler!r} is an RPC program: it is served on sockets (make_server), "
            "not from a request source"
        )
    _refuse_socket_options(config, source)
    check_handler_fits(handler, None, config.concurrency, source.__name__)
    # A source's own options (config_options) come to it as keywords.
    own = {name: getattr(config, name) for name in getattr(source, "config_options", ())}
    server = with_model(source, config.concurrency)(address, handler, **own)
    server.config = config  # type: ignore[attr-defined]
    server.shutdown_timeout = config.shutdown_timeout
    if config.concurrency == "pool":
        server.max_workers = config.max_workers  # type: ignore[attr-defined]
        server.max_pending = config.max_pending  # type: ignore[attr-defined]
    if config.concurrency == "async":
        server.max_handler_threads = config.max_handler_threads  # type: ignore[attr-defined]
    logger.info("serving %s from %s (%s, %s)", server.server_address, source.__name__,
                config.concurrency, type(server).__name__)  # fmt: skip
    return server


def _refuse_socket_options(config: ServerConfig, source: type[BaseServer]) -> None:
    default = ServerConfig()
    takes = ANY_SOURCE_OPTIONS | getattr(source, "config_options", frozenset())
    for field in fields(ServerConfig):
        name = field.name
        if name not in takes and getattr(config, name) != getattr(default, name):
            if name in QUEUE_OPTIONS:
                raise ValueError(
                    f"{name} applies to a queue (a sqlite: or postgresql:// address), "
                    f"not to {source.__name__}: leave it at its default"
                )
            raise ValueError(
                f"{name} applies to sockets; {source.__name__} is a request source that is "
                "not one: leave it at its default"
            )


def _refuse_queue_options(config: ServerConfig) -> None:
    default = ServerConfig()
    for name in sorted(QUEUE_OPTIONS):
        if getattr(config, name) != getattr(default, name):
            raise ValueError(
                f"{name} applies to a queue (a sqlite: or postgresql:// address), not to "
                "a socket: leave it at its default"
            )


def _build(
    address: str, handler: RequestHandlerFactory | Program, config: ServerConfig
) -> TCPServer:
    """make_server from a checked config, without its log line."""
    spec = parse_address(address)
    # ServerConfig has checked that it is an ssl.SSLContext; its type names
    # only the shape, since options.py imports no ssl.
    ssl_context = cast("ssl.SSLContext | None", config.ssl_context)
    if config.certfile is not None:
        ssl_context = tls_context(config)
    trusted = parse_networks(config.trusted_proxies)
    if spec.transport == "fd":
        try:
            sock = socket.socket(fileno=spec.address)
        except OSError as exc:
            raise ValueError(f"{address}: descriptor {spec.address} is not an open socket") from exc
        transport = _transport_of(sock, address)
    elif spec.transport == "systemd":
        sock = _systemd_socket(spec.address)
        transport = _transport_of(sock, address)
    else:
        sock = None
        transport = spec.transport
    concurrency = config.concurrency
    try:
        if transport in ("udp", "unix-dgram") and (
            ssl_context is not None or config.proxy_protocol
        ):
            raise ValueError(f"{address}: TLS and the PROXY protocol need a stream socket")
        program = handler if isinstance(handler, Program) else None
        serves: RequestHandlerFactory
        if isinstance(handler, Program):
            serves = rpc_handler_class(handler, transport, concurrency)
        else:
            serves = handler
        check_handler_fits(serves, transport, concurrency, address)
        _oob.check_fits(serves, transport, ssl_context is not None, address)
    except BaseException:
        if sock is not None:
            sock.detach()  # an inherited descriptor is not ours to close
        raise
    server_class = cast("type[TCPServer]", with_model(_SOURCES[transport], concurrency))
    if program is not None:
        # Registers the program with rpcbind when it listens (see rpc.server).
        server_class = rpc_server_class(server_class)
    server = server_class(spec.address, serves, bind_and_activate=False)
    if program is not None:
        server.program = program  # type: ignore[attr-defined]
        server.rpc_register = config.rpcbind  # type: ignore[attr-defined]
    try:
        _configure(server, spec, sock, backlog=config.backlog, reuse_port=config.reuse_port)
        server.config = config  # type: ignore[attr-defined]
        if config.socket_file_mode is not None:
            server.socket_file_mode = config.socket_file_mode  # type: ignore[attr-defined]
        if config.max_packet_size is not None:
            server.max_packet_size = config.max_packet_size  # type: ignore[attr-defined]
        if concurrency == "pool":
            server.max_workers = config.max_workers  # type: ignore[attr-defined]
            server.max_pending = config.max_pending  # type: ignore[attr-defined]
        if concurrency == "async":
            server.max_handler_threads = config.max_handler_threads  # type: ignore[attr-defined]
        # The engines read these attributes (set on the class by the stdlib
        # names, on the instance here), not the config itself.
        server.shutdown_timeout = config.shutdown_timeout
        if server.socket_type == socket.SOCK_STREAM:
            server.ssl_context = ssl_context
            server.handshake_timeout = config.handshake_timeout
            server.proxy_protocol = config.proxy_protocol
            server.trusted_proxies = trusted
            server.max_connections = config.max_connections
            server.idle_timeout = config.idle_timeout
            server.read_timeout = config.read_timeout
            server.max_line_length = config.max_line_length
        if sock is None:
            server.server_bind()
            server.server_activate()
        elif sock.type == socket.SOCK_STREAM and not sock.getsockopt(
            socket.SOL_SOCKET, socket.SO_ACCEPTCONN
        ):
            server.server_activate()  # an inherited socket that is bound but not listening
        elif program is not None:
            server.register_with_rpcbind()  # type: ignore[attr-defined]  # listening already
    except BaseException:
        server.server_close()
        raise
    return server


def tls_context(config: ServerConfig) -> ssl.SSLContext:
    """The TLS context of a config with certfile (built anew: read the files now)."""
    assert config.certfile is not None
    return server_context(
        config.certfile, config.keyfile, config.cafile, password=config.keyfile_password,
        min_version=config.tls_min_version, ciphers=config.tls_ciphers,
        client_cert=config.client_cert,
    )  # fmt: skip


def _check_callable(handler: Any) -> None:
    if isinstance(handler, Program):
        return  # served by the RPC handlers (see servekit.rpc.server)
    if isinstance(handler, (str, bytes)) or not callable(handler):
        raise TypeError(
            f"handler must be a request handler class (or a callable that makes one), "
            f"not {handler!r}"
        )


def check_handler_fits(handler: Any, transport: str | None, concurrency: str, address: str) -> None:
    """TypeError, naming the mismatch and the fix, if ``handler`` cannot serve here.

    A handler class is checked against the transport (stream or datagram; None
    for a source that is not a socket) and the model (async or not); a factory
    that is not a class is checked at each request, since only what it makes can tell.
    """
    _check_callable(handler)
    if not isinstance(handler, type):
        return
    name = handler.__name__
    if issubclass(handler, AsyncBaseRequestHandler):
        if concurrency != "async":
            raise TypeError(
                f"{name} is an async handler (async def handle): serve it with "
                f"concurrency='async' (--concurrency async), not {concurrency!r}"
            )
    elif concurrency == "async":
        raise TypeError(
            f"{name} is a sync handler: the async engine runs "
            "servekit.aio.AsyncStreamRequestHandler subclasses (async def handle). Serve a "
            "sync handler with concurrency='pool' or 'threads' instead."
        )
    _oob.check_fits(handler, transport, False, address)
    if transport is None:
        return
    datagram = transport in ("udp", "unix-dgram")
    if datagram and issubclass(handler, (StreamRequestHandler, AsyncStreamRequestHandler)):
        raise TypeError(
            f"{name} is a stream handler, but {address} is a datagram socket: serve a "
            "DatagramRequestHandler (or AsyncDatagramRequestHandler) there, or listen on a "
            "stream address"
        )
    if not datagram and issubclass(handler, (DatagramRequestHandler, AsyncDatagramRequestHandler)):
        raise TypeError(
            f"{name} is a datagram handler, but {address} is a stream socket: serve a "
            "StreamRequestHandler (or AsyncStreamRequestHandler) there, or listen on udp:// "
            "or unix-dgram:"
        )


def socket_type_of(address: str) -> int:
    """``socket.SOCK_STREAM`` or ``socket.SOCK_DGRAM``: what ``address`` serves.

    For choosing the handler before make_server, which refuses one that does
    not fit: ``fd://N`` and ``systemd`` sockets are asked, and left open.
    """
    spec = parse_address(address)
    if spec.socket_type is not None:
        return spec.socket_type
    if spec.transport == "fd":
        try:
            sock = socket.socket(fileno=spec.address)
        except OSError as exc:
            raise ValueError(f"{address}: descriptor {spec.address} is not an open socket") from exc
    else:
        sock = _systemd_socket(spec.address)
    try:
        return sock.type
    finally:
        sock.detach()


def _systemd_socket(name: str | None) -> socket.socket:
    """The socket systemd passed (named ``name``, or the only one)."""
    # The environment stays: LISTEN_PID already keeps children from taking
    # these sockets, and another make_server("systemd:other") may still come.
    found = inherited_sockets(None if name is None else [name], unset_environment=False)
    if name is None and len(found) > 1:
        for extra in found:
            extra.detach()
        raise ValueError(
            f"systemd passed {len(found)} sockets; choose one with systemd:NAME "
            "(the FileDescriptorName= of its .socket unit)"
        )
    if not found:
        raise ValueError(f"systemd passed no socket named {name!r}")
    return found[0]


def _transport_of(sock: socket.socket, address: str) -> str:
    stream = sock.type == socket.SOCK_STREAM
    if sock.type not in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        sock.detach()
        raise ValueError(f"{address}: the inherited socket is neither stream nor datagram")
    if sock.family == getattr(socket, "AF_UNIX", None):
        return "unix" if stream else "unix-dgram"
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        return "tcp" if stream else "udp"
    sock.detach()
    raise ValueError(f"{address}: the inherited socket is of unsupported family {sock.family!r}")


def _configure(
    server: TCPServer,
    spec: ListenAddress,
    sock: socket.socket | None,
    *,
    backlog: int | None,
    reuse_port: bool,
) -> None:
    """Give ``server`` the socket and the options ``spec`` calls for, before binding."""
    server.request_queue_size = max(socket.SOMAXCONN, backlog or 0)
    server.allow_reuse_port = reuse_port
    if sock is not None:
        _replace_socket(server, sock)
        server.server_address = sock.getsockname()
        return
    family = spec.family
    if family is None:  # a host name: bind to what it resolves to first
        info = socket.getaddrinfo(
            spec.address[0], spec.address[1], socket.AF_UNSPEC, server.socket_type,
            0, socket.AI_PASSIVE,
        )  # fmt: skip
        family, _, _, _, sockaddr = info[0]
        server.server_address = sockaddr[:2]
    if family != server.address_family:
        _replace_socket(server, socket.socket(family, server.socket_type))
    if family in (socket.AF_INET, socket.AF_INET6) and server.socket_type == socket.SOCK_STREAM:
        server.allow_reuse_address = True
    if family == socket.AF_INET6 and server.server_address[0] in ("::", ""):
        _try_dual_stack(server.socket)


def _replace_socket(server: TCPServer, sock: socket.socket) -> None:
    server.socket.close()
    server.socket = sock
    server.address_family = sock.family


def _try_dual_stack(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    except (AttributeError, OSError):
        logger.info("dual-stack IPv6 is not available here; [::] serves IPv6 only")


def _describe(server: Any) -> str:
    """The listen address of ``server`` in the form make_server accepts."""
    return format_address(server.address_family, server.socket_type, server.server_address)
