"""The bounded pool, graceful stop in every model, max_connections, and stats."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest

import servekit
import servekit._pool
from servekit import _drain
from tests.conftest import WAIT, LogWatcher, connect, recv_until, serving

LOCAL = ("127.0.0.1", 0)


class Gate:
    """Handlers check in, then wait until released."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self._cond = threading.Condition()
        self.started = 0

    def check_in(self) -> None:
        with self._cond:
            self.started += 1
            self._cond.notify_all()
        self.release.wait(WAIT)

    def wait_started(self, count: int) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.started >= count, WAIT)


def gated_echo(gate: Gate) -> type[servekit.StreamRequestHandler]:
    class GatedEcho(servekit.StreamRequestHandler):
        def handle(self) -> None:
            line = self.rfile.readline()
            gate.check_in()
            self.wfile.write(b"%s %s" % (threading.current_thread().name.encode(), line))

    return GatedEcho


def test_threads_model_forgets_finished_threads_while_others_run() -> None:
    """Finished request threads are reaped (not at every new thread, but before the
    list doubles): it stays about as long as the threads alive, not all ever started."""
    gate = Gate()
    held_open = gated_echo(gate)

    class Server(servekit.ThreadingTCPServer):
        pass

    with serving(Server(LOCAL, held_open)) as server:
        held = [connect(server.server_address) for _ in range(20)]
        for client in held:
            client.sendall(b"held\n")
        assert gate.wait_started(20)  # twenty threads alive, waiting at the gate
        gate_for_others = Gate()
        gate_for_others.release.set()
        server.RequestHandlerClass = gated_echo(gate_for_others)
        for i in range(200):
            with connect(server.server_address) as client:
                client.sendall(b"%d\n" % i)
                assert recv_until(client).endswith(b" %d\n" % i)
        # 20 held, plus a few still finishing at the last reap: at most twice that.
        assert 20 <= len(server._threads) <= 2 * 25 + 1
        gate.release.set()
        for client in held:
            recv_until(client)
            client.close()


def test_pool_reuses_a_bounded_number_of_threads() -> None:
    gate = Gate()
    gate.release.set()

    class Small(servekit.ThreadPoolTCPServer):
        max_workers = 3

    names = set()
    with serving(Small(LOCAL, gated_echo(gate))) as server:
        for i in range(30):
            with connect(server.server_address) as client:
                client.sendall(b"%d\n" % i)
                names.add(recv_until(client).rsplit(b" ", 1)[0])
    assert 1 <= len(names) <= 3
    assert all(b"worker" in name for name in names)


def test_pool_gives_each_long_request_of_a_burst_a_worker() -> None:
    """Workers are called one at a time (each calls the next), yet a burst of long
    requests gets all of max_workers running at once, none left queued."""
    gate = Gate()

    class Eight(servekit.ThreadPoolTCPServer):
        max_workers = 8

    with serving(Eight(LOCAL, gated_echo(gate))) as server:
        clients = [connect(server.server_address) for _ in range(8)]
        for i, client in enumerate(clients):
            client.sendall(b"%d\n" % i)
        assert gate.wait_started(8)  # all eight in their handlers before any finishes
        gate.release.set()
        names = {recv_until(client).rsplit(b" ", 1)[0] for client in clients}
        for client in clients:
            client.close()
    assert len(names) == 8


def test_pool_stops_accepting_when_full_and_resumes(servekit_log: LogWatcher) -> None:
    gate = Gate()

    class Tiny(servekit.ThreadPoolTCPServer):
        max_workers = 2
        max_threads = 2
        max_pending = 1

    with serving(Tiny(LOCAL, gated_echo(gate))) as server:
        clients = [connect(server.server_address) for _ in range(6)]
        for i, client in enumerate(clients):
            client.sendall(b"%d\n" % i)
        assert gate.wait_started(2)
        assert servekit_log.wait_for("all 2 threads busy (max_threads) and 1 requests queued")
        # Two running, one queued; the other three wait in the kernel's backlog.
        assert server.stats.connections_total == 3
        assert server.stats.limits == {"max_pending": 1}
        gate.release.set()
        replies = [recv_until(client) for client in clients]
        for client in clients:
            client.close()
    assert [r.split(b" ")[-1] for r in replies] == [b"%d\n" % i for i in range(6)]
    assert server.stats.connections_total == 6


