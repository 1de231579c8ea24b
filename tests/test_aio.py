"""The asyncio engine: async handlers, the usual hooks, limits, stop, backpressure."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
from typing import Any

import pytest

import servekit
from servekit.aio import AsyncDatagramRequestHandler, AsyncStreamRequestHandler, AsyncTCPServer
from tests.conftest import WAIT, LogWatcher, connect, recv_until, serving, trickling

LOCAL = ("127.0.0.1", 0)


@pytest.fixture(autouse=True, params=["asyncio", "uvloop"])
def event_loop_choice(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs on asyncio's loop and on uvloop's."""
    choice: str = request.param
    if choice == "uvloop":
        pytest.importorskip("uvloop", reason="uvloop is in the dev extra; not installed here")
    monkeypatch.setattr(servekit.aio.AsyncServerMixIn, "loop", choice)
    return choice


class Echo(AsyncStreamRequestHandler):
    async def handle(self) -> None:
        async for line in self:
            self.write(line)
            await self.drain()


class Methods(AsyncStreamRequestHandler):
    """Every read method once: a line, 3 exact bytes, up to ';', then what is left."""

    async def handle(self) -> None:
        line = await self.readline()
        exact = await self.readexactly(3)
        until = await self.readuntil(b";")
        self.write(b"|".join([line.strip(), exact, until]) + b"\n")
        await self.drain()
        rest = await self.read()
        self.write(b"rest=" + rest)


def _async(**limits: Any) -> Any:
    defaults: dict[str, Any] = {
        "idle_timeout": None, "read_timeout": None, "max_line_length": None,
    }  # fmt: skip
    return servekit.make_server("127.0.0.1:0", Echo, concurrency="async", **(defaults | limits))


def test_echo_and_every_read_method() -> None:
    with serving(AsyncTCPServer(LOCAL, Methods)) as server, connect(server.server_address) as c:
        c.sendall(b"first line\nabcuntil;the rest")
        assert recv_until(c) == b"first line|abc|until;\n"
        c.shutdown(socket.SHUT_WR)
        assert recv_until(c, b"the rest") == b"rest=the rest"


def test_many_connections_at_once_on_one_thread() -> None:
    seen_threads = set()

    class Where(Echo):
        async def handle(self) -> None:
            seen_threads.add(threading.get_ident())
            await super().handle()

    with serving(AsyncTCPServer(LOCAL, Where)) as server:
        clients = [connect(server.server_address) for _ in range(50)]
        for i, client in enumerate(clients):
            client.sendall(b"%d\n" % i)
        assert [recv_until(c) for c in clients] == [b"%d\n" % i for i in range(50)]
        for client in clients:
            client.close()
    assert len(seen_threads) == 1


@pytest.mark.parametrize("asynchronous", [False, True])
def test_verify_request_sync_or_async(asynchronous: bool) -> None:
    class Picky(AsyncTCPServer):
        if asynchronous:

            async def verify_request(self, request: Any, client_address: Any) -> bool:  # type: ignore[override]
                await asyncio.sleep(0)
                return self.stats.connections_total % 2 == 1

        else:

            def verify_request(self, request: Any, client_address: Any) -> bool:
                return self.stats.connections_total % 2 == 1

    with serving(Picky(LOCAL, Echo)) as server:
        answers = []
        for i in range(4):
            with connect(server.server_address) as client:
                client.sendall(b"%d\n" % i)
                try:
                    answers.append(recv_until(client))
                except ConnectionResetError:  # refused with our line unread
                    answers.append(b"")
    assert answers == [b"0\n", b"", b"2\n", b""]


