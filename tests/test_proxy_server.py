"""The PROXY protocol on a real server: the real client address, trust, bad headers."""

from __future__ import annotations

import socket
from typing import Any

import pytest

import servekit
from servekit.proxy import build_v1, build_v2
from tests.conftest import LogWatcher, connect, recv_until, serving

REAL = ("203.0.113.7", 4711)
FRONT = ("198.51.100.1", 443)


class Seen(servekit.StreamRequestHandler):
    def handle(self) -> None:
        line = self.rfile.readline()
        self.wfile.write(f"{self.client_address[0]}:{self.client_address[1]} ".encode() + line)


class Recording(servekit.ThreadPoolTCPServer):
    """verify_request records the address it was shown."""

    def verify_request(self, request: Any, client_address: Any) -> bool:
        self.verified = client_address
        return True


def _server(trusted: list[str], **options: Any) -> Any:
    return servekit.make_server(
        "127.0.0.1:0", Seen, proxy_protocol=True, trusted_proxies=trusted, **options
    )


def _send(server: Any, data: bytes) -> bytes:
    with connect(server.server_address) as client:
        client.sendall(data)
        return recv_until(client)


@pytest.mark.parametrize("header", [build_v1(REAL, FRONT), build_v2(REAL, FRONT)], ids=["v1", "v2"])
def test_real_client_address_reaches_verify_request_and_handler(header: bytes) -> None:
    server = Recording(("127.0.0.1", 0), Seen)
    server.proxy_protocol = True
    server.trusted_proxies = servekit.proxy.parse_networks(["127.0.0.1"])
    with serving(server):
        # Header and first request in one packet: nothing after the header is lost.
        assert _send(server, header + b"hello\n") == b"203.0.113.7:4711 hello\n"
    assert server.verified == REAL


def test_header_arriving_in_pieces() -> None:
    header = build_v2(REAL, FRONT, tlvs=[(0x01, b"h2"), (0x02, b"example.org")])
    with serving(_server(["127.0.0.0/8"])) as server, connect(server.server_address) as client:
        for i in range(0, len(header), 7):
            client.sendall(header[i : i + 7])
        client.sendall(b"pieces\n")
        assert recv_until(client) == b"203.0.113.7:4711 pieces\n"


def test_local_command_keeps_the_connection_address() -> None:
    with serving(_server(["127.0.0.1"])) as server:
        reply = _send(server, build_v2(None, None, command="LOCAL") + b"health\n")
    assert reply.startswith(b"127.0.0.1:")
    assert reply.endswith(b" health\n")


def test_untrusted_peer_is_refused(servekit_log: LogWatcher) -> None:
    with serving(_server(["10.0.0.0/8"])) as server:
        assert _send(server, build_v1(REAL, FRONT) + b"sneaky\n") == b""
        assert servekit_log.wait_for("not a trusted proxy")
        assert server.stats.limits == {"proxy_protocol": 1}


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"hello without a header\n", "not a PROXY protocol header"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\n", "bad PROXY header"),
        (b"PROXY TCP4 " + b"1" * 120, "bad PROXY header"),
    ],
    ids=["missing", "bad-port", "too-long"],
)
def test_missing_or_malformed_header_closes_the_connection(
    data: bytes, why: str, servekit_log: LogWatcher
) -> None:
    with serving(_server(["127.0.0.1"])) as server:
        try:
            assert _send(server, data) == b""
        except ConnectionResetError:
            pass  # closed with our bytes unread: also a refusal
        assert servekit_log.wait_for(why)
        assert _send(server, build_v1(REAL, FRONT) + b"next\n") == b"203.0.113.7:4711 next\n"


def test_silent_peer_times_out(servekit_log: LogWatcher) -> None:
    with serving(_server(["127.0.0.1"], handshake_timeout=0.3)) as server:
        with connect(server.server_address) as silent:
            assert silent.recv(10) == b""
        assert servekit_log.wait_for("PROXY header not complete within handshake_timeout")


def test_proxy_protocol_needs_trusted_proxies() -> None:
    with pytest.raises(ValueError, match="needs trusted_proxies"):
        servekit.make_server("127.0.0.1:0", Seen, proxy_protocol=True)
    with pytest.raises(ValueError, match="bad trusted network"):
        servekit.make_server("127.0.0.1:0", Seen, proxy_protocol=True, trusted_proxies=["x"])


def test_unix_socket_peers_trusted_by_name(sock_dir: Any) -> None:
    path = str(sock_dir / "p.sock")
    server = servekit.make_server(f"unix:{path}", Seen, proxy_protocol=True,
                                  trusted_proxies=["unix"])  # fmt: skip
    with serving(server), socket.socket(socket.AF_UNIX) as client:
        client.settimeout(10)
        client.connect(path)
        client.sendall(build_v1(REAL, FRONT) + b"via unix\n")
        assert recv_until(client) == b"203.0.113.7:4711 via unix\n"


def test_finish_request_override_keeps_the_preface() -> None:
    """As http.server's DualStackServer does: overriding finish_request is common."""

    class Overriding(servekit.ThreadPoolTCPServer):
        def finish_request(self, request: Any, client_address: Any) -> None:
            self.RequestHandlerClass(request, client_address, self)

    server = Overriding(("127.0.0.1", 0), Seen)
    server.proxy_protocol = True
    server.trusted_proxies = servekit.proxy.parse_networks(["127.0.0.1"])
    with serving(server):
        assert _send(server, build_v1(REAL, FRONT) + b"hi\n") == b"203.0.113.7:4711 hi\n"
