"""The connection preface: what a stream connection goes through before its handler.

First the PROXY header, if the server expects one (it says who the real
client is), then the TLS handshake, if the server speaks TLS. Both read from
a client that may be slow or hostile, so both run in the worker, never in the
serving loop, and both share one deadline: ``handshake_timeout``.

One policy for both engines: who may send a header, the deadline, what each
failure is called and which limit it counts under are decided here; each
engine only drives the reads (blocking, or on its loop) and the handshake
(an ``ssl.SSLSocket``, or an asyncio transport).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from time import monotonic
from typing import Any

from servekit.errors import LimitExceeded
from servekit.proxy import (
    NEED_DATA,
    V1_MAX_LENGTH,
    V2_FIXED_LENGTH,
    ProxyHeaderError,
    ProxyParser,
    TrustedNetwork,
    is_trusted,
)

__all__ = [
    "PrefaceFailed",
    "check_proxy_peer",
    "handshake",
    "handshake_timed_out",
    "preface_deadline",
    "read_proxy_header",
    "read_proxy_header_async",
    "remaining",
    "start_tls",
    "tls_failed",
]

# The shortest valid headers are "PROXY UNKNOWN\r\n" (15 bytes) and a v2
# fixed part (16 bytes): reading 15 bytes at first never takes application
# data, and after that the parser knows how much more to ask for.
_FIRST_READ = 15


class PrefaceFailed(LimitExceeded):
    """The PROXY header or the TLS handshake failed; the connection is closed."""

    def __init__(self, message: str, limit: str) -> None:
        super().__init__(message)
        self.limit = limit


def preface_deadline(handshake_timeout: float | None) -> float | None:
    """When the preface of a connection taken now must be done (monotonic), or None."""
    return None if handshake_timeout is None else monotonic() + handshake_timeout


def remaining(deadline: float | None, what: str) -> float | None:
    """Seconds left before ``deadline`` for ``what``; PrefaceFailed if none are."""
    if deadline is None:
        return None
    left = deadline - monotonic()
    if left <= 0:
        raise handshake_timed_out(what)
    return left


def handshake_timed_out(what: str) -> PrefaceFailed:
    """``what`` (the PROXY header, the TLS handshake) ran past handshake_timeout."""
    return PrefaceFailed(f"{what} not complete within handshake_timeout", "handshake_timeout")


def tls_failed(exc: BaseException) -> PrefaceFailed:
    """The TLS handshake failed with ``exc`` (a bad client, a reset)."""
    return PrefaceFailed(f"TLS handshake failed: {exc}", "tls_handshake")


def check_proxy_peer(address: Any, trusted: tuple[TrustedNetwork, ...]) -> None:
    """PrefaceFailed unless ``address`` may send a PROXY header (it is in ``trusted``)."""
    if not is_trusted(address, trusted):
        raise PrefaceFailed(
            "not a trusted proxy: PROXY headers are taken from trusted_proxies only",
            "proxy_protocol",
        )


def read_proxy_header(sock: socket.socket, deadline: float | None) -> Any:
    """Read a PROXY header and nothing after it; return the client address it names.

    Returns the real client's address, or None when the header says LOCAL or
    UNKNOWN (the proxy speaking for itself, as in a health check: the
    connection's own address holds).
    """
    parser = ProxyParser()
    received = bytearray()
    want = _FIRST_READ
    while True:
        if want:
            data = _recv(sock, want, deadline)
        else:  # a v1 line of unknown length: look ahead, take up to the CRLF
            data = _recv_v1_part(sock, deadline)
        done, address = _feed(parser, received, data)
        if done:
            return address
        want = _v2_bytes_wanted(received) if received[:1] == b"\r" else 0


async def read_proxy_header_async(sock: socket.socket, deadline: float | None) -> Any:
    """read_proxy_header() for a connection on an asyncio loop (the socket non-blocking).

    asyncio's sock_recv() cannot peek, so after the first 15 bytes a v1 line
    is read a byte at a time (at most 92 more): still never a byte too many.
    """
    loop = asyncio.get_running_loop()
    parser = ProxyParser()
    received = bytearray()
    want = _FIRST_READ
    while True:
        try:
            async with asyncio.timeout(remaining(deadline, "PROXY header")):
                data = await loop.sock_recv(sock, want)
        except TimeoutError:
            raise handshake_timed_out("PROXY header") from None
        done, address = _feed(parser, received, data)
        if done:
            return address
        want = _v2_bytes_wanted(received) if received[:1] == b"\r" else 1


def _feed(parser: ProxyParser, received: bytearray, data: bytes) -> tuple[bool, Any]:
    """Give ``data`` to the parser: (header complete?, the client address it names or None)."""
    received += data
    parser.receive_data(data)
    try:
        event = parser.next_event()
    except ProxyHeaderError as exc:
        raise PrefaceFailed(f"bad PROXY header: {exc}", "proxy_protocol") from None
    if event is NEED_DATA:
        return False, None
    return True, event.source if event.command == "PROXY" else None


def _recv(sock: socket.socket, size: int, deadline: float | None, flags: int = 0) -> bytes:
    sock.settimeout(remaining(deadline, "PROXY header"))
    try:
        return sock.recv(size, flags)
    except TimeoutError:
        raise handshake_timed_out("PROXY header") from None


def _recv_v1_part(sock: socket.socket, deadline: float | None) -> bytes:
    """Take what has arrived of a v1 line, never past its CRLF."""
    ahead = _recv(sock, V1_MAX_LENGTH, deadline, socket.MSG_PEEK)
    end = ahead.find(b"\n")
    return _recv(sock, len(ahead) if end < 0 else end + 1, deadline) if ahead else b""


def _v2_bytes_wanted(received: bytearray) -> int:
    """Bytes still missing from a v2 header (its length is in bytes 14-15)."""
    if len(received) < V2_FIXED_LENGTH:
        return V2_FIXED_LENGTH - len(received)
    total = V2_FIXED_LENGTH + int.from_bytes(received[14:16], "big")
    return max(1, total - len(received))


def start_tls(sock: socket.socket, context: ssl.SSLContext) -> ssl.SSLSocket:
    """``sock`` wrapped for the server side of TLS, the handshake not begun.

    The wrapped socket takes over the descriptor: ``sock`` looks closed from
    now on. The caller tracks (and can cut) the wrapped one while the
    handshake runs, and closes it if the handshake fails.
    """
    try:
        return context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
    except (ssl.SSLError, OSError) as exc:
        raise tls_failed(exc) from None


def handshake(tls: ssl.SSLSocket, deadline: float | None) -> None:
    """Run the TLS handshake of ``tls`` (from start_tls()) before ``deadline``.

    Raises PrefaceFailed if it fails or runs out of time, and leaves ``tls``
    open: closing it, and forgetting it, is the caller's.
    """
    tls.settimeout(remaining(deadline, "TLS handshake"))  # a PROXY header may have used it up
    try:
        tls.do_handshake()
    except TimeoutError:
        raise handshake_timed_out("TLS handshake") from None
    except (ssl.SSLError, OSError) as exc:
        raise tls_failed(exc) from None