def _counting(name: str) -> Any:
    """The server class ``name``, whose verify_request() counts the connections it sees."""

    class Counting(getattr(servekit, name)):  # type: ignore[misc]
        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            self._verified = threading.Condition()
            self.verified = 0

        def verify_request(self, request: Any, client_address: Any) -> bool:
            with self._verified:
                self.verified += 1
                self._verified.notify_all()
            return True

        def wait_verified(self, count: int) -> bool:
            with self._verified:
                return self._verified.wait_for(lambda: self.verified >= count, WAIT)

    return Counting


def test_stats_count_connections_requests_errors_and_bytes() -> None:
    class Mixed(servekit.StreamRequestHandler):
        def handle(self) -> None:
            line = self.rfile.readline()
            if line == b"fail\n":
                raise RuntimeError("asked to fail")
            self.wfile.write(line * 2)

    with serving(servekit.ThreadPoolTCPServer(LOCAL, Mixed)) as server:
        for line in (b"one\n", b"two\n", b"fail\n"):
            with connect(server.server_address) as client:
                client.sendall(line)
                recv_until(client)
    stats = server.stats  # after server_close(): every connection is closed and counted
    assert stats.connections_open == 0
    assert stats.connections_total == 3
    assert stats.requests == 3
    assert stats.errors == 1
    assert stats.bytes_in == len(b"one\ntwo\nfail\n")
    assert stats.bytes_out == len(b"one\none\ntwo\ntwo\n")
    assert "errors=1" in stats.summary()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_errors_are_counted_when_children_are_reaped() -> None:
    class Fails(servekit.BaseRequestHandler):
        def handle(self) -> None:
            raise RuntimeError("in the child")

    with (
        serving(servekit.ForkingTCPServer(LOCAL, Fails)) as server,
        connect(server.server_address) as client,
    ):
        assert client.recv(10) == b""
    assert server.stats.errors == 1


def test_udp_stats_count_datagrams() -> None:
    class Echo(servekit.DatagramRequestHandler):
        def handle(self) -> None:
            self.wfile.write(self.rfile.read())

    with (
        serving(servekit.ThreadPoolUDPServer(LOCAL, Echo)) as server,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client,
    ):
        client.settimeout(WAIT)
        for _ in range(3):
            client.sendto(b"12345", server.server_address)
            assert client.recv(100) == b"12345"
    assert server.stats.requests == 3
    assert server.stats.bytes_in == 15
    assert server.stats.bytes_out == 15


def test_pool_keeps_its_threads_when_a_request_escapes_error_handling() -> None:
    """A handle_error() that re-raises, or a SystemExit, must not cost the pool a thread."""

    class Quits(servekit.StreamRequestHandler):
        def handle(self) -> None:
            line = self.rfile.readline()
            if line == b"quit\n":
                raise SystemExit(1)
            self.wfile.write(line)

    class One(servekit.ThreadPoolTCPServer):
        max_workers = 1

    with serving(One(LOCAL, Quits)) as server:
        for _ in range(3):
            with connect(server.server_address) as client:
                client.sendall(b"quit\n")
                assert client.recv(10) == b""
        with connect(server.server_address) as client:
            client.sendall(b"alive\n")
            assert recv_until(client) == b"alive\n"


def test_start_then_stop_at_once_never_races() -> None:
    """shutdown() right after starting the loop's thread: the loop never runs on a closed socket."""
    failures: list[BaseException] = []
    old_hook = threading.excepthook
    threading.excepthook = lambda args: failures.append(args.exc_value)  # type: ignore[assignment,misc,return-value]
    try:
        for _ in range(200):
            server = servekit.TCPServer(LOCAL, servekit.BaseRequestHandler)
            loop = threading.Thread(target=server.serve_forever)
            loop.start()
            server.shutdown()
            server.server_close()
            loop.join(WAIT)
            assert not loop.is_alive()
    finally:
        threading.excepthook = old_hook
    assert failures == []


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forking_at_max_children_still_stops_promptly() -> None:
    class Waits(servekit.BaseRequestHandler):
        def handle(self) -> None:
            self.request.recv(10)  # until the test says

    server = type("One", (_counting("ForkingTCPServer"),), {"max_children": 1})(LOCAL, Waits)
    loop = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01})
    loop.start()
    with connect(server.server_address) as client:
        assert server.wait_verified(1)
        stopper = threading.Thread(target=server.shutdown)
        stopper.start()
        stopper.join(WAIT)
        # The stdlib's loop sits in waitpid() until the child exits.
        assert not stopper.is_alive(), "shutdown() waited for a child"
        client.sendall(b"go")
    loop.join(WAIT)
    server.server_close()
    assert not server.active_children


