"""Every server class with every mixin, stream and datagram, over IPv4, IPv6 and Unix.

Run with servekit.testing.serving(): each server in a thread, its clients from
``Serving.connect()``, stopped (bounded) at the end of each block."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest

import servekit
from servekit.testing import Serving, serving
from tests.conftest import recv_until, requires_ipv6

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


def _stream_round_trips(running: Serving[Any]) -> None:
    replies = []
    for i in range(3):
        with running.connect() as client:
            for j in range(2):
                client.sendall(b"hello %d %d\n" % (i, j))
                reply = recv_until(client)
                assert reply.endswith(b":hello %d %d\n" % (i, j))
                replies.append(reply)
    _check_forks(running.server, replies)


def _dgram_round_trips(running: Serving[Any]) -> None:
    replies = []
    with running.connect() as client:  # bound to an address of its own on a Unix socket
        for i in range(3):
            client.send(b"ping %d" % i)
            reply = client.recv(8192)
            assert reply.endswith(b":ping %d" % i)
            replies.append(reply)
    _check_forks(running.server, replies)


@pytest.mark.parametrize("name", STREAM_CLASSES)
@pytest.mark.parametrize(
    ("family", "host"),
    [(socket.AF_INET, "127.0.0.1"), pytest.param(socket.AF_INET6, "::1", marks=requires_ipv6)],
    ids=["ipv4", "ipv6"],
)
def test_stream_ip(name: str, family: int, host: str) -> None:
    cls = _family_class(name, family)
    with serving(cls((host, 0), LineEcho)) as running:
        server = running.server
        assert running.server_address == server.server_address == server.socket.getsockname()
        assert running.family == family
        _stream_round_trips(running)
    assert server.socket.fileno() == -1


@pytest.mark.parametrize("name", DGRAM_CLASSES)
@pytest.mark.parametrize(
    ("family", "host"),
    [(socket.AF_INET, "127.0.0.1"), pytest.param(socket.AF_INET6, "::1", marks=requires_ipv6)],
    ids=["ipv4", "ipv6"],
)
def test_datagram_ip(name: str, family: int, host: str) -> None:
    cls = _family_class(name, family)
    with serving(cls((host, 0), DatagramEcho)) as running:
        assert running.address.startswith("udp://")
        _dgram_round_trips(running)


@pytest.mark.parametrize("name", UNIX_STREAM_CLASSES)
def test_stream_unix(name: str, sock_dir: Path) -> None:
    path = str(sock_dir / "s.sock")
    with serving(getattr(servekit, name)(path, LineEcho)) as running:
        assert running.server_address == path
        assert running.address == "unix:" + path
        _stream_round_trips(running)


@pytest.mark.parametrize("name", UNIX_DGRAM_CLASSES)
def test_datagram_unix(name: str, sock_dir: Path) -> None:
    path = str(sock_dir / "d.sock")
    with serving(getattr(servekit, name)(path, DatagramEcho)) as running:
        assert running.address == "unix-dgram:" + path
        _dgram_round_trips(running)


@pytest.mark.parametrize("name", STREAM_CLASSES + DGRAM_CLASSES)
def test_base_request_handler(name: str) -> None:
    cls = getattr(servekit, name)
    with serving(cls(("127.0.0.1", 0), RawEcho)) as running, running.connect() as client:
        assert running.socket_type == cls.socket_type
        client.send(b"abc")
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
    with serving(cls(("127.0.0.1", 0), LineEcho)) as running:
        _stream_round_trips(running)
        assert running.server.seen == 3