def test_handle_error_logs(caplog: pytest.LogCaptureFixture) -> None:
    class Fails(AsyncStreamRequestHandler):
        async def handle(self) -> None:
            await self.readline()
            raise ValueError("async boom")

    caplog.set_level(logging.ERROR, logger="servekit")
    with serving(AsyncTCPServer(LOCAL, Fails)) as server:
        with connect(server.server_address) as client:
            client.sendall(b"x\n")
            assert client.recv(10) == b""
        assert server.stats.errors == 1
    record = next(r for r in caplog.records if r.levelno == logging.ERROR)
    assert record.exc_info is not None
    assert record.exc_info[0] is ValueError


def test_sync_handler_is_refused_with_advice() -> None:
    with pytest.raises(TypeError, match="concurrency='pool'"):
        AsyncTCPServer(LOCAL, servekit.StreamRequestHandler)


def test_limits(servekit_log: LogWatcher) -> None:
    with serving(_async(idle_timeout=0.2, read_timeout=0.3, max_line_length=16)) as server:
        with connect(server.server_address) as silent:
            assert silent.recv(10) == b""
        assert servekit_log.wait_for("idle for 0.2s")
        with connect(server.server_address) as long_line:
            long_line.sendall(b"x" * 40 + b"\n")
            assert long_line.recv(10) == b""
        assert servekit_log.wait_for("line longer than 16 bytes")
        with connect(server.server_address) as slow, trickling(slow, 0.1):
            slow.sendall(b"a")  # a request begins, then a byte every 0.1 s: never idle, never done
            assert servekit_log.wait_for("request not complete after 0.3s")
        assert server.stats.limits == {
            "idle_timeout": 1, "max_line_length": 1, "read_timeout": 1,
        }  # fmt: skip
        assert server.stats.errors == 0


def test_max_connections_pauses_accepting(servekit_log: LogWatcher) -> None:
    with serving(_async(max_connections=2)) as server:
        first, second = connect(server.server_address), connect(server.server_address)
        for client in (first, second):
            client.sendall(b"a\n")
            assert recv_until(client) == b"a\n"
        third = connect(server.server_address)
        third.sendall(b"c\n")
        assert servekit_log.wait_for("max_connections=2 reached")
        assert server.stats.connections_total == 2
        first.close()
        assert recv_until(third) == b"c\n"
        second.close()
        third.close()


def test_graceful_stop_finishes_connections_then_cuts(servekit_log: LogWatcher) -> None:
    started, release = threading.Event(), threading.Event()

    class Slow(AsyncStreamRequestHandler):
        async def handle(self) -> None:
            line = await self.readline()
            started.set()
            await asyncio.to_thread(release.wait, WAIT)
            self.write(line)

    server = AsyncTCPServer(LOCAL, Slow)
    server.shutdown_timeout = WAIT
    loop = threading.Thread(target=server.serve_forever)
    loop.start()
    with connect(server.server_address) as client:
        client.sendall(b"in flight\n")
        assert started.wait(WAIT)
        stopper = threading.Thread(target=server.shutdown)
        stopper.start()
        release.set()
        assert recv_until(client) == b"in flight\n"
        stopper.join(WAIT)
        assert not stopper.is_alive()
    loop.join(WAIT)
    server.server_close()

    quick = AsyncTCPServer(LOCAL, Echo)
    quick.shutdown_timeout = 0.2
    loop = threading.Thread(target=quick.serve_forever)
    loop.start()
    with connect(quick.server_address) as client:
        client.sendall(b"hi\n")
        assert recv_until(client) == b"hi\n"  # the connection is being served
        quick.shutdown()  # the client stays connected: cut after 0.2 s
        assert client.recv(10) == b""
    loop.join(WAIT)
    quick.server_close()
    assert servekit_log.wait_for("cut 1 connection(s) still open after shutdown_timeout=0.2s")


