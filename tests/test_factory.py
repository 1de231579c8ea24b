"""make_server: every listen-address form, production defaults, and clear errors."""

from __future__ import annotations

import logging
import re
import socket
from pathlib import Path
from typing import Any

import pytest

import servekit
from tests.conftest import WAIT, connect, recv_until, requires_ipv6, serving


class Echo(servekit.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.readline())


class DatagramEcho(servekit.DatagramRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.read())


def _stream_ok(address: Any, family: int = socket.AF_INET) -> None:
    with connect(address, family) as client:
        client.sendall(b"hi\n")
        assert recv_until(client) == b"hi\n"


def _dgram_ok(address: Any, family: int = socket.AF_INET, bind: Any = None) -> None:
    with socket.socket(family, socket.SOCK_DGRAM) as client:
        client.settimeout(WAIT)
        if bind is not None:
            client.bind(bind)
        client.sendto(b"ping", address)
        assert client.recv(100) == b"ping"


@pytest.mark.parametrize("concurrency", ["pool", "threads", "fork", "sync"])
def test_tcp_with_production_defaults(concurrency: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="servekit")
    with serving(servekit.make_server("127.0.0.1:0", Echo, concurrency=concurrency)) as server:
        sock = server.socket
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
        assert server.request_queue_size >= socket.SOMAXCONN
        assert server.shutdown_timeout == servekit.factory.DEFAULT_SHUTDOWN_TIMEOUT
        assert server.max_connections == servekit.factory.DEFAULT_MAX_CONNECTIONS
        assert server.idle_timeout == servekit.factory.DEFAULT_IDLE_TIMEOUT
        assert server.read_timeout == servekit.factory.DEFAULT_READ_TIMEOUT
        assert server.max_line_length == servekit.factory.DEFAULT_MAX_LINE_LENGTH
        _stream_ok(server.server_address)
    port = server.server_address[1]
    assert any(f"listening on tcp://127.0.0.1:{port}" in r.getMessage() for r in caplog.records)


def test_model_picks_the_stdlib_class() -> None:
    for concurrency, cls in [
        ("pool", servekit.ThreadPoolTCPServer),
        ("threads", servekit.ThreadingTCPServer),
        ("fork", servekit.ForkingTCPServer),
        ("sync", servekit.TCPServer),
    ]:
        with servekit.make_server("127.0.0.1:0", Echo, concurrency=concurrency) as server:  # type: ignore[arg-type]
            assert type(server) is cls


def test_backlog_option() -> None:
    with servekit.make_server("127.0.0.1:0", Echo, backlog=10000) as server:
        assert server.request_queue_size == 10000


@requires_ipv6
def test_ipv6_loopback() -> None:
    with serving(servekit.make_server("[::1]:0", Echo)) as server:
        assert server.address_family == socket.AF_INET6
        _stream_ok(server.server_address, socket.AF_INET6)


@requires_ipv6
def test_ipv6_any_is_dual_stack() -> None:
    with serving(servekit.make_server("[::]:0", Echo)) as server:
        assert server.socket.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
        port = server.server_address[1]
        _stream_ok(("::1", port), socket.AF_INET6)
        _stream_ok(("127.0.0.1", port))


@requires_ipv6
def test_udp_ipv6() -> None:
    with serving(servekit.make_server("udp://[::1]:0", DatagramEcho)) as server:
        _dgram_ok(server.server_address, socket.AF_INET6)


def test_host_name_is_resolved() -> None:
    with serving(servekit.make_server("localhost:0", Echo)) as server:
        _stream_ok(server.server_address, server.address_family)


def test_unix_stream_and_mode(sock_dir: Path) -> None:
    path = sock_dir / "m.sock"
    with serving(servekit.make_server(f"unix:{path}", Echo, socket_file_mode=0o640)) as server:
        assert isinstance(server, servekit.ThreadPoolUnixStreamServer)
        assert (path.stat().st_mode & 0o777) == 0o640
        _stream_ok(str(path), socket.AF_UNIX)
    assert not path.exists()


def test_unix_datagram(sock_dir: Path) -> None:
    path = sock_dir / "d.sock"
    with serving(servekit.make_server(f"unix-dgram:{path}", DatagramEcho)) as server:
        assert isinstance(server, servekit.UnixDatagramServer)
        _dgram_ok(str(path), socket.AF_UNIX, bind=str(sock_dir / "c.sock"))


def test_unix_abstract() -> None:
    with serving(servekit.make_server("unix:@servekit-factory-test", Echo)) as server:
        _stream_ok(server.server_address, socket.AF_UNIX)


def test_max_packet_size_option() -> None:
    with servekit.make_server("udp://127.0.0.1:0", DatagramEcho, max_packet_size=65535) as s:
        assert s.max_packet_size == 65535  # type: ignore[attr-defined]


