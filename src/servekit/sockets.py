"""Socket servers: TCP, UDP, Unix stream and Unix datagram.

Each is a request source for ``core.BaseServer``: it binds and listens in the
constructor (unless ``bind_and_activate=False``) and turns readiness of its
socket into ``(request, client_address)`` pairs.

Error handling: ``accept()``/``recvmsg()`` failures are sorted by errno. A
connection that died before it was accepted is skipped quietly; running out of
descriptors or memory is logged and pauses the loop for a growing delay
(``ACCEPT_BACKOFF_FIRST`` up to ``ACCEPT_BACKOFF_MAX``) instead of spinning on
a socket that stays readable; anything else is logged at ERROR and paused the
same way. A datagram longer than ``max_packet_size`` is dropped and logged,
never handed to the handler cut short.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import ssl
import stat
import struct
import threading
from functools import cached_property
from typing import TYPE_CHECKING, Any, NoReturn

from servekit import _handoff
from servekit._preface import (
    PrefaceFailed,
    check_proxy_peer,
    handshake,
    preface_deadline,
    read_proxy_header,
    start_tls,
)
from servekit.core import BaseServer
from servekit.limits import IdleSocket, drop_datagram, kernel_timeouts, report, too_long_datagram

if TYPE_CHECKING:
    from servekit.core import RequestHandlerFactory
    from servekit.proxy import TrustedNetwork
    from servekit.stats import StatsSnapshot

__all__ = [
    "ACCEPT_BACKOFF_FIRST",
    "ACCEPT_BACKOFF_MAX",
    "ACCEPT_CAPACITY_ERRNOS",
    "TCPServer",
    "UDPServer",
    "UnixDatagramServer",
    "UnixStreamServer",
]

logger = logging.getLogger(__name__)

#: accept() ran out of a resource; retrying at once would fail the same way
#: and spin, so the loop pauses instead.
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

# The one connection is lost, not the listener: the peer reset before accept()
# returned, another process took it, or Linux reports a pending network error
# of the new socket from accept() (accept(2), "Error handling"). Datagram
# sockets report ICMP errors of earlier sends the same way.
_SKIP_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "ECONNABORTED", "EAGAIN", "EWOULDBLOCK", "EINTR", "EPROTO", "EPERM", "ENETDOWN",
        "ENOPROTOOPT", "EHOSTDOWN", "ENONET", "EHOSTUNREACH", "EOPNOTSUPP", "ENETUNREACH",
        "ECONNREFUSED", "ECONNRESET", "EMSGSIZE",
    )
    if hasattr(errno, name)
)  # fmt: skip

#: First pause after a resource failure, in seconds. Short, because a
#: descriptor is often freed within milliseconds by a finishing request.
ACCEPT_BACKOFF_FIRST = 0.01
#: The pause doubles on each failure in a row up to this, so a server out of
#: descriptors for minutes costs a few system calls a second and recovers
#: within a second of them coming back.
ACCEPT_BACKOFF_MAX = 1.0

# Linux's struct tcp_info holds tcpi_bytes_acked and tcpi_bytes_received (both
# u64) at these offsets since Linux 4.1/4.6; asking for them once at close is
# what makes byte counting free while the connection runs. (Reading stats asks
# the connections still open too, at most once a second: see servekit.stats.)
_TCP_INFO = getattr(socket, "TCP_INFO", None)
_TCP_INFO_BYTES = struct.Struct("=QQ")
_TCP_INFO_BYTES_AT = 120
_TCP_INFO_LEN = _TCP_INFO_BYTES_AT + _TCP_INFO_BYTES.size
# Linux TCP states (include/net/tcp_states.h) after the peer's FIN arrived:
# TIME_WAIT, CLOSE, CLOSE_WAIT, LAST_ACK, CLOSING; and after ours was
# acknowledged: FIN_WAIT2, TIME_WAIT, CLOSE. A reset also ends in CLOSE, with
# no FIN: such a connection is counted one byte short each way, the price of
# counting the normal close (LAST_ACK, then CLOSE) exactly.
_PEER_FIN_STATES = frozenset({6, 7, 8, 9, 11})
_OUR_FIN_ACKED_STATES = frozenset({5, 6, 7})


_TCP_FAMILIES = frozenset({socket.AF_INET, socket.AF_INET6})
_TCP_INFO_RETRIES = 3  # a close moves through three states at most


def _tcp_bytes(sock: Any) -> tuple[int, int]:
    """(received, sent and acknowledged) bytes of a TCP socket; (0, 0) if unknown.

    The caller knows the socket is TCP (its server's address_family): asking
    the socket (its family and type properties) cost a tenth of a churned
    connection's time.
    """
    if _TCP_INFO is None:
        return 0, 0
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _TCP_INFO_LEN)
        # Linux reads the state before it locks the socket to read the counters,
        # so a FIN that lands in between is counted but not yet in the state (seen:
        # FIN_WAIT1 with the peer's FIN in bytes_received). The same state read
        # again brackets the counters of the read before it: then they agree.
        for _ in range(_TCP_INFO_RETRIES):
            again = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _TCP_INFO_LEN)
            if again[:1] == info[:1]:
                break
            info = again
    except (AttributeError, OSError):
        return 0, 0
    if len(info) < _TCP_INFO_LEN:
        return 0, 0
    acked, received = _TCP_INFO_BYTES.unpack_from(info, _TCP_INFO_BYTES_AT)
    # Both counters count sequence numbers, and a FIN takes one: take out the
    # peer's FIN once it arrived and ours once it was acknowledged.
    state = info[0]
    fin_in = state in _PEER_FIN_STATES and received > 0
    fin_out = state in _OUR_FIN_ACKED_STATES and acked > 0
    return received - fin_in, acked - fin_out


class TCPServer(BaseServer):
    """Base class for various socket-based server classes.

    Defaults to synchronous IP stream (i.e., TCP).

    Methods for the caller:

    - __init__(server_address, RequestHandlerClass, bind_and_activate=True)
    - serve_forever(poll_interval=0.5)
    - shutdown()
    - handle_request()  # if you don't use serve_forever()
    - fileno() -> int   # for selector

    Methods that may be overridden:

    - server_bind()
    - server_activate()
    - get_request() -> request, client_address
    - handle_timeout()
    - verify_request(request, client_address)
    - process_request(request, client_address)
    - shutdown_request(request)
    - close_request(request)
    - handle_error()

    Methods for derived classes:

    - finish_request(request, client_address)

    Class variables that may be overridden by derived classes or instances:

    - timeout
    - address_family
    - socket_type
    - request_queue_size (only for stream sockets)
    - allow_reuse_address
    - allow_reuse_port
    - max_connections (servekit: stop accepting while this many are open;
      None, the default, for no limit)
    - idle_timeout, read_timeout, max_line_length (servekit: limits on each
      connection, enforced by StreamRequestHandler; see servekit.limits)
    - ssl_context, handshake_timeout (servekit: TLS, with the handshake in
      the worker; see servekit.tls)
    - proxy_protocol, trusted_proxies (servekit: read a PROXY header from
      peers in trusted_proxies; see servekit.proxy)

    With TLS or the PROXY protocol on, verify_request() runs in the worker
    after the handshake and the header, so it sees the real client's address
    and the peer's certificate.

    Instance variables:

    - server_address
    - RequestHandlerClass
    - socket
    """

    address_family: int = socket.AF_INET
    socket_type: int = socket.SOCK_STREAM
    request_queue_size = 5
    allow_reuse_address = False
    allow_reuse_port = False
    max_connections: int | None = None
    # Stream limits (servekit.limits); None, the stdlib's behaviour, for none.
    idle_timeout: float | None = None
    read_timeout: float | None = None
    max_line_length: int | None = None
    ssl_context: ssl.SSLContext | None = None
    handshake_timeout: float | None = None
    proxy_protocol = False
    trusted_proxies: tuple[TrustedNetwork, ...] = ()

    _request_failures = 0
    _at_max_connections = False

    def __init__(
        self,
        server_address: Any,
        RequestHandlerClass: RequestHandlerFactory,
        bind_and_activate: bool = True,
    ) -> None:
        """Constructor.  May be extended, do not override."""
        BaseServer.__init__(self, server_address, RequestHandlerClass)
        self.socket = socket.socket(self.address_family, self.socket_type)
        if bind_and_activate:
            try:
                self.server_bind()
                self.server_activate()
            except:
                self.server_close()
                raise

    def server_bind(self) -> None:
        """Called by constructor to bind the socket.

        May be overridden.
        """
        if self.allow_reuse_address and hasattr(socket, "SO_REUSEADDR"):
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.allow_reuse_port and hasattr(socket, "SO_REUSEPORT"):
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        self.socket.bind(self.server_address)
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        """Called by constructor to activate the server.

        May be overridden.
        """
        self.socket.listen(self.request_queue_size)

    def server_close(self) -> None:
        """Called to clean-up the server.

        May be overridden.
        """
        self.socket.close()
        if not self._hands_off_requests:  # a model that does drains them with its own
            _handoff.stop_children(self)

    def fileno(self) -> int:
        """Return socket file number.

        Interface required by selector.
        """
        return self.socket.fileno()

    def get_request(self) -> tuple[Any, Any]:
        """Get the request and client address from the socket.

        May be overridden.
        """
        if isinstance(self.socket, ssl.SSLSocket):
            # Accept plainly: the handshake is the worker's job (see tls.py).
            return socket.socket.accept(self.socket)
        return self.socket.accept()

    @property
    def _verify_in_worker(self) -> bool:
        return (
            self.ssl_context is not None
            or self.proxy_protocol
            # getattr: some subclasses never make a socket (wsgiref's tests do that)
            or isinstance(getattr(self, "socket", None), ssl.SSLSocket)
        )

    def _run_request(self, request: Any, client_address: Any) -> None:
        """With TLS or the PROXY protocol, first read the header, run the
        handshake, and call verify_request() with what they revealed."""
        if not self._verify_in_worker:
            self.finish_request(request, client_address)
            return
        try:
            conn, address = self._open_preface(request, client_address)
        except PrefaceFailed:
            self._counters.not_a_request()  # the loop counted it when it took the connection
            raise
        access = self._access
        if access is not None:
            access.preface_done(request, conn, address)
        try:
            if self.verify_request(conn, address):
                self.finish_request(conn, address)
            else:
                self._counters.not_a_request()
                if access is not None:
                    access.refused(conn)
        except Exception:
            if access is not None:  # now: a TLS connection's line is written just below
                access.failed(conn)
            raise
        finally:
            if conn is not request:
                self.shutdown_request(conn)

    def _open_preface(self, request: Any, client_address: Any) -> tuple[Any, Any]:
        """The PROXY header, then the TLS handshake: (connection, real client address)."""
        deadline = preface_deadline(self.handshake_timeout)
        address, conn = client_address, request
        try:
            if self.proxy_protocol:
                check_proxy_peer(client_address, self.trusted_proxies)
                real = read_proxy_header(request, deadline)
                if real is not None:
                    address = real
            context = self.ssl_context
            if context is None and isinstance(self.socket, ssl.SSLSocket):
                context = self.socket.context
            if context is not None:
                # Tracked throughout, so that a stop can cut it: the plain socket
                # looks closed once wrapped, and prune() must not take that for a close.
                self._connections.pin(request)
                conn = start_tls(request, context)
                self._connections.replace(request, conn)
                if self._access is not None:
                    self._access.alias(request, conn)
                handshake(conn, deadline)
        except PrefaceFailed as exc:
            report(self, client_address, exc, request)
            if conn is not request:  # the caller closes the plain socket; the wrapped one is ours
                self._forget_failed_handshake(conn)
                conn.close()
            raise
        if self.idle_timeout is None:
            conn.settimeout(None)
        else:
            self._limit_idle(conn)
        return conn, address

    def shutdown_request(self, request: Any) -> None:
        """Called to shutdown and close an individual request."""
        try:
            # Explicitly shutdown: socket.close() merely releases the socket
            # and waits for GC to perform the actual close.
            request.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # some platforms may raise ENOTCONN here
        self.close_request(request)

    def close_request(self, request: Any) -> None:
        """Called to clean up an individual request."""
        self._forget_request(request)
        request.close()

    # -- connection accounting: what max_connections, stats and cutting use --

    @cached_property
    def _connections(self) -> _Connections:
        return _Connections()

    def request_accepted(self, request: Any, client_address: Any) -> None:
        self._counters.connection()
        self._connections.add(request)
        if self._access is not None:
            self._access.opened(request, client_address)
        if self.idle_timeout is not None:
            self._limit_idle(request)

    def _limit_idle(self, request: Any) -> None:
        """Handlers that read self.request directly get the idle limit too.

        A plain socket becomes an IdleSocket, under the kernel's timeouts; a
        TLS connection keeps Python's, which its records need, and so does a
        subclass of a get_request() override, which may read in its own way.
        """
        # getattr: some subclasses never make a socket (wsgiref's tests do that)
        listener = getattr(self, "socket", None)
        tls = self.ssl_context is not None or isinstance(listener, ssl.SSLSocket)
        if type(request) is socket.socket and not tls:
            request.__class__ = self._idle_socket
            kernel_timeouts(request, self.idle_timeout)
        elif isinstance(request, IdleSocket):
            request.settimeout(None)  # after the preface's own timeouts: the kernel's again
        else:
            request.settimeout(self.idle_timeout)

    @cached_property
    def _idle_socket(self) -> type[IdleSocket]:
        return IdleSocket.for_server(self)

    def _forget_request(self, request: Any) -> None:
        if not self._connections.remove(request):
            return
        if self.address_family in _TCP_FAMILIES:
            received, sent = _tcp_bytes(request)
            self._counters.transferred(received, sent)
            if self._access is not None:
                self._access.closed(request, received, sent)
        elif self._access is not None:
            self._access.closed(request, None, None)  # a Unix socket: no TCP_INFO
        if self._at_max_connections:
            self.wake_loop()

    def _forget_failed_handshake(self, conn: Any) -> None:
        """Forget ``conn``, whose TLS handshake failed, without counting its bytes:
        the async engine cannot (its transport has closed the socket by the time it
        hears of the failure), and every model counts alike."""
        if self._connections.remove(conn) and self._at_max_connections:
            self.wake_loop()
        if self._access is not None:
            self._access.closed(conn, None, None)

    def open_requests(self) -> int:
        return len(self._connections)

    @property
    def stats(self) -> StatsSnapshot:
        """A consistent copy of this server's counters (see StatsSnapshot); the
        bytes include those of TCP connections still open, at most a second old."""
        if self.address_family not in _TCP_FAMILIES:
            return super().stats  # Unix sockets have no TCP_INFO to ask
        return self._counters.snapshot(self.open_requests(), self._open_bytes)

    def _open_bytes(self) -> tuple[int, int]:
        """(received, sent) by the connections open now, so far (see Stats.snapshot)."""
        received = sent = 0
        for conn in self._connections.snapshot():
            conn_received, conn_sent = _tcp_bytes(conn)
            received += conn_received
            sent += conn_sent
        return received, sent

    def ready_for_request(self) -> bool:
        limit = self.max_connections
        if limit is not None:
            # Raise the flag before counting: a connection closing in between
            # then sees it and wakes the loop, so no wake-up is lost.
            was_full, self._at_max_connections = self._at_max_connections, True
            if self.open_requests() >= limit:
                self._connections.prune()
            if self.open_requests() >= limit:
                if not was_full:
                    self._counters.limit("max_connections")
                    logger.warning(
                        "%s: max_connections=%d reached; new clients wait in the backlog "
                        "until a connection closes",
                        self, limit,
                    )  # fmt: skip
                return False
            self._at_max_connections = False
            if was_full:
                logger.info("%s: below max_connections=%d again; accepting", self, limit)
        return super().ready_for_request()

    def cut_requests(self) -> int:
        open_now = self._connections.snapshot()
        for conn in open_now:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except (AttributeError, OSError):
                pass  # already closed, or not a socket
        return len(open_now) + _handoff.terminate_children(self)  # those a handler's fork() made

    def get_request_failed(self, exc: OSError) -> None:
        if exc.errno is None or exc.errno in _SKIP_ERRNOS:
            return  # one request lost, not the source: serve the next one
        self._request_failures += 1
        delay = min(ACCEPT_BACKOFF_FIRST * 2 ** (self._request_failures - 1), ACCEPT_BACKOFF_MAX)
        self.pause_requests(delay)
        name = errno.errorcode.get(exc.errno, str(exc.errno))
        if exc.errno in ACCEPT_CAPACITY_ERRNOS:
            level = logging.WARNING if self._request_failures == 1 else logging.DEBUG
            logger.log(
                level,
                "%s: cannot take a new request (%s: %s); pausing %.2fs (failure %d in a row). "
                "Raise the open-file limit (ulimit -n) or lower the load.",
                self, name, exc.strerror, delay, self._request_failures,
            )  # fmt: skip
        else:
            logger.error(
                "%s: getting a request failed (%s: %s); pausing %.2fs (failure %d in a row)",
                self, name, exc.strerror, delay, self._request_failures,
            )  # fmt: skip

    def get_request_recovered(self) -> None:
        super().get_request_recovered()
        if self._request_failures:
            logger.info("%s: taking requests again after %d failures", self, self._request_failures)
            self._request_failures = 0


# A plain int: the socket module's flags are IntFlags, whose operators run Python code.
_MSG_DONTWAIT = int(socket.MSG_DONTWAIT)


class UDPServer(TCPServer):
    """UDP server class.

    ``max_packet_size`` is the largest datagram accepted; a longer one is
    dropped, counted in ``stats.limits``, and logged on the ``servekit.limits``
    logger (at most one line every ten seconds, so a flood is not a log flood).
    """

    allow_reuse_address = False
    allow_reuse_port = False
    socket_type = socket.SOCK_DGRAM
    max_packet_size = 8192
    # A datagram has no preface (TLS handshake, PROXY header) to read first:
    # it is verified in the loop, as in the stdlib.
    _verify_in_worker = False

    def get_request(self) -> tuple[Any, Any]:
        # One byte more than the limit: a datagram that fills it was longer
        # than max_packet_size (the kernel cut it). recvmsg's MSG_TRUNC flag
        # says the same, but costs a tuple and a list more per datagram.
        #
        # MSG_DONTWAIT: the loop calls this when the socket is readable, but a
        # loop sharing it (a dup(), a fork) may have taken the datagram first;
        # then EAGAIN, rather than a loop stuck in recvfrom until the next.
        # (servekit's prefork workers make their shared sockets non-blocking.)
        data, client_addr = self.socket.recvfrom(self.max_packet_size + 1, _MSG_DONTWAIT)
        if len(data) > self.max_packet_size:
            drop_datagram(
                self, client_addr, "max_packet_size", too_long_datagram(self.max_packet_size)
            )
            raise OSError(errno.EMSGSIZE, "datagram longer than max_packet_size")
        return (data, self.socket), client_addr

    def server_activate(self) -> None:
        # No need to call listen() for UDP.
        pass

    def request_accepted(self, request: Any, client_address: Any) -> None:
        self._counters.bytes_in += len(request[0])  # Stats.datagram(), a call less each
        if self._access is not None:
            self._access.opened(request, client_address, datagram=True)

    # The connection limits are a stream's: a datagram opens nothing that
    # max_connections would count, and nothing idles.
    ready_for_request = BaseServer.ready_for_request
    stats = BaseServer.stats  # no connection to read bytes from: a datagram's count when it comes

    def _run_request(self, request: Any, client_address: Any) -> None:
        self.finish_request(request, client_address)  # no preface to read first

    def shutdown_request(self, request: Any) -> None:
        # No need to shutdown anything.
        self.close_request(request)

    def close_request(self, request: Any) -> None:
        # No need to close anything.
        if self._access is not None:
            self._access.closed(request, len(request[0]), None)


class _Connections:
    """The stream connections a server accepted and has not closed yet."""

    __slots__ = ("_lock", "_open", "_pinned")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # By id(): a request a subclass's get_request() returns need not be hashable.
        self._open: dict[int, Any] = {}
        # Connections being wrapped for TLS: their old socket object looks
        # closed for a moment, and prune() must not take that for a close.
        self._pinned: set[int] = set()

    def __len__(self) -> int:
        return len(self._open)

    def add(self, conn: Any) -> None:
        with self._lock:
            self._open[id(conn)] = conn

    def remove(self, conn: Any) -> bool:
        """Forget ``conn``; False if it was not tracked."""
        with self._lock:
            self._pinned.discard(id(conn))
            return self._open.pop(id(conn), None) is not None

    def pin(self, conn: Any) -> None:
        """``conn`` is about to be wrapped: keep it until replace()."""
        with self._lock:
            self._pinned.add(id(conn))

    def replace(self, old: Any, new: Any) -> None:
        """Track ``new`` in place of ``old`` (a socket wrapped for TLS)."""
        with self._lock:
            self._pinned.discard(id(old))
            self._open.pop(id(old), None)
            self._open[id(new)] = new

    def snapshot(self) -> list[Any]:
        with self._lock:
            return list(self._open.values())

    def keep_only(self, conn: Any) -> list[Any]:
        """In a child forked to finish ``conn``'s request: track ``conn`` alone and
        return the others, for the child to close. A new lock: a thread that held
        the old one is the parent's."""
        self._lock = threading.Lock()
        others = [c for c in self._open.values() if c is not conn]
        self._open = {id(conn): conn}
        self._pinned = set()
        return others

    def prune(self) -> None:
        """Forget connections closed without close_request() (a subclass's doing)."""
        with self._lock:
            self._open = {
                key: c for key, c in self._open.items() if key in self._pinned or not _is_closed(c)
            }


def _is_closed(conn: Any) -> bool:
    try:
        return bool(conn.fileno() == -1)
    except (AttributeError, OSError, ValueError):
        return True


def _is_filesystem_path(address: Any) -> bool:
    """True for a Unix socket path that names a file (not abstract, not unnamed)."""
    if isinstance(address, (str, bytes, os.PathLike)):
        path = os.fsencode(address)
        return bool(path) and not path.startswith(b"\0")
    return False


class _UnixSocketFile(TCPServer):
    """Manage the file of a Unix socket bound to a filesystem path.

    - binding over the file of a live server fails with EADDRINUSE;
    - the file of a dead server (connect() is refused) is replaced;
    - any other kind of file is left alone and binding fails;
    - ``socket_file_mode``, when set, is applied to the file before clients
      can connect;
    - server_close() removes the file, if it is still the one this server made
      and this is the process that made it.

    Abstract-namespace names (a leading NUL byte) have no file and none of this applies.
    """

    #: Permission bits for the socket file (say 0o660), or None for the umask's.
    socket_file_mode: int | None = None

    _bound_file: tuple[str | bytes, int, int, int] | None = None

    def server_bind(self) -> None:
        path = self.server_address
        if _is_filesystem_path(path):
            self._remove_stale_socket_file(path)
        super().server_bind()
        if _is_filesystem_path(path):
            if self.socket_file_mode is not None:
                os.chmod(path, self.socket_file_mode)
            st = os.stat(path)
            self._bound_file = (path, st.st_dev, st.st_ino, os.getpid())

    def _remove_stale_socket_file(self, path: str | bytes) -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise FileExistsError(
                errno.EEXIST,
                f"{path!r} exists and is not a socket; remove it or choose another path",
            )
        with socket.socket(socket.AF_UNIX, self.socket_type) as probe:
            probe.setblocking(False)
            try:
                probe.connect(path)
            except ConnectionRefusedError:
                pass  # nobody listens: stale
            except FileNotFoundError:
                return
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EPROTOTYPE):
                    return  # cannot tell (permissions?): let bind() report it
                self._refuse_live(path)
            else:
                self._refuse_live(path)
        logger.info("%s: removing stale socket file %r left by a stopped server", self, path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    def _refuse_live(self, path: str | bytes) -> NoReturn:
        raise OSError(
            errno.EADDRINUSE,
            f"a running server is listening on {path!r}; stop it or choose another path",
        )

    def server_close(self) -> None:
        super().server_close()
        bound, self._bound_file = self._bound_file, None
        if bound is None:
            return
        path, dev, ino, pid = bound
        if pid != os.getpid():
            return  # a forked child: the file belongs to its parent
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return
        if (st.st_dev, st.st_ino) == (dev, ino):
            os.unlink(path)


if hasattr(socket, "AF_UNIX"):

    class UnixStreamServer(_UnixSocketFile, TCPServer):
        """A stream server on a Unix socket.

        Beyond the stdlib: see ``socket_file_mode`` and the handling of an
        existing socket file, described on ``_UnixSocketFile``.
        """

        address_family = socket.AF_UNIX

    class UnixDatagramServer(_UnixSocketFile, UDPServer):
        """A datagram server on a Unix socket; its file is managed as for UnixStreamServer."""

        address_family = socket.AF_UNIX