def test_a_client_that_does_not_read_cannot_grow_server_memory(servekit_log: LogWatcher) -> None:
    sizes: list[int] = []

    class Flood(AsyncStreamRequestHandler):
        async def handle(self) -> None:
            await self.readline()
            chunk = b"x" * 65536
            for _ in range(10_000):  # 640 MB if nothing held it back
                self.write(chunk)
                sizes.append(self.writer.transport.get_write_buffer_size())
                await self.drain()

    with serving(servekit.make_server("127.0.0.1:0", Flood, concurrency="async",
                                      idle_timeout=0.5)) as server:  # fmt: skip
        with connect(server.server_address) as client:
            client.sendall(b"go\n")
            assert servekit_log.wait_for("did not take our data for 0.5s")
        assert max(sizes) <= 1024 * 1024  # the transport's high-water mark, with room
        assert len(sizes) < 10_000


def test_write_without_drain_is_bounded(servekit_log: LogWatcher) -> None:
    class Careless(AsyncStreamRequestHandler):
        max_write_buffer = 1024 * 1024

        async def handle(self) -> None:
            await self.readline()
            for _ in range(10_000):
                self.write(b"x" * 65536)  # no drain
            await self.drain()

    with serving(AsyncTCPServer(LOCAL, Careless)) as server:
        with connect(server.server_address) as client:
            client.sendall(b"go\n")
            assert servekit_log.wait_for("more than max_write_buffer=1048576 bytes")
        assert server.stats.limits == {"max_write_buffer": 1}


def test_inside_a_programs_own_loop() -> None:
    async def main() -> bytes:
        server = AsyncTCPServer(LOCAL, Echo)
        async with server:
            serving_task = asyncio.create_task(server.serve_forever())
            reader, writer = await asyncio.open_connection(*server.server_address)
            writer.write(b"in my loop\n")
            reply = await reader.readline()
            writer.close()
            server.shutdown()
            await asyncio.wait_for(serving_task, WAIT)
        return reply

    assert asyncio.run(main()) == b"in my loop\n"


def test_unix_stream(sock_dir: Any) -> None:
    path = str(sock_dir / "aio.sock")
    server = servekit.make_server(f"unix:{path}", Echo, concurrency="async")
    with serving(server), socket.socket(socket.AF_UNIX) as client:
        client.settimeout(WAIT)
        client.connect(path)
        client.sendall(b"unix\n")
        assert recv_until(client) == b"unix\n"


class DatagramEcho(AsyncDatagramRequestHandler):
    async def handle(self) -> None:
        await asyncio.sleep(0)  # really async
        self.wfile.write(b"echo " + self.rfile.read())


def test_udp(servekit_log: LogWatcher) -> None:
    server = servekit.make_server("udp://127.0.0.1:0", DatagramEcho, concurrency="async")
    server.max_packet_size = 1000
    with serving(server), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(WAIT)
        for i in range(5):
            client.sendto(b"%d" % i, server.server_address)
            assert client.recv(100) == b"echo %d" % i
        client.sendto(b"x" * 1001, server.server_address)  # over max_packet_size: dropped
        client.sendto(b"after", server.server_address)
        assert client.recv(100) == b"echo after"
        assert servekit_log.wait_for("longer than max_packet_size=1000")
    assert server.stats.requests == 6
    assert server.stats.bytes_out == len(b"echo 0") * 5 + len(b"echo after")


def test_unix_datagram(sock_dir: Any) -> None:
    path = str(sock_dir / "d.sock")
    server = servekit.make_server(f"unix-dgram:{path}", DatagramEcho, concurrency="async")
    with serving(server), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
        client.settimeout(WAIT)
        client.bind(str(sock_dir / "c.sock"))
        client.sendto(b"unix", path)
        assert client.recv(100) == b"echo unix"