@pytest.mark.parametrize("listening", [True, False])
def test_inherited_stream_socket(listening: bool) -> None:
    inherited = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    inherited.bind(("127.0.0.1", 0))
    if listening:
        inherited.listen()
    fd = inherited.detach()
    with serving(servekit.make_server(f"fd://{fd}", Echo)) as server:
        assert server.socket.fileno() == fd
        assert isinstance(server, servekit.ThreadPoolTCPServer)
        _stream_ok(server.server_address)


def test_inherited_datagram_socket() -> None:
    inherited = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    inherited.bind(("127.0.0.1", 0))
    fd = inherited.detach()
    with serving(servekit.make_server(f"fd://{fd}", DatagramEcho)) as server:
        assert isinstance(server, servekit.ThreadPoolUDPServer)
        _dgram_ok(server.server_address)


def test_inherited_descriptor_that_is_not_a_socket(tmp_path: Path) -> None:
    with open(tmp_path / "f", "w") as f, pytest.raises(ValueError, match="not an open socket"):
        servekit.make_server(f"fd://{f.fileno()}", Echo)


def test_bad_address_and_bad_model_are_value_errors() -> None:
    with pytest.raises(ValueError, match="accepted forms"):
        servekit.make_server("nonsense", Echo)
    with pytest.raises(ValueError, match="choose one of pool, threads, fork, sync"):
        servekit.make_server("127.0.0.1:0", Echo, concurrency="greenlets")  # type: ignore[arg-type]


def test_bind_failure_is_an_os_error_and_leaks_nothing() -> None:
    with servekit.make_server("127.0.0.1:0", Echo) as taken:
        port = taken.server_address[1]
        with pytest.raises(OSError, match="in use"):
            servekit.make_server(f"127.0.0.1:{port}", Echo)


class AsyncEcho(servekit.aio.AsyncStreamRequestHandler):
    async def handle(self) -> None:
        self.write(await self.readline())


@pytest.mark.parametrize(
    ("address", "handler", "kwargs", "error", "message"),
    [
        ("tcp", Echo, {"idle_timeout": "5"}, TypeError, "idle_timeout must be a number"),
        ("tcp", Echo, {"idle_timeout": -1}, ValueError, "idle_timeout must be a number"),
        ("tcp", Echo, {"read_timeout": float("inf")}, ValueError, "read_timeout"),
        ("tcp", Echo, {"max_workers": "4"}, TypeError, "max_workers must be a whole number"),
        ("tcp", Echo, {"max_workers": 0}, ValueError, "max_workers must be a whole number >= 1"),
        ("tcp", Echo, {"max_connections": True}, TypeError, "max_connections"),
        ("tcp", Echo, {"shutdown_timeout": None, "max_pending": None}, TypeError, "max_pending"),
        ("tcp", Echo, {"trusted_proxies": "127.0.0.1"}, TypeError, "write ['127.0.0.1']"),
        ("tcp", Echo, {"reuse_port": 1}, TypeError, "reuse_port must be True or False"),
        ("tcp", Echo, {"idle_timeout": 0}, ValueError, "idle_timeout must be a number of seconds"),
        ("tcp", Echo, {"max_pending": -1}, ValueError, "max_pending must be a whole number >= 0"),
        ("tcp", Echo, {"ssl_context": "x"}, TypeError, "ssl_context must be an ssl.SSLContext"),
        ("tcp", Echo, {"certfile": 5}, TypeError, "certfile must be a path"),
        ("tcp", Echo, {"trusted_proxies": 5}, TypeError, "trusted_proxies must be a list"),
        ("tcp", Echo, {"trusted_proxies": [5]}, TypeError, "trusted_proxies holds 5"),
        ("tcp", "examples.echo:LineEcho", {}, TypeError, "handler must be a request handler"),
        ("tcp", AsyncEcho, {}, TypeError, "AsyncEcho is an async handler"),
        ("tcp", AsyncEcho, {"concurrency": "threads"}, TypeError, "concurrency='async'"),
        ("tcp", Echo, {"concurrency": "async"}, TypeError, "Echo is a sync handler"),
        ("udp", Echo, {}, TypeError, "Echo is a stream handler, but udp://"),
        ("tcp", DatagramEcho, {}, TypeError, "DatagramEcho is a datagram handler, but"),
    ],
)  # fmt: skip
def test_bad_configuration_is_refused_before_binding(
    address: str, handler: Any, kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    # A fixed port, free now: if make_server bound it before refusing, the
    # probe below could not bind it (no SO_REUSEADDR on the probe).
    with socket.socket() as finder:
        finder.bind(("127.0.0.1", 0))
        port = finder.getsockname()[1]
    listen = f"127.0.0.1:{port}" if address == "tcp" else f"udp://127.0.0.1:{port}"
    with pytest.raises(error, match=re.escape(message)):
        servekit.make_server(listen, handler, **kwargs)
    kind = socket.SOCK_STREAM if address == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", port))


def test_a_handler_factory_that_is_not_a_class_is_accepted() -> None:
    with servekit.make_server("127.0.0.1:0", lambda *args: Echo(*args)) as server, serving(server):
        _stream_ok(server.server_address)
