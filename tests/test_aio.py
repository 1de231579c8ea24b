"""The asyncio engine: async handlers, the usual hooks, limits, stop, backpressure."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import threading
from pathlib import Path
from typing import Any

import pytest

import servekit
from servekit.aio import AsyncDatagramRequestHandler, AsyncStreamRequestHandler, AsyncTCPServer
from tests.conftest import WAIT, LogWatcher, connect, recv_until, serving

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


def test_echo_and_every_read_method() -> None:
    with serving(AsyncTCPServer(LOCAL, Methods)) as server, connect(server.server_address) as c:
        c.sendall(b"first line\nabcuntil;the rest")
        assert recv_until(c) == b"first line|abc|until;\n"
        c.shutdown(socket.SHUT_WR)
        assert recv_until(c, b"the rest") == b"rest=the rest"


def test_read_n_takes_what_is_there_up_to_n_and_is_a_plain_awaitable() -> None:
    class Chunks(AsyncStreamRequestHandler):
        async def handle(self) -> None:
            first = await self.read(3)  # waits: nothing is buffered yet
            self.write(first + b"|")
            await self.drain()
            second = await asyncio.wait_for(self.read(100), WAIT)  # a future, not a coroutine
            rest = await asyncio.gather(self.read(2), self.read(0))
            self.write(b"|".join([second, *rest, await self.read(5)]) + b".")

    with serving(AsyncTCPServer(LOCAL, Chunks)) as server, connect(server.server_address) as c:
        c.sendall(b"abcdefgh")  # one segment: the first read takes 3 of it
        assert recv_until(c, b"|") == b"abc|"
        c.shutdown(socket.SHUT_WR)
        # "defgh" was buffered: read(100) takes it all; then EOF: b"" from every read
        assert recv_until(c, b".") == b"defgh|||."


def test_get_request_is_the_servers_hook_here_too() -> None:
    """The engine takes connections through get_request(), as the sync servers do, so an
    override (a socket from elsewhere, a count, a refusal by OSError) works on it as well."""

    class Counting(AsyncTCPServer):
        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            self.taken: list[Any] = []

        def get_request(self) -> tuple[Any, Any]:
            conn, address = super().get_request()
            self.taken.append(address)
            if len(self.taken) == 1:
                conn.close()
                raise ConnectionAbortedError("the first is refused")  # skipped, as in the loop
            return conn, address

    with serving(Counting(LOCAL, Echo)) as server:
        with connect(server.server_address) as refused:
            refused_port = refused.getsockname()[1]
            assert refused.recv(10) == b""
        with connect(server.server_address) as served:
            served_port = served.getsockname()[1]
            served.sendall(b"second\n")
            assert recv_until(served) == b"second\n"
    assert [port for _, port in server.taken] == [refused_port, served_port]


def test_a_get_request_that_raises_pauses_accepting_instead_of_spinning(
    servekit_log: LogWatcher,
) -> None:
    class Broken(AsyncTCPServer):
        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            self.calls = 0
            self.broken = True

        def get_request(self) -> tuple[Any, Any]:
            self.calls += 1
            if self.broken:
                raise RuntimeError("a bug in get_request")
            return super().get_request()

    with serving(Broken(LOCAL, Echo)) as server, connect(server.server_address) as client:
        assert servekit_log.wait_for("get_request() failed")
        before = server.calls
        threading.Event().wait(0.5)  # the window measured, not a synchronisation
        # Paused for ACCEPT_BACKOFF_MAX after each failure: a reader left on would
        # have called it again at once, thousands of times in the window.
        assert server.calls - before <= 1
        server.broken = False
        client.sendall(b"waited\n")
        assert recv_until(client) == b"waited\n"  # taken once the pause is over


def test_many_connections_at_once_on_one_thread() -> None:
    seen_threads = set()

    class Where(Echo):
        async def handle(self) -> None:
            seen_threads.add(threading.get_ident())
            await super().handle()

    server = AsyncTCPServer(LOCAL, Where, bind_and_activate=False)
    server.request_queue_size = 64  # the stdlib's 5 would drop SYNs while the loop is busy
    server.server_bind()
    server.server_activate()
    with serving(server):
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


def test_sync_handler_is_refused_with_advice() -> None:
    with pytest.raises(TypeError, match="concurrency='pool'"):
        AsyncTCPServer(LOCAL, servekit.StreamRequestHandler)


def _rss_kib() -> int:
    """This process's resident memory (the server runs in it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


