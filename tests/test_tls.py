"""TLS: the handshake runs in the worker, bounded; a bad client fails alone."""

from __future__ import annotations

import shutil
import ssl
from pathlib import Path
from typing import Any

import pytest

import servekit
from tests.conftest import LogWatcher, connect, recv_until, serving

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


class Echo(servekit.StreamRequestHandler):
    def handle(self) -> None:
        peer = self.request.getpeercert()
        who = (
            b"anonymous" if not peer else dict(x[0] for x in peer["subject"])["commonName"].encode()
        )
        # One line, not "until EOF": a forked child holds a copy of the
        # test's client socket, so it would never see the client close.
        self.wfile.write(who + b" " + self.rfile.readline())


def _client_context(pki: dict[str, Path], cert: str | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki["ca_pem"]))
    if cert is not None:
        context.load_cert_chain(pki[f"{cert}_pem"], pki[f"{cert}_key"])
    return context


def _tls_round_trip(address: Any, context: ssl.SSLContext, line: bytes = b"hi\n") -> bytes:
    with connect(address) as raw, context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        tls.sendall(line)
        return recv_until(tls)


def test_silent_client_does_not_block_others(
    pki: dict[str, Path], servekit_log: LogWatcher
) -> None:
    server = servekit.make_server(
        "127.0.0.1:0", Echo, certfile=pki["server_pem"], keyfile=pki["server_key"],
        handshake_timeout=0.5,
    )  # fmt: skip
    with serving(server):
        silent = connect(server.server_address)  # connects, never says hello
        for i in range(5):
            line = b"%d\n" % i
            assert _tls_round_trip(server.server_address, _client_context(pki), line) == (
                b"anonymous " + line
            )
        assert servekit_log.wait_for("TLS handshake not complete within handshake_timeout")
        assert silent.recv(10) == b""  # the server gave up on it
        silent.close()
    assert server.stats.limits == {"handshake_timeout": 1}


def test_client_certificates(pki: dict[str, Path], servekit_log: LogWatcher) -> None:
    server = servekit.make_server(
        "127.0.0.1:0", Echo, certfile=pki["server_pem"], keyfile=pki["server_key"],
        cafile=pki["ca_pem"],
    )  # fmt: skip
    with serving(server):
        # No certificate: that connection fails, alone.
        with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
            _tls_round_trip(server.server_address, _client_context(pki))
        assert servekit_log.wait_for("TLS handshake failed")
        # A certificate from the right authority: served, and the handler sees who it is.
        reply = _tls_round_trip(server.server_address, _client_context(pki, "client"))
        assert reply == b"client hi\n"
    assert server.stats.limits == {"tls_handshake": 1}


def test_verify_request_sees_the_peer_certificate(pki: dict[str, Path]) -> None:
    seen = []

    class Checking(servekit.ThreadPoolTCPServer):
        def verify_request(self, request: Any, client_address: Any) -> bool:
            seen.append(isinstance(request, ssl.SSLSocket) and request.getpeercert() is not None)
            return True

    server = Checking(("127.0.0.1", 0), Echo)
    server.ssl_context = servekit.tls.server_context(
        pki["server_pem"], pki["server_key"], pki["ca_pem"]
    )
    with serving(server):
        reply = _tls_round_trip(server.server_address, _client_context(pki, "client"))
    assert reply == b"client hi\n"
    assert seen == [True]


def test_user_wrapped_listening_socket_handshakes_in_the_worker(pki: dict[str, Path]) -> None:
    """As http.server.HTTPSServer (3.14) does: wrap server.socket after binding."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki["server_pem"], pki["server_key"])
    server = servekit.ThreadingTCPServer(("127.0.0.1", 0), Echo)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.handshake_timeout = 0.5
    with serving(server):
        silent = connect(server.server_address)
        assert _tls_round_trip(server.server_address, _client_context(pki)) == b"anonymous hi\n"
        assert silent.recv(10) == b""
        silent.close()


def test_tls_for_datagrams_is_refused(pki: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="need a stream socket"):
        servekit.make_server("udp://127.0.0.1:0", Echo, certfile=pki["server_pem"],
                             keyfile=pki["server_key"])  # fmt: skip


def test_keyfile_without_certfile_is_refused() -> None:
    with pytest.raises(ValueError, match="need certfile"):
        servekit.make_server("127.0.0.1:0", Echo, keyfile="x.key")


def test_plain_client_to_tls_server_fails_alone(pki: dict[str, Path]) -> None:
    server = servekit.make_server(
        "127.0.0.1:0", Echo, certfile=pki["server_pem"], keyfile=pki["server_key"]
    )
    with serving(server):
        with connect(server.server_address) as plain:
            plain.sendall(b"GET / HTTP/1.0\r\n\r\n")
            try:
                plain.recv(100)
            except ConnectionResetError:
                pass
        assert _tls_round_trip(server.server_address, _client_context(pki)) == b"anonymous hi\n"
    assert server.stats.limits == {"tls_handshake": 1}


def test_connections_in_their_handshake_count_toward_max_connections(
    pki: dict[str, Path], servekit_log: LogWatcher
) -> None:
    server = servekit.make_server(
        "127.0.0.1:0", Echo, certfile=pki["server_pem"], keyfile=pki["server_key"],
        max_connections=2, handshake_timeout=5,
    )  # fmt: skip
    with serving(server):
        silent = [connect(server.server_address) for _ in range(3)]
        assert servekit_log.wait_for("max_connections=2 reached")
        assert server.stats.connections_total == 2
        assert server.stats.connections_open == 2
        for sock in silent:
            sock.close()
