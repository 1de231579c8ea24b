"""The connection preface on its own: the PROXY header readers and the TLS handshake,
on real sockets (socketpairs), with no server around them.

What matters most: a reader takes the header and not one byte more, whatever the
header's length and however it is split, since what follows belongs to the handler.
Every wait is bounded: a deadline (handshake_timeout) where the code under test has
one, WAIT (10 s) for the test's own waits.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import fcntl
import shutil
import socket
import ssl
import termios
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from time import monotonic
from typing import Any

import pytest

from servekit._preface import (
    PrefaceFailed,
    handshake,
    read_proxy_header,
    read_proxy_header_async,
    start_tls,
)
from servekit.proxy import PP2_TYPE_ALPN, PP2_TYPE_AUTHORITY, V2_SIGNATURE, build_v1, build_v2
from tests.conftest import WAIT

APP_DATA = b"GET / HTTP/1.1\r\nHost: example\r\n\r\n"

#: (header, the address read_proxy_header returns for it)
HEADERS = {
    "v1-tcp4": (build_v1(("192.0.2.1", 5678), ("198.51.100.2", 443)), ("192.0.2.1", 5678)),
    "v1-tcp6": (build_v1(("2001:db8::1", 5678), ("2001:db8::2", 443)), ("2001:db8::1", 5678)),
    "v1-longest": (
        build_v1(("ffff:" * 7 + "fffe", 65535), ("ffff:" * 7 + "ffff", 65535)),
        ("ffff:" * 7 + "fffe", 65535),
    ),
    "v1-unknown": (build_v1(None, None), None),
    "v2-ipv4": (build_v2(("192.0.2.1", 5678), ("198.51.100.2", 443)), ("192.0.2.1", 5678)),
    "v2-ipv6-tlvs": (
        build_v2(
            ("2001:db8::1", 1),
            ("2001:db8::2", 2),
            tlvs=[(PP2_TYPE_ALPN, b"h2"), (PP2_TYPE_AUTHORITY, b"example.com")],
            crc32c=True,
        ),
        ("2001:db8::1", 1),
    ),
    "v2-unix": (build_v2("/run/client.sock", "/run/server.sock"), "/run/client.sock"),
    "v2-local": (build_v2(None, None, command="LOCAL"), None),
    "v2-unspec": (build_v2(None, None), None),
}

BAD_HEADERS = {
    "http": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    "v1-bad-address": b"PROXY TCP4 999.0.0.1 192.0.2.2 1 2\r\n",
    "v1-lowercase": b"proxy TCP4 192.0.2.1 192.0.2.2 1 2\r\n",
    "v1-too-long": b"PROXY UNKNOWN " + b"x" * 120 + b"\r\n",
    "v2-bad-version": V2_SIGNATURE + bytes([0x31, 0x11, 0, 12]) + bytes(12),
    "v2-bad-command": V2_SIGNATURE + bytes([0x2F, 0x11, 0, 12]) + bytes(12),
    "v2-bad-crc": build_v2(("192.0.2.1", 1), ("192.0.2.2", 2), crc32c=True)[:-1] + b"\x00",
}

LOOPS = ["asyncio", "uvloop"]


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(server side, client side) of a connected stream socketpair."""
    server, client = socket.socketpair()
    client.settimeout(WAIT)
    with server, client:
        yield server, client


def _unread(sock: socket.socket) -> int:
    """Bytes received on ``sock`` and not yet read from it (FIONREAD)."""
    count = array.array("i", [0])
    fcntl.ioctl(sock.fileno(), termios.FIONREAD, count)
    return count[0]


class Trickle:
    """Sends ``data`` a byte at a time from a thread, each byte only once the reader has
    taken the one before (FIONREAD on the reader's socket says so), so that every read
    of the header gets one byte. ``then`` goes with the last byte, in the same send."""

    def __init__(self, client: socket.socket, server: socket.socket, data: bytes, then: bytes):
        self.failure: str | None = None
        self._thread = threading.Thread(
            target=self._run, args=(client, server, data, then), daemon=True
        )
        self._thread.start()

    def _run(self, client: socket.socket, server: socket.socket, data: bytes, then: bytes) -> None:
        for i in range(len(data)):
            last = i == len(data) - 1
            client.sendall(data[i : i + 1] + (then if last else b""))
            if last:
                return
            deadline = monotonic() + WAIT
            while _unread(server):  # polled: nothing announces that a peer has read
                if monotonic() > deadline:
                    self.failure = f"byte {i} was not read within {WAIT}s"
                    return
                threading.Event().wait(0.0005)

    def join(self) -> None:
        self._thread.join(WAIT)
        assert not self._thread.is_alive()
        assert self.failure is None, self.failure