def test_a_factory_that_makes_no_async_handler_is_reported_with_advice(
    servekit_log: LogWatcher,
) -> None:
    """A handler factory that is not a class cannot be checked up front: what it makes
    is checked per connection, and reported as a handler error that says what to do."""
    with serving(AsyncTCPServer(LOCAL, lambda *args: object())) as server:
        with connect(server.server_address) as client:
            assert client.recv(10) == b""
        assert servekit_log.wait_for("Exception occurred during processing of request")
    [record] = [r for r in servekit_log.records if r.levelno >= logging.ERROR]
    assert record.exc_info is not None
    assert "returned an instance of object, not an async handler" in str(record.exc_info[1])
    assert server.stats.errors == 1


def test_a_client_that_does_not_read_cannot_grow_server_memory(servekit_log: LogWatcher) -> None:
    sizes: list[int] = []
    rss: list[int] = []

    class Flood(AsyncStreamRequestHandler):
        async def handle(self) -> None:
            await self.readline()
            rss.append(_rss_kib())
            for i in range(10_000):  # 640 MB if nothing held it back
                self.write(b"%065535d" % i)  # a new object each time, as real data would be
                sizes.append(self.transport.get_write_buffer_size())
                rss.append(_rss_kib())
                await self.drain()

    with serving(servekit.make_server("127.0.0.1:0", Flood, concurrency="async",
                                      idle_timeout=0.5)) as server:  # fmt: skip
        with connect(server.server_address) as client:
            client.sendall(b"go\n")
            assert servekit_log.wait_for("did not take our data for 0.5s")
        assert max(sizes) <= 1024 * 1024  # the transport's high-water mark, with room
        assert len(sizes) < 10_000
    # Sent into the kernel's buffers at most (a few MiB on loopback), held by us
    # up to the high-water mark: the process grew by far less than was written.
    assert max(rss) - rss[0] < 32 * 1024, f"grew {max(rss) - rss[0]} KiB"


def test_a_client_that_sends_faster_than_the_handler_reads_is_held_back() -> None:
    from servekit.aio.stream import READ_HIGH_WATER

    gate, buffered = threading.Event(), []

    class Sluggish(AsyncStreamRequestHandler):
        async def handle(self) -> None:
            await asyncio.to_thread(gate.wait, WAIT)
            buffered.append(len(self._stream.buffer))
            total = 0
            while chunk := await self.read(65536):
                total += len(chunk)
            self.write(b"%d\n" % total)

    with serving(AsyncTCPServer(LOCAL, Sluggish)) as server, connect(server.server_address) as c:
        c.settimeout(0.5)
        sent = 0
        with contextlib.suppress(TimeoutError):
            while sent < 64 * 1024 * 1024:  # until the server stops taking it
                sent += c.send(b"x" * 65536)
        assert sent < 64 * 1024 * 1024, "the server took everything"
        gate.set()
        c.settimeout(WAIT)
        c.shutdown(socket.SHUT_WR)
        assert recv_until(c) == b"%d\n" % sent  # nothing lost
    assert buffered[0] <= READ_HIGH_WATER + 256 * 1024  # one last read past the mark, at most


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


class DatagramEcho(AsyncDatagramRequestHandler):
    async def handle(self) -> None:
        await asyncio.sleep(0)  # really async
        self.wfile.write(b"echo " + self.rfile.read())


def test_udp_answers_and_counts_bytes() -> None:
    server = servekit.make_server("udp://127.0.0.1:0", DatagramEcho, concurrency="async")
    with serving(server), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(WAIT)
        for i in range(5):
            client.sendto(b"%d" % i, server.server_address)
            assert client.recv(100) == b"echo %d" % i
    assert server.stats.requests == 5
    assert (server.stats.bytes_in, server.stats.bytes_out) == (5, len(b"echo 0") * 5)


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


def test_a_datagram_flood_is_bounded(servekit_log: LogWatcher) -> None:
    gate = threading.Event()

    class Slow(AsyncDatagramRequestHandler):
        async def handle(self) -> None:
            await asyncio.get_running_loop().run_in_executor(None, gate.wait, WAIT)
            self.send(b"done " + self.packet)

    server = servekit.aio.AsyncUDPServer(LOCAL, Slow)
    server.max_in_flight = 4
    with serving(server), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(WAIT)
        for i in range(20):
            client.sendto(b"%d" % i, server.server_address)
        # Past the first drop the lines go to DEBUG: they say when all 16 were seen.
        assert servekit_log.wait_for("max_in_flight", count=16)
        gate.set()
        # The first four were in their handlers when the rest came: only they are served.
        assert sorted(client.recv(100) for _ in range(4)) == [b"done %d" % i for i in range(4)]
        client.sendto(b"after", server.server_address)  # room again
        assert client.recv(100) == b"done after"
    assert server.stats.limits == {"max_in_flight": 16}
    drops = [
        r.getMessage() for r in servekit_log.records
        if r.levelno >= logging.WARNING and "max_in_flight" in r.getMessage()
    ]  # fmt: skip
    assert len(drops) == 1, drops  # one line for the flood, not sixteen
    assert "4 datagrams already in their handlers" in drops[0]


