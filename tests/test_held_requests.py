"""A source that holds its requests itself (BaseServer.holds_request): the thread that
ran a request takes the next one it holds, without the source's fileno() turning
readable for it (the sync loop before its wait, a pool worker when its request ends),
and only a serve_forever() loop's workers do (handle_request() takes one a call)."""

from __future__ import annotations

import socket
import threading
from collections import deque
from typing import Any

import pytest

import servekit
from tests.conftest import WAIT, serving


class Held(servekit.BaseServer):
    """Requests put in a buffer; fileno() turns readable for the first one only, so a
    request past it is served only if a thread takes it through holds_request()."""

    def __init__(self, requests: list[str], handler: Any) -> None:
        super().__init__("held", handler)
        self._lock = threading.Lock()
        self._buffer = deque(requests)
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.send(b"!")
        self.accepted_in: list[str] = []
        self.verified_in: list[str] = []
        self.shut_down: list[str] = []

    def fileno(self) -> int:
        return self._reader.fileno()

    def holds_request(self) -> bool:
        return bool(self._buffer)

    def get_request(self) -> tuple[str, str]:
        with self._lock:
            try:
                self._reader.recv(16)
            except BlockingIOError:
                pass
            if not self._buffer:
                raise BlockingIOError("none held")
            request = self._buffer.popleft()
        return request, "held"

    def request_accepted(self, request: Any, client_address: Any) -> None:
        self.accepted_in.append(threading.current_thread().name)
        if request == "accept raises":
            raise RuntimeError("request_accepted failed")

    def verify_request(self, request: Any, client_address: Any) -> bool:
        self.verified_in.append(threading.current_thread().name)
        if request == "raises":
            raise RuntimeError("verify_request failed")
        return request != "refused"

    def shutdown_request(self, request: Any) -> None:
        self.shut_down.append(request)

    def server_close(self) -> None:
        super().server_close()
        self._reader.close()
        self._writer.close()


class Record(servekit.BaseRequestHandler):
    """Notes the request and the thread that ran it; the last one says so."""

    runs: list[tuple[str, str]]
    last: threading.Event

    def handle(self) -> None:
        self.runs.append((self.request, threading.current_thread().name))
        if self.request == "last":
            self.last.set()


def _recorder() -> type[Record]:
    return type("Recording", (Record,), {"runs": [], "last": threading.Event()})


REQUESTS = ["first", "second", "refused", "third", "last"]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("model", ["sync", "pool"])
def test_the_thread_that_ran_a_request_takes_the_next_held_one(model: str) -> None:
    handler = _recorder()
    server = servekit.with_model(Held, model)(list(REQUESTS), handler)
    with serving(server):
        assert handler.last.wait(WAIT), f"served only {handler.runs}"
        # The one refused was not run; stats count those verified.
        assert [request for request, _ in handler.runs] == ["first", "second", "third", "last"]
        assert server.stats.requests == 4
    threads = {thread for _, thread in handler.runs}
    assert len(threads) == 1  # no hand-off back through the loop
    if model == "pool":
        # A worker took them: the hooks ran there, not in the loop's thread.
        (worker,) = threads
        assert "worker" in worker
        assert server.accepted_in[1:] == [worker] * 4
        assert server.verified_in[1:] == [worker] * 4


@pytest.mark.timeout(30)
def test_a_hook_that_raises_in_a_worker_loses_no_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """request_accepted() or verify_request() raising for a request a pool worker took:
    handle_error(), the request is shut down, and the worker goes on with the next."""
    handler = _recorder()
    requests = ["first", "accept raises", "raises", "last"]
    server = servekit.with_model(Held, "pool")(list(requests), handler)
    with serving(server):
        assert handler.last.wait(WAIT), f"served only {handler.runs}"
    assert [request for request, _ in handler.runs] == ["first", "last"]
    assert sorted(server.shut_down) == sorted(requests)
    assert server.stats.errors == 2
    assert "request_accepted failed" in caplog.text
    assert "verify_request failed" in caplog.text


@pytest.mark.timeout(30)
def test_handle_request_takes_one_held_request_a_call_on_the_pool() -> None:
    """Without a serve_forever() loop the pool's workers take nothing themselves:
    handle_request() serves one request a call, and finds the held ones."""
    handler = _recorder()
    server = servekit.with_model(Held, "pool")(["first", "second"], handler)
    try:
        server.handle_request()
        server.handle_request()
        server.server_close()  # drains the pool: both have run by now
        assert sorted(request for request, _ in handler.runs) == ["first", "second"]
    finally:
        server.server_close()


@pytest.mark.timeout(30)
def test_handle_request_serves_a_held_request_whatever_fileno_says() -> None:
    handler = _recorder()
    server = servekit.with_model(Held, "sync")(["first", "second", "last"], handler)
    server.timeout = WAIT
    try:
        for _ in range(3):
            server.handle_request()
        assert [request for request, _ in handler.runs] == ["first", "second", "last"]
    finally:
        server.server_close()


@pytest.mark.timeout(30)
def test_a_pool_worker_stops_taking_held_requests_at_shutdown() -> None:
    """A worker takes held requests only while the loop serves: after shutdown()
    the rest stay in the source (for server_close() to release, or a next loop)."""
    gate, started = threading.Event(), threading.Event()
    ran: list[str] = []

    class Blocking(servekit.BaseRequestHandler):
        def handle(self) -> None:
            ran.append(self.request)
            if self.request == "first":
                started.set()
                assert gate.wait(WAIT)

    server = servekit.with_model(Held, "pool")(["first", "second", "third"], Blocking)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert started.wait(WAIT)
        server.shutdown()
        gate.set()
        server.server_close()  # drains the pool: the worker is done
        assert ran == ["first"]
        assert server.holds_request()
    finally:
        gate.set()
        thread.join(WAIT)
        server.server_close()