def slow_or_echo(gate: Gate) -> type[servekit.StreamRequestHandler]:
    """Lines "slow" wait at the gate, as a slow client holds its thread; others echo."""

    class SlowOrEcho(servekit.StreamRequestHandler):
        def handle(self) -> None:
            for line in self.rfile:
                if line == b"slow\n":
                    gate.check_in()
                self.wfile.write(line)

    return SlowOrEcho


def test_pool_grows_past_its_workers_when_slow_clients_hold_them(
    monkeypatch: pytest.MonkeyPatch, servekit_log: LogWatcher
) -> None:
    """Every warm worker held by a slow client: a new client is still answered at
    once, on an extra thread; once the slow ones go, the extras leave."""
    monkeypatch.setattr(servekit._pool, "EXTRA_IDLE", 0.05)  # the extras' idle clock
    gate = Gate()

    class Small(servekit.ThreadPoolTCPServer):
        max_workers = 4

    with serving(Small(LOCAL, slow_or_echo(gate))) as server:
        slow = [connect(server.server_address) for _ in range(12)]
        try:
            for client in slow:
                client.sendall(b"slow\n")
            assert gate.wait_started(12)  # 12 held at once: 8 on extra threads
            with connect(server.server_address) as ordinary:
                ordinary.sendall(b"hi\n")
                assert recv_until(ordinary) == b"hi\n"
            assert server._pool.threads >= 13  # a wake-up may have started one more
            assert servekit_log.wait_for("all 4 warm workers busy; starting extra threads")
        finally:
            gate.release.set()
        for client in slow:
            assert recv_until(client) == b"slow\n"
            client.close()
        assert servekit_log.wait_for("back to 4 warm workers")
        assert server._pool.threads == 4
        # and the warm ones serve on
        with connect(server.server_address) as again:
            again.sendall(b"again\n")
            assert recv_until(again) == b"again\n"


def test_pool_grows_no_further_than_max_connections() -> None:
    gate = Gate()

    class Bounded(servekit.ThreadPoolTCPServer):
        max_workers = 2
        max_connections = 5

    with serving(Bounded(LOCAL, slow_or_echo(gate))) as server:
        slow = [connect(server.server_address) for _ in range(7)]
        try:
            for client in slow:
                client.sendall(b"slow\n")
            assert gate.wait_started(5)
            assert server.stats.connections_open == 5  # the other two wait in the backlog
            assert server._pool.threads == 5
        finally:
            gate.release.set()
        for client in slow:
            assert recv_until(client) == b"slow\n"
            client.close()


def test_datagram_pool_does_not_grow() -> None:
    assert (
        servekit.ThreadPoolUDPServer._thread_ceiling(
            servekit.ThreadPoolUDPServer(LOCAL, servekit.DatagramRequestHandler)
        )
        == servekit.ThreadPoolUDPServer.max_workers
    )


def test_pool_backlog_holds_clients_that_connect_before_they_send() -> None:
    """The pool stops accepting while full and leans on the kernel's backlog: with
    the stdlib's 5, connects past it sat in SYN retries for seconds."""
    assert servekit.ThreadPoolTCPServer.request_queue_size >= socket.SOMAXCONN

    class Full(servekit.ThreadPoolTCPServer):
        max_workers = 4
        max_threads = 4
        max_pending = 4

    with serving(Full(LOCAL, slow_or_echo(Gate()))) as server:
        clients = []
        for _ in range(40):  # all connect first; each connect must complete at once
            client = socket.socket()
            client.settimeout(0.5)  # loopback: a connect the backlog takes is instant
            client.connect(server.server_address)
            client.settimeout(WAIT)
            clients.append(client)
        for i, client in enumerate(clients):
            client.sendall(b"%d\n" % i)
        for i, client in enumerate(clients):
            assert recv_until(client) == b"%d\n" % i
            client.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_gets_its_signals_at_once() -> None:
    """The loop defers Python signal handlers while it hands a request off; the child
    forked for it must not inherit that: a handler installed before serve_forever()
    runs in the child when its signal comes."""

    class Timeout(Exception):
        pass

    def on_alarm(signum: int, frame: object) -> None:
        raise Timeout

    class Alarmed(servekit.StreamRequestHandler):
        def handle(self) -> None:
            signal.setitimer(signal.ITIMER_REAL, 0.05)
            try:
                threading.Event().wait(WAIT)  # interrupted by the alarm, or not
                self.wfile.write(b"no alarm\n")
            except Timeout:
                self.wfile.write(b"alarm fired\n")

    replies: list[bytes] = []

    def client() -> None:
        try:
            with connect(server.server_address) as sock:
                sock.sendall(b"x\n")
                replies.append(recv_until(sock))
        finally:
            server.shutdown()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    try:
        with servekit.ForkingTCPServer(LOCAL, Alarmed) as server:
            talker = threading.Thread(target=client)
            talker.start()
            server.serve_forever(poll_interval=0.05)  # in the main thread: the guard is on
            talker.join(WAIT)
    finally:
        signal.signal(signal.SIGALRM, previous)
    assert replies == [b"alarm fired\n"]