def test_datagram_errors_and_verify(caplog: pytest.LogCaptureFixture) -> None:
    class Fussy(AsyncDatagramRequestHandler):
        async def handle(self) -> None:
            if self.packet == b"fail":
                raise ValueError("bad datagram")
            self.send(b"ok")

    class Server(servekit.aio.AsyncUDPServer):
        async def verify_request(self, request: Any, client_address: Any) -> bool:  # type: ignore[override]
            return bool(request[0] != b"refused")

    caplog.set_level(logging.ERROR, logger="servekit")
    with (
        serving(Server(LOCAL, Fussy)) as server,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client,
    ):
        client.settimeout(WAIT)
        for packet in (b"refused", b"fail", b"fine"):
            client.sendto(packet, server.server_address)
        assert client.recv(100) == b"ok"  # the only reply
    assert server.stats.errors == 1
    assert any(r.exc_info and r.exc_info[0] is ValueError for r in caplog.records)


# -- TLS and the PROXY protocol on the async engine ----------------------------------


class WhoEcho(AsyncStreamRequestHandler):
    """Answer one line, prefixed with the client's address and certificate name."""

    async def handle(self) -> None:
        cert = self.writer.get_extra_info("peercert")
        who = dict(x[0] for x in cert["subject"])["commonName"] if cert else "anonymous"
        line = await self.readline()
        self.write(f"{who} {self.client_address[0]} ".encode() + line)


def _tls_client(pki: dict[str, Any], cert: str | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki["ca_pem"]))
    if cert is not None:
        context.load_cert_chain(pki[f"{cert}_pem"], pki[f"{cert}_key"])
    return context


def _tls_ask(address: Any, context: ssl.SSLContext) -> bytes:
    with connect(address) as raw, context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        tls.sendall(b"hi\n")
        return recv_until(tls)


def test_tls(pki: dict[str, Any], servekit_log: LogWatcher) -> None:
    server = servekit.make_server(
        "127.0.0.1:0", WhoEcho, concurrency="async", certfile=pki["server_pem"],
        keyfile=pki["server_key"], cafile=pki["ca_pem"], handshake_timeout=0.5,
    )  # fmt: skip
    with serving(server):
        silent = connect(server.server_address)  # never says hello
        assert _tls_ask(server.server_address, _tls_client(pki, "client")) == (
            b"client 127.0.0.1 hi\n"
        )
        try:  # no client certificate: refused, by an alert or by the connection closing
            refused = _tls_ask(server.server_address, _tls_client(pki))
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
            refused = b""
        assert refused == b""
        assert servekit_log.wait_for("TLS handshake failed")
        assert servekit_log.wait_for("TLS handshake not complete within handshake_timeout")
        assert silent.recv(10) == b""
        silent.close()
    assert server.stats.limits == {"handshake_timeout": 1, "tls_handshake": 1}
    assert server.stats.errors == 0


def test_proxy_protocol(servekit_log: LogWatcher) -> None:
    from servekit.proxy import build_v1, build_v2

    real, front = ("203.0.113.7", 4711), ("198.51.100.1", 443)
    server = servekit.make_server(
        "127.0.0.1:0", WhoEcho, concurrency="async", proxy_protocol=True,
        trusted_proxies=["127.0.0.1"],
    )  # fmt: skip
    with serving(server):
        for header in (build_v1(real, front), build_v2(real, front)):
            with connect(server.server_address) as client:
                client.sendall(header + b"via proxy\n")
                assert recv_until(client) == b"anonymous 203.0.113.7 via proxy\n"
        with connect(server.server_address) as client:
            client.sendall(b"no header\n")
            try:
                assert client.recv(10) == b""
            except ConnectionResetError:
                pass
        assert servekit_log.wait_for("bad PROXY header")
    untrusting = servekit.make_server(
        "127.0.0.1:0", WhoEcho, concurrency="async", proxy_protocol=True,
        trusted_proxies=["10.0.0.0/8"],
    )  # fmt: skip
    with serving(untrusting), connect(untrusting.server_address) as client:
        client.sendall(build_v1(real, front) + b"sneaky\n")
        try:
            assert client.recv(10) == b""
        except ConnectionResetError:
            pass
        assert servekit_log.wait_for("not a trusted proxy")
