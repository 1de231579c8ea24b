"""Every server class with every mixin, stream and datagram, over IPv4, IPv6 and Unix."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest

import servekit
from tests.conftest import WAIT, connect, recv_until, requires_ipv6, serving

STREAM_CLASSES = ["TCPServer", "ThreadingTCPServer", "ForkingTCPServer"]
DGRAM_CLASSES = ["UDPServer", "ThreadingUDPServer", "ForkingUDPServer"]
UNIX_STREAM_CLASSES = [
    "UnixStreamServer", "ThreadingUnixStreamServer", "ForkingUnixStreamServer",
]  # fmt: skip
UNIX_DGRAM_CLASSES = [
    "UnixDatagramServer", "ThreadingUnixDatagramServer", "ForkingUnixDatagramServer",
]  # fmt: skip


class LineEcho(servekit.StreamRequestHandler):
    """Echo two lines. A fixed count, not "until EOF": a forked child inherits
    the test's client sockets, so it would never see the client close."""

    def handle(self) -> None:
        for _ in range(2):
            self.wfile.write(b"%d:" % os.getpid() + self.rfile.readline())


class DatagramEcho(servekit.DatagramRequestHandler):
    def handle(self) -> None:
        self.wfile.write(b"%d:" % os.getpid() + self.rfile.read())


class RawEcho(servekit.BaseRequestHandler):
    """The BaseRequestHandler way: talk to self.request directly."""

    def handle(self) -> None:
        if isinstance(self.request, tuple):
            data, sock = self.request
            sock.sendto(b"raw:" + data, self.client_address)
        else:
            self.request.sendall(b"raw:" + self.request.recv(4096))


def _family_class(name: str, family: int) -> type[Any]:
    base = getattr(servekit, name)
    if family == base.address_family:
        return base  # type: ignore[no-any-return]
    return type(name + "6", (base,), {"address_family": family})


def _check_forks(server: Any, replies: list[bytes]) -> None:
    pids = {int(reply.split(b":", 1)[0]) for reply in replies}
    if isinstance(server, servekit.ForkingMixIn):
        assert os.getpid() not in pids, "a forking server answered from the parent"
    else:
        assert pids == {os.getpid()}


def _stream_round_trips(server: Any, family: int) -> None:
    replies = []
    for i in range(3):
        with connect(server.server_address, family) as client:
            for j in range(2):
                client.sendall(b"hello %d %d\n" % (i, j))
                reply = recv_until(client)
                assert reply.endswith(b":hello %d %d\n" % (i, j))
                replies.append(reply)
    _check_forks(server, replies)


def _dgram_round_trips(server: Any, family: int, client_address: Any = None) -> None:
    replies = []
    with socket.socket(family, socket.SOCK_DGRAM) as client:
        client.settimeout(WAIT)
        if client_address is not None:
            client.bind(client_address)
        for i in range(3):
            client.sendto(b"ping %d" % i, server.server_address)
            reply, _ = client.recvfrom(8192)
            assert reply.endswith(b":ping %d" % i)
            replies.append(reply)
    _check_forks(server, replies)


@pytest.mark.parametrize("name", STREAM_CLASSES)
@pytest.mark.parametrize(
    ("family", "host"),
    [(socket.AF_INET, "127.0.0.1"), pytest.param(socket.AF_INET6, "::1", marks=requires_ipv6)],
    ids=["ipv4", "ipv6"],
)
def test_stream_ip(name: str, family: int, host: str) -> None:
    cls = _family_class(name, family)
    with serving(cls((host, 0), LineEcho)) as server:
        assert server.server_address == server.socket.getsockname()
        _stream_round_trips(server, family)
    assert server.socket.fileno() == -1


@pytest.mark.parametrize("name", DGRAM_CLASSES)
@pytest.mark.parametrize(
    ("family", "host"),
    [(socket.AF_INET, "127.0.0.1"), pytest.param(socket.AF_INET6, "::1", marks=requires_ipv6)],
    ids=["ipv4", "ipv6"],
)
def test_datagram_ip(name: str, family: int, host: str) -> None:
    cls = _family_class(name, family)
    with serving(cls((host, 0), DatagramEcho)) as server:
        _dgram_round_trips(server, family)


@pytest.mark.parametrize("name", UNIX_STREAM_CLASSES)
def test_stream_unix(name: str, sock_dir: Path) -> None:
    path = str(sock_dir / "s.sock")
    with serving(getattr(servekit, name)(path, LineEcho)) as server:
        assert server.server_address == path
        _stream_round_trips(server, socket.AF_UNIX)


@pytest.mark.parametrize("name", UNIX_DGRAM_CLASSES)
def test_datagram_unix(name: str, sock_dir: Path) -> None:
    path = str(sock_dir / "d.sock")
    with serving(getattr(servekit, name)(path, DatagramEcho)) as server:
        _dgram_round_trips(server, socket.AF_UNIX, str(sock_dir / "client.sock"))


@pytest.mark.parametrize("name", STREAM_CLASSES + DGRAM_CLASSES)
def test_base_request_handler(name: str) -> None:
    cls = getattr(servekit, name)
    with serving(cls(("127.0.0.1", 0), RawEcho)) as server:
        if cls.socket_type == socket.SOCK_STREAM:
            with connect(server.server_address) as client:
                client.sendall(b"abc")
                assert client.recv(100) == b"raw:abc"
        else:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                client.settimeout(WAIT)
                client.sendto(b"abc", server.server_address)
                assert client.recv(100) == b"raw:abc"


@pytest.mark.parametrize("name", ["TCPServer", "ThreadingTCPServer", "ForkingTCPServer"])
def test_mixin_on_user_subclass(name: str) -> None:
    """Mixins compose with a user's own server subclass, mixin first, as in the stdlib docs."""
    mixin = {"TCPServer": None, "ThreadingTCPServer": servekit.ThreadingMixIn}.get(
        name, getattr(servekit, "ForkingMixIn", None)
    )

    class Mine(servekit.TCPServer):
        allow_reuse_address = True
        seen = 0

        def verify_request(self, request: Any, client_address: Any) -> bool:
            self.seen += 1
            return True

    cls: type[Any] = Mine if mixin is None else type("M", (mixin, Mine), {})
    with serving(cls(("127.0.0.1", 0), LineEcho)) as server:
        _stream_round_trips(server, socket.AF_INET)
        assert server.seen == 3