# -- a Ctrl-C during the stop -------------------------------------------------


@contextlib.contextmanager
def _default_ctrl_c() -> Iterator[None]:
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _ctrl_c_in_another_thread(
    when: threading.Event, answered: threading.Event, give_up: Callable[[], object]
) -> None:
    """SIGINT delivered to this thread, as the kernel may deliver a Ctrl-C to any
    thread: CPython notes it for the main thread, but wakes no wait there. If the
    main thread does not answer within WAIT, ``give_up()`` ends what it waits for."""
    when.wait(WAIT)
    signal.pthread_kill(threading.get_ident(), signal.SIGINT)
    if not answered.wait(WAIT):
        give_up()


def test_a_ctrl_c_no_wait_woke_for_still_interrupts_the_drain() -> None:
    """The drain waits in slices in the main thread, so that a signal that woke
    none of its waits (sent to another thread, or just before the wait blocked)
    still interrupts it: before, a second Ctrl-C at a 600 s drain was seen at its end."""
    waiting, answered, gave_up = threading.Event(), threading.Event(), threading.Event()

    def wait(timeout: float | None) -> bool:  # requests that never finish
        waiting.set()
        gave_up.wait(timeout)
        return False

    server = SimpleNamespace(shutdown_timeout=3600, _cut_late_requests=lambda: None)
    interrupter = threading.Thread(
        target=_ctrl_c_in_another_thread, args=(waiting, answered, gave_up.set)
    )
    with _default_ctrl_c():
        interrupter.start()
        try:
            with pytest.raises(KeyboardInterrupt):
                _drain.drain(server, wait)
            answered.set()
            assert not gave_up.is_set(), "the interrupt came only when the wait gave up"
        finally:
            answered.set()
            interrupter.join(WAIT)


def test_a_ctrl_c_during_the_drain_loses_no_request_thread(servekit_log: LogWatcher) -> None:
    """A KeyboardInterrupt inside the threads model's drain leaves its requests
    counted: the next server_close() (shutdown_timeout 0, as a second Ctrl-C
    sets) cuts the connection and waits for the thread. (On CPython before 3.13
    one landing inside Thread.join() marked the running thread stopped; nothing
    was cut, and the handler outlived the stop.)"""
    reading = threading.Event()

    class Reader(servekit.StreamRequestHandler):
        def handle(self) -> None:
            reading.set()
            self.wfile.write(self.rfile.readline())  # until the client sends, or a cut

    server = servekit.ThreadingTCPServer(LOCAL, Reader)
    server.shutdown_timeout = 3600
    loop = threading.Thread(target=server.serve_forever, daemon=True)
    loop.start()
    with connect(server.server_address) as client:
        assert reading.wait(WAIT)
        server.shutdown()
        loop.join(WAIT)
        threads = server._threads
        draining, answered = threading.Event(), threading.Event()
        join = threads.join

        def noted_join(timeout: float | None = None) -> bool:
            draining.set()
            return join(timeout)

        threads.join = noted_join  # type: ignore[method-assign]
        interrupter = threading.Thread(
            target=_ctrl_c_in_another_thread,
            args=(draining, answered, lambda: client.shutdown(socket.SHUT_WR)),
        )
        with _default_ctrl_c():
            interrupter.start()
            try:
                with pytest.raises(KeyboardInterrupt):
                    server.server_close()
            finally:
                answered.set()
                interrupter.join(WAIT)
        assert threads, "the request's thread was forgotten by the interrupted drain"
        server.shutdown_timeout = 0
        server.server_close()
        assert servekit_log.wait_for("cut 1 connection(s)")
        assert client.recv(100) == b""  # cut: the handler's read ended, it wrote nothing
    assert not threads