def test_drain_after_the_connection_was_lost_while_paused_raises() -> None:
    """The transport never resumes a connection it has lost: drain() must not wait for it."""
    paused, done, outcome = threading.Event(), threading.Event(), []

    class Stuck(AsyncStreamRequestHandler):
        max_write_buffer = 256 * 1024 * 1024  # the kernel's buffers fill first

        async def handle(self) -> None:
            await self.readline()
            while not self._stream.paused:  # the client reads nothing
                self.write(b"x" * 65536)
            paused.set()
            await self._stream.closed()  # the client resets the connection
            try:
                await asyncio.wait_for(self.drain(), WAIT / 2)
            except Exception as exc:
                outcome.append(type(exc))
            finally:
                done.set()

    with serving(AsyncTCPServer(LOCAL, Stuck)) as server:
        client = connect(server.server_address)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.sendall(b"go\n")
        assert paused.wait(WAIT)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()  # a reset
        assert done.wait(WAIT)
    assert outcome == [ConnectionResetError]


def test_stop_lets_datagram_handlers_in_flight_reply_and_serve_again() -> None:
    """A stop takes no new datagrams but sends the replies of those in their handlers;
    the socket outlives the stop, so serve_forever() can run again."""

    class StopsFirst(AsyncDatagramRequestHandler):
        async def handle(self) -> None:
            self.server.shutdown()  # from the loop's thread: the stop begins, we go on
            for _ in range(10):
                await asyncio.sleep(0)  # let the stop get as far as it can before we reply
            self.wfile.write(self.packet)

    server = servekit.make_server("udp://127.0.0.1:0", StopsFirst, concurrency="async")
    with server, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(WAIT)
        for words in (b"last words", b"second life"):
            loop = threading.Thread(target=server.serve_forever)
            loop.start()
            client.sendto(words, server.server_address)
            assert client.recv(100) == words
            loop.join(WAIT)
            assert not loop.is_alive()


def test_stop_right_after_start_never_races() -> None:
    for _ in range(100):
        server = AsyncTCPServer(LOCAL, Echo)
        loop = threading.Thread(target=server.serve_forever)
        loop.start()
        server.shutdown()
        loop.join(WAIT)
        assert not loop.is_alive(), "shutdown() was lost"
        server.server_close()


def test_service_actions_run_while_serving() -> None:
    server = AsyncTCPServer(LOCAL, Echo)
    ran = threading.Event()
    server.service_actions = ran.set  # type: ignore[method-assign]
    with serving(server, poll_interval=0.05):
        assert ran.wait(WAIT)


def test_an_inherited_socket() -> None:
    """fd://N (and so systemd's sockets, which make_server takes the same way)."""
    inherited = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    inherited.bind(LOCAL)
    inherited.listen()
    fd = inherited.detach()
    with serving(servekit.make_server(f"fd://{fd}", Echo, concurrency="async")) as server:
        assert server.socket.fileno() == fd
        with connect(server.server_address) as client:
            client.sendall(b"inherited\n")
            assert recv_until(client) == b"inherited\n"


# -- TLS and the PROXY protocol on the async engine ----------------------------------


class _Pong(AsyncDatagramRequestHandler):
    async def handle(self) -> None:
        self.send(b"pong")


@pytest.mark.parametrize("where", ["class", "instance", "none"])
def test_datagram_closing_hooks_run_when_overridden(where: str) -> None:
    """The engine skips a datagram's shutdown_request()/close_request() only while they
    are the datagram servers' own, which do nothing; an override runs, on the class or
    on the instance."""
    closed: list[Any] = []

    class Server(servekit.aio.AsyncUDPServer):
        if where == "class":

            def close_request(self, request: Any) -> None:
                closed.append(request[0])

    server = Server(LOCAL, _Pong)
    if where == "instance":
        server.shutdown_request = closed.append  # type: ignore[method-assign]
    with (
        serving(server),
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client,
    ):
        client.settimeout(WAIT)
        for _ in range(3):
            client.sendto(b"ping", server.server_address)
            assert client.recv(10) == b"pong"
    if where == "none":
        assert server._aio_quiet_close is True  # the default hooks: skipped
        assert closed == []
    else:
        assert len(closed) == 3