def _rest(server: socket.socket, client: socket.socket) -> bytes:
    """Everything left unread on ``server`` once the client has finished sending."""
    client.shutdown(socket.SHUT_WR)
    server.setblocking(True)
    server.settimeout(WAIT)
    data = b""
    while chunk := server.recv(65536):
        data += chunk
    return data


def _run_async(kind: str, make: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run ``make()`` on a new loop of ``kind``, bounded by WAIT."""
    if kind == "uvloop":
        uvloop = pytest.importorskip("uvloop", reason="uvloop is in the dev extra")
        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(asyncio.wait_for(make(), WAIT))
    finally:
        loop.close()


def _read_async(kind: str, server: socket.socket, deadline: float | None) -> Any:
    server.setblocking(False)
    return _run_async(kind, lambda: read_proxy_header_async(server, deadline))


def _read(engine: str, server: socket.socket, deadline: float | None) -> Any:
    """read_proxy_header (engine "sync") or read_proxy_header_async on a loop."""
    if engine == "sync":
        return read_proxy_header(server, deadline)
    return _read_async(engine, server, deadline)


ENGINES = ["sync", *LOOPS]


# -- PROXY headers ---------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("name", list(HEADERS))
def test_the_header_is_read_and_the_application_data_left(
    pair: tuple[socket.socket, socket.socket], engine: str, name: str
) -> None:
    """Header and application data in one send: the reader returns the address and
    leaves every byte after the header in the socket."""
    server, client = pair
    header, address = HEADERS[name]
    client.sendall(header + APP_DATA)
    assert _read(engine, server, monotonic() + WAIT) == address
    assert _rest(server, client) == APP_DATA


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("name", ["v1-tcp4", "v1-unknown", "v2-ipv6-tlvs", "v2-local"])
def test_a_header_sent_a_byte_at_a_time(
    pair: tuple[socket.socket, socket.socket], engine: str, name: str
) -> None:
    """Every recv() gets one byte of the header; the last comes with the application's
    first bytes, in the same send, which must stay unread."""
    server, client = pair
    header, address = HEADERS[name]
    trickle = Trickle(client, server, header, APP_DATA)
    try:
        assert _read(engine, server, monotonic() + WAIT) == address
    finally:
        trickle.join()
    assert _rest(server, client) == APP_DATA


@pytest.mark.parametrize("engine", ENGINES)
def test_no_deadline_waits_for_the_whole_header(
    pair: tuple[socket.socket, socket.socket], engine: str
) -> None:
    """deadline=None: no timeout, the header still read exactly (the trickle bounds it)."""
    server, client = pair
    header, address = HEADERS["v2-ipv4"]
    trickle = Trickle(client, server, header, b"x")
    try:
        assert _read(engine, server, None) == address
    finally:
        trickle.join()
    assert _rest(server, client) == b"x"


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("name", list(BAD_HEADERS))
def test_a_bad_header_fails_as_proxy_protocol(
    pair: tuple[socket.socket, socket.socket], engine: str, name: str
) -> None:
    server, client = pair
    client.sendall(BAD_HEADERS[name])
    with pytest.raises(PrefaceFailed) as failed:
        _read(engine, server, monotonic() + WAIT)
    assert failed.value.limit == "proxy_protocol"
    assert "bad PROXY header" in str(failed.value)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("sent", [b"", b"PROXY TCP4 192.0", V2_SIGNATURE + b"\x21\x11\x00"])
def test_a_connection_closed_before_the_header_ends_fails_as_proxy_protocol(
    pair: tuple[socket.socket, socket.socket], engine: str, sent: bytes
) -> None:
    """Not a hang, not a spin until the deadline: the EOF ends it (the deadline is WAIT,
    so a reader that missed the EOF would fail as handshake_timeout instead)."""
    server, client = pair
    client.sendall(sent)
    client.shutdown(socket.SHUT_WR)
    with pytest.raises(PrefaceFailed) as failed:
        _read(engine, server, monotonic() + WAIT)
    assert failed.value.limit == "proxy_protocol"


@pytest.mark.parametrize("engine", ENGINES)
def test_a_deadline_already_past_fails_at_once(
    pair: tuple[socket.socket, socket.socket], engine: str
) -> None:
    """Even with the header there to read: the time for the preface is over."""
    server, client = pair
    client.sendall(HEADERS["v1-tcp4"][0])
    with pytest.raises(PrefaceFailed) as failed:
        _read(engine, server, monotonic() - 1)
    assert failed.value.limit == "handshake_timeout"
    assert _unread(server) == len(HEADERS["v1-tcp4"][0])  # nothing was read


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("sent", [b"", b"PROXY TCP4 ", V2_SIGNATURE + b"\x21"])
def test_a_silent_or_stalled_client_fails_at_the_deadline(
    pair: tuple[socket.socket, socket.socket], engine: str, sent: bytes
) -> None:
    server, client = pair
    client.sendall(sent)
    started = monotonic()
    with pytest.raises(PrefaceFailed) as failed:
        _read(engine, server, started + 0.2)
    elapsed = monotonic() - started
    assert failed.value.limit == "handshake_timeout"
    assert 0.15 <= elapsed < WAIT  # at the deadline (uvloop's timers are to the ms)


# -- TLS ---------------------------------------------------------------------------------------

requires_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


@pytest.fixture
def server_context(pki: dict[str, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki["server_pem"], pki["server_key"])
    return context


@contextlib.contextmanager
def _client(target: Callable[[], None]) -> Iterator[list[BaseException]]:
    """Run the client side on a thread; yields the list of what it raised."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            target()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield errors
    finally:
        thread.join(WAIT)
        assert not thread.is_alive(), "the client did not finish"


@requires_openssl
def test_a_tls_handshake_with_a_real_client(
    pair: tuple[socket.socket, socket.socket],
    pki: dict[str, Path],
    server_context: ssl.SSLContext,
) -> None:
    server, client = pair
    client_context = ssl.create_default_context(cafile=str(pki["ca_pem"]))

    def hello() -> None:
        with client_context.wrap_socket(client, server_hostname="127.0.0.1") as tls:
            tls.sendall(b"ping")
            assert tls.recv(4) == b"pong"

    tls = start_tls(server, server_context)
    try:
        assert server.fileno() == -1  # the wrapped socket took the descriptor
        with _client(hello) as errors:
            handshake(tls, monotonic() + WAIT)
            tls.settimeout(WAIT)
            assert tls.recv(4) == b"ping"
            tls.sendall(b"pong")
        assert errors == []
        assert tls.version() is not None
    finally:
        tls.close()


@requires_openssl
def test_a_client_that_sends_garbage_fails_as_tls_handshake(
    pair: tuple[socket.socket, socket.socket], server_context: ssl.SSLContext
) -> None:
    server, client = pair
    client.sendall(APP_DATA)  # plain HTTP to a TLS port
    tls = start_tls(server, server_context)
    try:
        started = monotonic()
        with pytest.raises(PrefaceFailed) as failed:
            handshake(tls, started + WAIT)
        assert failed.value.limit == "tls_handshake"
        assert monotonic() - started < WAIT / 2  # failed on the bytes, not at the deadline
        assert tls.fileno() != -1  # left open: closing it is the caller's
    finally:
        tls.close()


@requires_openssl
def test_a_client_that_closes_during_the_handshake_fails_as_tls_handshake(
    pair: tuple[socket.socket, socket.socket], server_context: ssl.SSLContext
) -> None:
    server, client = pair
    client.shutdown(socket.SHUT_WR)
    tls = start_tls(server, server_context)
    try:
        with pytest.raises(PrefaceFailed) as failed:
            handshake(tls, monotonic() + WAIT)
        assert failed.value.limit == "tls_handshake"
    finally:
        tls.close()


@requires_openssl
def test_a_silent_tls_client_fails_at_the_deadline(
    pair: tuple[socket.socket, socket.socket], server_context: ssl.SSLContext
) -> None:
    server, _ = pair
    tls = start_tls(server, server_context)
    try:
        started = monotonic()
        with pytest.raises(PrefaceFailed) as failed:
            handshake(tls, started + 0.2)
        elapsed = monotonic() - started
        assert failed.value.limit == "handshake_timeout"
        assert 0.15 <= elapsed < WAIT
        assert tls.fileno() != -1
    finally:
        tls.close()


@requires_openssl
def test_a_tls_deadline_already_past_fails_at_once(
    pair: tuple[socket.socket, socket.socket], server_context: ssl.SSLContext
) -> None:
    """The PROXY header used the whole handshake_timeout: no handshake is tried (the
    client's hello is there, and stays unread)."""
    server, client = pair
    client_context = ssl.create_default_context()
    client_tls = client_context.wrap_socket(
        socket.socket(fileno=client.detach()), server_hostname="x", do_handshake_on_connect=False
    )
    client_tls.setblocking(False)
    with contextlib.suppress(ssl.SSLWantReadError):
        client_tls.do_handshake()  # sends its ClientHello, then would wait
    tls = start_tls(server, server_context)
    try:
        hello = _unread(tls)
        assert hello > 0
        with pytest.raises(PrefaceFailed) as failed:
            handshake(tls, monotonic() - 0.001)
        assert failed.value.limit == "handshake_timeout"
        assert _unread(tls) == hello
    finally:
        tls.close()
        client_tls.close()
