"""The production claims under load: slow clients, a stop under load, a storm of errors.

Every loop here is bounded in count and time, and talks to 127.0.0.1 only.
"""

from __future__ import annotations

import logging
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

import servekit
from tests.conftest import WAIT, LogWatcher, connect, recv_until, serving


class Echo(servekit.StreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(line)


def _request(address: Any, line: bytes) -> bool:
    try:
        with connect(address) as client:
            client.sendall(line)
            return recv_until(client) == line
    except OSError:
        return False


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("concurrency", "options"),
    [("threads", {}), ("pool", {"max_workers": 256})],
    ids=["threads", "pool"],
)
def test_slow_clients_are_cut_and_normal_clients_served(
    concurrency: Any, options: dict[str, Any], servekit_log: LogWatcher
) -> None:
    """200 clients sending a byte a second; normal clients keep >= 99% success."""
    server = servekit.make_server(
        "127.0.0.1:0", Echo, concurrency=concurrency, read_timeout=1.5, idle_timeout=5,
        **options,
    )  # fmt: skip
    stop = threading.Event()
    with serving(server):
        slow = [connect(server.server_address) for _ in range(200)]

        def trickle() -> None:
            while not stop.is_set():
                for client in slow:
                    try:
                        client.send(b"x")
                    except OSError:
                        pass  # cut by the server, as it should be
                stop.wait(1.0)  # one byte a second per client: the attack's pace

        trickler = threading.Thread(target=trickle, daemon=True)
        trickler.start()
        try:
            with ThreadPoolExecutor(8) as pool:
                results = list(pool.map(
                    lambda i: _request(server.server_address, b"%d\n" % i), range(400)
                ))  # fmt: skip
            assert sum(results) >= 0.99 * len(results)
            assert servekit_log.wait_for("request not complete after 1.5s", count=200)
        finally:
            stop.set()
            trickler.join(WAIT)
        for client in slow:
            client.settimeout(WAIT)
            try:
                assert client.recv(100) == b""
            except ConnectionResetError:
                pass
            client.close()
        assert server.stats.limits.get("read_timeout") == 200


@pytest.mark.timeout(60)
@pytest.mark.parametrize("concurrency", ["pool", "threads", "fork"])
def test_stop_under_load_answers_every_request_it_accepted(concurrency: Any) -> None:
    class Work(servekit.StreamRequestHandler):
        def handle(self) -> None:
            line = self.rfile.readline()
            threading.Event().wait(0.01)  # the request's work, not a synchronisation
            self.wfile.write(line)

    server = servekit.make_server("127.0.0.1:0", Work, concurrency=concurrency)
    address = server.server_address
    loop = threading.Thread(target=server.serve_forever, daemon=True)
    loop.start()
    completed = 0
    lock = threading.Lock()
    loaded = threading.Event()

    def client(n: int) -> None:
        """Request after request until the server refuses to connect."""
        nonlocal completed
        for i in range(10_000):
            line = b"%d-%d\n" % (n, i)
            try:
                sock = socket.create_connection(address, timeout=WAIT)
            except OSError:
                return  # refused: the server no longer accepts
            with sock:
                try:
                    sock.sendall(line)
                    reply = recv_until(sock)
                except ConnectionResetError:
                    continue  # never accepted: reset from the backlog at close
                if reply == line:
                    with lock:
                        completed += 1
                        if completed >= 100:
                            loaded.set()
                else:
                    assert reply == b"", f"a reply was cut: {reply!r}"

    clients = [threading.Thread(target=client, args=(n,)) for n in range(16)]
    for t in clients:
        t.start()
    assert loaded.wait(WAIT), "the load never built up"
    server.shutdown()
    server.server_close()
    for t in clients:
        t.join(WAIT)
        assert not t.is_alive()
    loop.join(WAIT)
    stats = server.stats
    assert stats.requests >= 100
    assert completed == stats.requests, "the server accepted requests it did not answer"
    assert stats.errors == 0


@pytest.mark.timeout(60)
def test_a_thousand_failing_requests(servekit_log: LogWatcher) -> None:
    class Fails(servekit.StreamRequestHandler):
        def handle(self) -> None:
            line = self.rfile.readline()
            if line.startswith(b"fail"):
                raise ValueError(line.decode().strip())
            self.wfile.write(line)

    logging.getLogger("servekit").setLevel(logging.ERROR)  # keep the watcher's list small
    ports: list[int] = []
    with serving(servekit.make_server("127.0.0.1:0", Fails)) as server:

        def fail(i: int) -> int:
            with connect(server.server_address) as sock:
                sock.sendall(b"fail %d\n" % i)
                assert recv_until(sock) == b""
                return int(sock.getsockname()[1])

        with ThreadPoolExecutor(8) as pool:
            ports = list(pool.map(fail, range(1000)))
        assert _request(server.server_address, b"still serving\n")
        assert servekit_log.wait_for("Exception occurred", count=1000)
    errors = [r for r in servekit_log.records if r.levelno == logging.ERROR]
    assert len(errors) == 1000, "each error is logged exactly once"
    logged_ports = {r.args[0][1] for r in errors}  # type: ignore[index]
    assert logged_ports == set(ports)
    assert all(r.exc_info and r.exc_info[0] is ValueError for r in errors)
    assert server.stats.errors == 1000
