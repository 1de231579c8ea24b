"""One behavioural test set for every concurrency model, the async engine included.

Each test runs on ``sync``, ``threads``, ``pool``, ``fork`` and ``async`` (on
asyncio's loop and on uvloop's), with the same client-side assertions: what
a server promises does not depend on how its requests run. A forked child
logs and counts in its own memory, so for ``fork`` the tests check what the
client sees and what the parent process counts, not the child's log lines.

The handlers, sync and async, speak one line protocol: every line comes back,
except ``who`` (answered with the client's certificate name and address),
``fail`` (the handler raises) and ``wait ...`` (the handler waits at a gate,
then echoes).
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import socket
import ssl
import threading
from dataclasses import dataclass
from typing import Any

import pytest

import servekit
from servekit.aio import AsyncDatagramRequestHandler, AsyncStreamRequestHandler
from servekit.proxy import build_v1, build_v2
from tests.conftest import WAIT, LogWatcher, connect, recv_until, serving, trickling


class Gate:
    """Handlers wait here until the test releases them."""

    def __init__(self) -> None:
        self.release = threading.Event()


def _answer(line: bytes, client_address: Any, cert: dict[str, Any] | None) -> bytes:
    if line == b"who\n":
        who = dict(x[0] for x in cert["subject"])["commonName"] if cert else "anonymous"
        return f"{who} {client_address[0]}\n".encode()
    if line == b"fail\n":
        raise ValueError("the handler failed")
    return line


class Echo(servekit.StreamRequestHandler):
    def handle(self) -> None:
        cert = getattr(self.request, "getpeercert", lambda: None)()
        for line in self.rfile:
            if line.startswith(b"wait"):
                self.server.gate.release.wait(WAIT)
            self.wfile.write(_answer(line, self.client_address, cert))


class AsyncEcho(AsyncStreamRequestHandler):
    async def handle(self) -> None:
        cert = self.get_extra_info("peercert")
        async for line in self:
            if line.startswith(b"wait"):
                await asyncio.to_thread(self.server.gate.release.wait, WAIT)
            self.write(_answer(line, self.client_address, cert))
            await self.drain()


class DatagramEcho(servekit.DatagramRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.read())


class AsyncDatagramEcho(AsyncDatagramRequestHandler):
    async def handle(self) -> None:
        self.wfile.write(self.rfile.read())


@dataclass
class Model:
    concurrency: str

    @property
    def forks(self) -> bool:
        """Handlers run in child processes: their logs and limits are not seen here."""
        return self.concurrency == "fork"

    def make(self, address: str = "127.0.0.1:0", **options: Any) -> Any:
        """A server built by make_server, with the stream limits off unless asked for."""
        datagram = address.startswith(("udp:", "unix-dgram:"))
        is_async = self.concurrency == "async"
        if datagram:
            handler: Any = AsyncDatagramEcho if is_async else DatagramEcho
        else:
            handler = AsyncEcho if is_async else Echo
            options = {"idle_timeout": None, "read_timeout": None,
                       "max_line_length": None} | options  # fmt: skip
        server = servekit.make_server(address, handler, concurrency=self.concurrency, **options)
        server.gate = Gate()
        return server


@pytest.fixture(params=["sync", "threads", "pool", "fork", "async-asyncio", "async-uvloop"])
def model(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Model:
    concurrency, _, loop = request.param.partition("-")
    if loop:
        if loop == "uvloop":
            pytest.importorskip("uvloop", reason="uvloop is in the dev extra; not installed here")
        monkeypatch.setattr(servekit.aio.AsyncServerMixIn, "loop", loop)
    return Model(concurrency)


def _connect(server: Any) -> socket.socket:
    address = server.server_address
    return connect(address, socket.AF_UNIX if isinstance(address, str) else socket.AF_INET)


def _talk(client: socket.socket, *lines: bytes) -> bytes:
    """Send ``lines``, end the sending side, and return all the server said."""
    try:
        client.sendall(b"".join(lines))
        # shutdown(), not close(): a forked child holding a copy of this socket
        # (as every child forked after it has) would keep a close() from
        # reaching the server.
        client.shutdown(socket.SHUT_WR)
    except OSError:  # the server has already closed the connection: read why
        pass
    return _read_to_end(client)


def _hang_up(*clients: socket.socket) -> None:
    """Close ``clients`` so that the server sees it, whatever children share them."""
    for client in clients:
        try:
            client.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        client.close()


def _read_to_end(client: socket.socket) -> bytes:
    """Everything until the server closes the connection (a reset counts as a close)."""
    received = b""
    try:
        while chunk := client.recv(4096):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def _count_verified(server: Any) -> threading.Condition:
    """Make verify_request count the connections the server took; the returned
    condition is notified at each, with the count in ``server.verified``."""
    changed = threading.Condition()
    server.verified = 0

    def verify_request(request: Any, client_address: Any) -> bool:
        with changed:
            server.verified += 1
            changed.notify_all()
        return True

    server.verify_request = verify_request
    return changed


def _errors(log: LogWatcher) -> list[logging.LogRecord]:
    return [r for r in log.records if r.levelno >= logging.ERROR]


# -- serving -----------------------------------------------------------------------------


def test_overridden_hooks_run_on_every_model(model: Model) -> None:
    """The one contract: process_request, finish_request, shutdown_request and
    close_request, overridden (here on the instance, calling the originals), run for
    each connection on every model; a forked child reports through a pipe."""
    server = model.make()
    read_fd, write_fd = os.pipe()

    def recording(name: str) -> Any:
        original = getattr(server, name)

        def hook(*args: Any) -> Any:
            os.write(write_fd, name.encode() + b"\n")
            return original(*args)

        return hook

    for name in ("process_request", "finish_request", "shutdown_request", "close_request"):
        setattr(server, name, recording(name))
    try:
        with serving(server):
            for _ in range(2):
                with _connect(server) as client:
                    assert _talk(client, b"hi\n") == b"hi\n"
            seen = b""
            while seen.count(b"close_request") < 2:
                ready, _, _ = select.select([read_fd], [], [], WAIT)
                assert ready, f"only {seen!r}"
                seen += os.read(read_fd, 4096)
    finally:
        os.close(read_fd)
        os.close(write_fd)
    calls = seen.decode().split()
    for name in ("process_request", "finish_request", "shutdown_request"):
        assert calls.count(name) == 2, calls
    assert calls[0] == "process_request"


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_stream_echo(model: Model, transport: str, sock_dir: Any) -> None:
    address = "127.0.0.1:0" if transport == "tcp" else f"unix:{sock_dir / 's.sock'}"
    with serving(model.make(address)) as server:
        for _ in range(2):
            with _connect(server) as client:
                assert _talk(client, b"one\n", b"two\n") == b"one\ntwo\n"
    assert server.stats.connections_total == 2
    assert server.stats.requests == 2


@pytest.mark.parametrize("transport", ["udp", "unix-dgram"])
def test_datagram_echo_and_oversized_drop(model: Model, transport: str, sock_dir: Any) -> None:
    if transport == "udp":
        address, family = "udp://127.0.0.1:0", socket.AF_INET
    else:
        address, family = f"unix-dgram:{sock_dir / 'd.sock'}", socket.AF_UNIX
    with (
        serving(model.make(address, max_packet_size=100)) as server,
        socket.socket(family, socket.SOCK_DGRAM) as client,
    ):
        client.settimeout(WAIT)
        if family == socket.AF_UNIX:
            client.bind(str(sock_dir / "client.sock"))  # somewhere for the answer to go
        for packet in (b"first", b"x" * 101, b"last"):
            client.sendto(packet, server.server_address)
        assert sorted([client.recv(200), client.recv(200)]) == [b"first", b"last"]
    assert server.stats.limits == {"max_packet_size": 1}
    assert server.stats.requests == 2


def test_datagram_stats_count_every_byte_from_many_clients(model: Model) -> None:
    """The loop counts what it receives without a lock and the workers count what
    they send with one: neither may lose an update to the other."""
    clients, rounds = 8, 50
    sizes = [1 + (i * 7) % 300 for i in range(rounds)]

    def client(server: Any, errors: list[BaseException]) -> None:
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.settimeout(WAIT)
                for size in sizes:
                    sock.sendto(b"d" * size, server.server_address)
                    assert sock.recv(400) == b"d" * size
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    with serving(model.make("udp://127.0.0.1:0")) as server:
        errors: list[BaseException] = []
        threads = [threading.Thread(target=client, args=(server, errors)) for _ in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT)
        assert not errors
    stats = server.stats
    assert stats.requests == clients * rounds
    assert stats.bytes_in == clients * sum(sizes)
    if not model.forks:  # a child counts its replies in its own memory
        assert stats.bytes_out == clients * sum(sizes)


def test_verify_request_refuses(model: Model) -> None:
    with serving(model.make()) as server:
        server.verify_request = lambda request, address: server.stats.connections_total % 2
        answers = []
        for i in range(4):
            with _connect(server) as client:
                answers.append(_talk(client, b"%d\n" % i))
    assert answers == [b"0\n", b"", b"2\n", b""]


def test_handler_error_is_logged_and_others_are_served(
    model: Model, servekit_log: LogWatcher
) -> None:
    with serving(model.make()) as server:
        with _connect(server) as client:
            assert _talk(client, b"ok\n", b"fail\n", b"never\n") == b"ok\n"
        with _connect(server) as client:
            assert _talk(client, b"still here\n") == b"still here\n"
        if not model.forks:
            assert server.stats.errors == 1
            assert servekit_log.wait_for("Exception occurred during processing of request")
            [record] = _errors(servekit_log)
            assert record.exc_info is not None
            assert record.exc_info[0] is ValueError


# -- limits -------------------------------------------------------------------------------


def test_idle_read_and_line_limits(model: Model, servekit_log: LogWatcher) -> None:
    limits = {"idle_timeout": 0.3, "read_timeout": 0.5, "max_line_length": 16}
    with serving(model.make(**limits)) as server:
        with _connect(server) as silent:
            assert _read_to_end(silent) == b""
        with _connect(server) as long_line:
            assert _talk(long_line, b"short\n", b"x" * 40 + b"\n") == b"short\n"
        with _connect(server) as slow, trickling(slow, 0.1):
            slow.sendall(b"a")  # a request begins, then a byte every 0.1 s: never idle, never done
            assert _read_to_end(slow) == b""
        with _connect(server) as client:  # the server is fine
            assert _talk(client, b"fine\n") == b"fine\n"
        if not model.forks:
            assert servekit_log.wait_for("idle for 0.3s")
            assert servekit_log.wait_for("line longer than 16 bytes")
            assert servekit_log.wait_for("request not complete after 0.5s")
            assert server.stats.limits == {
                "idle_timeout": 1, "max_line_length": 1, "read_timeout": 1,
            }  # fmt: skip
            assert not _errors(servekit_log)


def test_read_timeout_alone(model: Model, servekit_log: LogWatcher) -> None:
    """read_timeout holds with idle_timeout off: no other timer is there to lean on."""
    with serving(model.make(read_timeout=0.3)) as server:
        with _connect(server) as slow, trickling(slow, 0.1):
            slow.sendall(b"a")
            assert _read_to_end(slow) == b""
        if not model.forks:
            assert servekit_log.wait_for("request not complete after 0.3s")
            assert server.stats.limits == {"read_timeout": 1}


def test_max_connections_waits_then_serves(model: Model, servekit_log: LogWatcher) -> None:
    if model.concurrency == "sync":
        pytest.skip("sync serves one connection at a time: the limit never comes into play")
    with serving(model.make(max_connections=2)) as server:
        first, second = _connect(server), _connect(server)
        for client in (first, second):
            client.sendall(b"a\n")
            assert recv_until(client) == b"a\n"
        third = _connect(server)  # completes in the kernel's backlog
        third.sendall(b"c\n")
        assert servekit_log.wait_for("max_connections=2 reached")
        assert server.stats.connections_total == 2
        _hang_up(first)
        assert recv_until(third) == b"c\n"  # served once a slot freed
        _hang_up(second, third)
    assert server.stats.limits["max_connections"] >= 1


# -- stopping -----------------------------------------------------------------------------


def test_graceful_stop_answers_requests_in_flight(model: Model) -> None:
    busy = 1 if model.concurrency == "sync" else 3
    server = model.make(shutdown_timeout=WAIT)
    verified = _count_verified(server)
    if model.forks:
        server.gate.release.set()  # a child has its own copy of the gate, taken at fork time
    loop = threading.Thread(target=server.serve_forever)
    loop.start()
    clients = [_connect(server) for _ in range(busy)]
    for i, client in enumerate(clients):
        client.sendall(b"wait %d\n" % i)
    with verified:
        assert verified.wait_for(lambda: server.verified >= busy, WAIT)
    stopper = threading.Thread(target=lambda: (server.shutdown(), server.server_close()))
    stopper.start()
    server.gate.release.set()
    assert [_talk(client) for client in clients] == [b"wait %d\n" % i for i in range(busy)]
    stopper.join(WAIT)
    loop.join(WAIT)
    assert not stopper.is_alive()
    assert not loop.is_alive()
    with pytest.raises(OSError):
        _connect(server)  # no longer accepting
    _hang_up(*clients)


def test_stop_cuts_what_outlives_shutdown_timeout(model: Model, servekit_log: LogWatcher) -> None:
    server = model.make(shutdown_timeout=0.2)
    verified = _count_verified(server)
    loop = threading.Thread(target=server.serve_forever)
    loop.start()
    with _connect(server) as client:  # and says nothing: its handler waits for a line
        with verified:
            assert verified.wait_for(lambda: server.verified >= 1, WAIT)
        stopper = threading.Thread(target=lambda: (server.shutdown(), server.server_close()))
        stopper.start()
        stopper.join(WAIT)
        assert not stopper.is_alive(), "stop did not finish after shutdown_timeout"
        assert _read_to_end(client) == b""  # closed, not left hanging
    loop.join(WAIT)
    assert servekit_log.wait_for("cut 1 connection(s) still open after shutdown_timeout=0.2s")


# -- TLS and the PROXY protocol -----------------------------------------------------------


def _tls_ask(server: Any, pki: dict[str, Any], cert: str | None = None) -> bytes:
    context = ssl.create_default_context(cafile=str(pki["ca_pem"]))
    if cert is not None:
        context.load_cert_chain(pki[f"{cert}_pem"], pki[f"{cert}_key"])
    try:
        with _connect(server) as raw, context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(b"who\n")
            answer = recv_until(tls)
            _hang_up(tls)  # raw was detached by the wrap
            return answer
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        return b""  # refused, by an alert or by the connection closing


def test_tls(model: Model, pki: dict[str, Any], servekit_log: LogWatcher) -> None:
    server = model.make(
        certfile=pki["server_pem"], keyfile=pki["server_key"], cafile=pki["ca_pem"],
        handshake_timeout=0.5,
    )  # fmt: skip
    with serving(server):
        with _connect(server) as silent:  # never says hello: cut after handshake_timeout
            assert _read_to_end(silent) == b""
        assert _tls_ask(server, pki, "client") == b"client 127.0.0.1\n"
        assert _tls_ask(server, pki) == b""  # no client certificate
        if not model.forks:
            assert servekit_log.wait_for("TLS handshake not complete within handshake_timeout")
            assert servekit_log.wait_for("TLS handshake failed")
            assert server.stats.limits == {"handshake_timeout": 1, "tls_handshake": 1}
            assert server.stats.errors == 0


def test_proxy_protocol(model: Model, servekit_log: LogWatcher) -> None:
    real, front = ("203.0.113.7", 4711), ("198.51.100.1", 443)
    trusting = model.make(proxy_protocol=True, trusted_proxies=["127.0.0.1"])
    with serving(trusting):
        for header in (build_v1(real, front), build_v2(real, front)):
            with _connect(trusting) as client:
                assert _talk(client, header + b"who\n") == b"anonymous 203.0.113.7\n"
        with _connect(trusting) as client:
            assert _talk(client, b"who\n") == b""  # no header: refused
    untrusting = model.make(proxy_protocol=True, trusted_proxies=["10.0.0.0/8"])
    with serving(untrusting), _connect(untrusting) as client:
        assert _talk(client, build_v1(real, front) + b"who\n") == b""
    if not model.forks:
        assert servekit_log.wait_for("bad PROXY header")
        assert servekit_log.wait_for("not a trusted proxy")


def test_a_stalled_proxy_header_holds_up_no_one(model: Model, servekit_log: LogWatcher) -> None:
    """A proxy that stops inside its header is cut at handshake_timeout, and others are
    served meanwhile (idle_timeout is long, so only the preface's own bound can cut it)."""
    real, front = ("203.0.113.7", 4711), ("198.51.100.1", 443)
    server = model.make(proxy_protocol=True, trusted_proxies=["127.0.0.1"], idle_timeout=60,
                        handshake_timeout=1.0)  # fmt: skip
    with serving(server), _connect(server) as stalled:
        stalled.sendall(b"PROXY TCP4 ")
        with _connect(server) as client:
            assert _talk(client, build_v1(real, front) + b"who\n") == b"anonymous 203.0.113.7\n"
        assert _read_to_end(stalled) == b""
    if not model.forks:
        assert servekit_log.wait_for("PROXY header not complete within handshake_timeout")
