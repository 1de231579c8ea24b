"""servekit.testing: serving(), run_handler(), no_handler_errors() and the pytest plugin,
on the bundled examples and on the edge cases (an exception in the block, a handler that
errors, one that never ends, Unix sockets, async); and docs/testing.md's examples, run."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
from examples.chat import Chat
from examples.echo import AsyncDatagramEcho, AsyncLineEcho, DatagramEcho, LineEcho
from examples.kvstore import KeyValue
from examples.syslog import Collector

import servekit
from servekit.addresses import parse_address
from servekit.aio import AsyncServerMixIn, AsyncStreamRequestHandler
from servekit.testing import (
    HandlerTimeout,
    ServerDidNotStop,
    UnexpectedHandlerError,
    no_handler_errors,
    run_handler,
    serving,
)
from servekit.testing import _serving as serving_module
from tests.conftest import WAIT, recv_until

ROOT = Path(__file__).parent.parent


class Seen:
    """A handler records its server here, for the test to look at."""

    server: Any = None


class SeeServer(servekit.StreamRequestHandler):
    def handle(self) -> None:
        Seen.server = self.server


class SeeServerDatagram(servekit.DatagramRequestHandler):
    def handle(self) -> None:
        Seen.server = self.server


class AsyncSeeServer(AsyncStreamRequestHandler):
    async def handle(self) -> None:
        Seen.server = self.server


class Fails(servekit.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(b"before\n")
        raise ValueError("handler bug " + self.rfile.readline().strip().decode())


class AsyncFails(AsyncStreamRequestHandler):
    async def handle(self) -> None:
        self.write(b"before\n")
        raise ValueError("async handler bug")


class Silent(servekit.StreamRequestHandler):
    def handle(self) -> None:
        self.rfile.read()


class Endless(servekit.StreamRequestHandler):
    def handle(self) -> None:
        while True:
            self.wfile.write(b"x" * 65536)


class AsyncAsleep(AsyncStreamRequestHandler):
    async def handle(self) -> None:
        self.write(b"going to sleep\n")
        await self.drain()
        await asyncio.Event().wait()


class Blocked(servekit.StreamRequestHandler):
    """Says it is there, then waits for the client's line, which the test never sends."""

    def handle(self) -> None:
        self.wfile.write(b"in\n")
        self.wfile.write(self.rfile.readline())


class Logged(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.seen = threading.Event()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
        self.seen.set()


@pytest.fixture
def syslog_lines() -> Any:
    logged = Logged()
    logger = logging.getLogger("syslog")
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(logged)
    yield logged
    logger.removeHandler(logged)
    logger.setLevel(old_level)


# -- serving() on the examples -----------------------------------------------------


def test_serving_a_handler_on_a_free_port() -> None:
    with serving(LineEcho) as running:
        server = running.server
        assert isinstance(server, servekit.ThreadPoolTCPServer)
        assert running.address == f"tcp://127.0.0.1:{running.port}"
        assert parse_address(running.address).address == (running.host, running.port)
        assert running.server_address == server.server_address == ("127.0.0.1", running.port)
        assert running.request(b"one\ntwo\n") == b"one\ntwo\n"
        with socket.create_connection(running.server_address, timeout=WAIT) as sock:
            sock.sendall(b"three\n")
            assert recv_until(sock) == b"three\n"
    assert server.socket.fileno() == -1  # closed
    assert not [t for t in threading.enumerate() if t.name.startswith("servekit.testing")]


def test_serving_an_async_handler() -> None:
    with serving(AsyncLineEcho) as running:
        assert isinstance(running.server, AsyncServerMixIn)
        assert running.request(b"hello\n") == b"hello\n"


def test_serving_kvstore() -> None:
    with serving(KeyValue) as running, running.connect() as sock:
        sock.sendall(b"SET colour blue\n")
        assert recv_until(sock) == b"OK\n"
        sock.sendall(b"GET colour\n")
        assert recv_until(sock) == b"VALUE blue\n"


def test_serving_the_syslog_collector_over_udp(syslog_lines: Logged) -> None:
    with serving(Collector) as running, running.connect() as sock:
        assert running.address.startswith("udp://127.0.0.1:")
        sock.send(b"<13>1 2024-01-02T03:04:05Z host app 42 - - disk almost full")
        assert syslog_lines.seen.wait(WAIT)
    assert "user.notice" in syslog_lines.messages[0]
    assert "disk almost full" in syslog_lines.messages[0]


def test_serving_the_chat_room() -> None:
    with serving(Chat) as running, running.connect() as alice:
        assert recv_until(alice).startswith(b"welcome")
        with running.connect() as bob:
            assert recv_until(bob).startswith(b"welcome")
            assert recv_until(alice).endswith(b"joined\n")
            bob.sendall(b"hi alice\n")
            assert recv_until(alice).endswith(b": hi alice\n")


@pytest.mark.parametrize(
    ("handler", "kind"),
    [
        (LineEcho, "unix:"),
        (AsyncLineEcho, "unix:"),
        (DatagramEcho, "unix-dgram:"),
        (AsyncDatagramEcho, "unix-dgram:"),
    ],
)
def test_serving_on_a_unix_socket_in_a_temporary_directory(handler: Any, kind: str) -> None:
    with serving(handler, "unix:") as running:
        assert running.family == socket.AF_UNIX
        assert running.address.startswith(kind)
        path = Path(running.server_address)
        assert path.is_socket()
        assert running.request(b"ping\n") == b"ping\n"
    assert not path.parent.exists()


def test_serving_a_server_made_already() -> None:
    mine = servekit.ThreadingUDPServer(("127.0.0.1", 0), DatagramEcho)
    with serving(mine) as running:
        assert running.server is mine
        assert running.request(b"dgram") == b"dgram"
    with (
        servekit.TCPServer(("127.0.0.1", 0), LineEcho) as made,
        pytest.raises(TypeError, match="made already"),
        serving(made, "127.0.0.1:0"),
    ):
        pass


def test_serving_with_make_server_options() -> None:
    with serving(LineEcho, concurrency="threads", max_line_length=8) as running:
        assert isinstance(running.server, servekit.ThreadingTCPServer)
        assert running.request(b"short\n" + b"x" * 20 + b"\n") == b"short\n"
        assert running.server.stats.limits == {"max_line_length": 1}


# -- serving(): stopping ----------------------------------------------------------


def test_an_exception_in_the_block_stops_at_once() -> None:
    """A connection left open holds its handler in a read; make_server's
    shutdown_timeout is 25 s, but a failed block cuts it at once."""
    clients: list[socket.socket] = []

    def failing_test() -> None:
        with serving(Blocked) as running:
            clients.append(running.connect())
            assert recv_until(clients[0]) == b"in\n"
            raise RuntimeError("the test failed")

    began = time.monotonic()
    with pytest.raises(RuntimeError, match="the test failed"):
        failing_test()
    assert time.monotonic() - began < 5
    clients[0].close()


def test_a_stop_past_stop_timeout_cuts_the_connections() -> None:
    server = servekit.ThreadingTCPServer(("127.0.0.1", 0), Blocked)
    assert server.shutdown_timeout is None  # the stdlib's: wait for ever
    with serving(server, stop_timeout=0.2) as running:
        sock = running.connect()
        assert recv_until(sock) == b"in\n"  # the handler has it, and waits for a line
    assert recv_until(sock) == b""  # cut
    sock.close()
    assert server.stats.requests == 1


def test_a_server_that_does_not_stop_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serving_module, "_CUT_GRACE", 0.1)
    release = threading.Event()

    class Stuck(servekit.StreamRequestHandler):
        def handle(self) -> None:
            self.wfile.write(b"in\n")
            release.wait(WAIT)  # no cut reaches this

    clients: list[socket.socket] = []

    def stuck() -> None:
        with serving(servekit.TCPServer(("127.0.0.1", 0), Stuck), stop_timeout=0.1) as srv:
            clients.append(srv.connect())
            assert recv_until(clients[0]) == b"in\n"

    try:
        with pytest.raises(ServerDidNotStop, match="a handler is stuck"):
            stuck()
    finally:
        release.set()
        for client in clients:
            client.close()


def test_serve_forever_raising_is_raised_at_the_end() -> None:
    broke = threading.Event()

    class Broken(servekit.TCPServer):
        def service_actions(self) -> None:
            broke.set()
            raise OSError("the loop broke")

    with (
        pytest.raises(OSError, match="the loop broke"),
        serving(Broken(("127.0.0.1", 0), LineEcho), poll_interval=0.01),
    ):
        assert broke.wait(WAIT)


# -- run_handler() --------------------------------------------------------------------


def test_run_handler_on_the_examples(syslog_lines: Logged) -> None:
    assert run_handler(LineEcho, b"a\nb\n") == b"a\nb\n"
    assert run_handler(AsyncLineEcho, b"a\nb\n") == b"a\nb\n"
    assert run_handler(DatagramEcho, b"dgram") == b"dgram"
    assert run_handler(AsyncDatagramEcho, b"dgram") == b"dgram"
    assert run_handler(KeyValue, b"SET k v\nGET k\nDEL k\nGET k\n") == (
        b"OK\nVALUE v\nOK\nNOT_FOUND\n"
    )
    assert run_handler(Collector, b"<11>1 - - - - - - oops") == b""  # logs, replies nothing
    assert "user.err" in syslog_lines.messages[-1]
    welcome = run_handler(Chat, b"anyone?\n", client_address=("192.0.2.7", 4000))
    assert welcome == b"welcome, 192.0.2.7:4000; 0 other(s) here\n"


def test_run_handler_a_big_exchange_both_ways() -> None:
    data = b"".join(b"line %d\n" % i for i in range(200_000))  # megabytes, both ways
    assert run_handler(LineEcho, data) == data
    assert run_handler(AsyncLineEcho, data) == data


@pytest.mark.parametrize(
    ("handler", "address", "expected"),
    [
        (SeeServer, "127.0.0.1:0", None),
        (SeeServer, "127.0.0.1:0", {"concurrency": "threads", "idle_timeout": 3}),
        (SeeServerDatagram, "udp://127.0.0.1:0", {"max_packet_size": 512}),
        (AsyncSeeServer, "127.0.0.1:0", {"concurrency": "async", "read_timeout": None}),
    ],
)
def test_run_handler_server_is_what_make_server_makes(
    handler: Any, address: str, expected: dict[str, Any] | None
) -> None:
    options = expected or {}
    Seen.server = None
    run_handler(handler, b"x\n", **options)
    seen = Seen.server
    with servekit.make_server(address, handler, **options) as made:
        assert type(seen) is type(made)
        names = [
            "config", "shutdown_timeout", "max_workers", "max_pending", "max_packet_size",
            "ssl_context", "handshake_timeout", "proxy_protocol", "trusted_proxies",
            "max_connections", "idle_timeout", "read_timeout", "max_line_length",
            "address_family", "socket_type",
        ]  # fmt: skip
        for name in names:
            assert getattr(seen, name, None) == getattr(made, name, None), name
    assert seen.socket.fileno() == -1  # closed after the request; never bound
    assert seen.stats.requests == 1


def test_run_handler_trips_limits_as_in_production() -> None:
    Seen.server = None

    class Echo(LineEcho):
        def setup(self) -> None:
            Seen.server = self.server
            super().setup()

    assert run_handler(Echo, b"ok\n" + b"x" * 100 + b"\n", max_line_length=10) == b"ok\n"
    assert Seen.server.stats.limits == {"max_line_length": 1}
    assert Seen.server.stats.errors == 0
    assert run_handler(AsyncLineEcho, b"ok\n" + b"x" * 100 + b"\n", max_line_length=10) == b"ok\n"


def test_run_handler_drops_a_datagram_over_max_packet_size() -> None:
    assert run_handler(DatagramEcho, b"x" * 100, max_packet_size=50) == b""
    assert run_handler(AsyncDatagramEcho, b"x" * 50, max_packet_size=50) == b"x" * 50


def test_run_handler_raises_what_the_handler_raised() -> None:
    with pytest.raises(ValueError, match="handler bug now"):
        run_handler(Fails, b"now\n")
    with pytest.raises(ValueError, match="async handler bug"):
        run_handler(AsyncFails)


def test_run_handler_or_handles_it_as_the_server_would() -> None:
    with (
        pytest.raises(UnexpectedHandlerError, match=r"(?s)Traceback.*handler bug later"),
        no_handler_errors(),
    ):
        assert run_handler(Fails, b"later\n", raise_errors=False) == b"before\n"


def test_run_handler_that_never_writes() -> None:
    assert run_handler(Silent, b"anything at all") == b""
    assert run_handler(Silent) == b""


def test_run_handler_that_never_ends_is_cut() -> None:
    with pytest.raises(HandlerTimeout) as sync_cut:
        run_handler(Endless, timeout=0.3, max_output=1_000_000)
    assert sync_cut.value.output.startswith(b"xxxx")
    assert len(sync_cut.value.output) < 1_000_000 + 65536  # it stopped reading there
    with pytest.raises(HandlerTimeout) as async_cut:
        run_handler(AsyncAsleep, timeout=0.3)
    assert async_cut.value.output == b"going to sleep\n"


def test_run_handler_on_a_unix_connection() -> None:
    Seen.server = None
    assert run_handler(SeeServer, b"", client_address="") == b""
    assert type(Seen.server) is servekit.ThreadPoolUnixStreamServer
    assert run_handler(AsyncLineEcho, b"unix\n", client_address="") == b"unix\n"


def test_run_handler_from_inside_an_event_loop() -> None:
    async def test() -> bytes:
        return run_handler(AsyncLineEcho, b"inside\n")

    assert asyncio.run(test()) == b"inside\n"


def test_run_handler_with_a_server_of_my_own() -> None:
    Seen.server = None
    with servekit.make_server("127.0.0.1:0", LineEcho, idle_timeout=7) as mine:
        assert run_handler(SeeServer, b"", server=mine) == b""
        assert Seen.server is mine
        assert mine.RequestHandlerClass is LineEcho  # as it was
        with pytest.raises(TypeError, match="options"):
            run_handler(LineEcho, b"", server=mine, idle_timeout=1)


def test_run_handler_refuses_tls_and_misfits() -> None:
    with pytest.raises(ValueError, match="TLS"):
        run_handler(LineEcho, b"", certfile="/nonexistent.pem")
    with pytest.raises(TypeError, match="sync handler"):
        run_handler(LineEcho, b"", concurrency="async")


# -- no_handler_errors() ---------------------------------------------------------------


def test_no_handler_errors_fails_on_a_handler_error_with_its_traceback() -> None:
    with (
        pytest.raises(UnexpectedHandlerError) as failed,
        no_handler_errors(),
        serving(Fails) as running,
    ):
        assert running.request(b"here\n") == b"before\n"
    text = str(failed.value)
    assert "1 unexpected handler error" in text
    assert "Exception occurred during processing of request" in text
    assert re.search(r"(?s)Traceback.*ValueError: handler bug here", text)


def test_no_handler_errors_on_the_async_engine() -> None:
    with (
        pytest.raises(UnexpectedHandlerError, match="async handler bug"),
        no_handler_errors(),
        serving(AsyncFails) as running,
    ):
        assert running.request(b"") == b"before\n"


def test_expected_handler_errors_pass() -> None:
    with no_handler_errors(ValueError) as errors, serving(Fails) as running:
        running.request(b"1\n")
        errors.expect(KeyError)
    assert [str(e) for e in errors.exceptions] == ["handler bug 1"]
    with no_handler_errors() as errors, serving(Fails) as running:
        errors.expect(ValueError, match="bug 2$")
        running.request(b"2\n")
        assert len(errors.wait_for(1)) == 1

    def another_error() -> None:
        with no_handler_errors() as errors, serving(Fails) as running:
            errors.expect(ValueError, match="bug 2$")
            running.request(b"3\n")

    with pytest.raises(UnexpectedHandlerError):
        another_error()


def test_an_exception_in_the_block_carries_the_handler_errors() -> None:
    with (
        pytest.raises(AssertionError) as failed,
        no_handler_errors(),
        serving(Fails) as running,
    ):
        assert running.request(b"x\n") == b"something else"
    assert not isinstance(failed.value, UnexpectedHandlerError)
    assert "handler bug x" in "".join(getattr(failed.value, "__notes__", []))


def test_limits_and_clients_gone_are_not_handler_errors() -> None:
    with no_handler_errors() as errors, serving(LineEcho, max_line_length=4) as running:
        assert running.request(b"toolong\n") == b""
    assert errors.records == []


# -- the pytest plugin and docs/testing.md ----------------------------------------------


def _pytest(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """pytest in a new process, with servekit's plugin loaded from its module whether
    or not this environment has the entry point installed."""
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src")])}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:servekit", "-p",
         "servekit.testing.pytest_plugin", "-p", "no:cacheprovider", "-q", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _doc_examples() -> list[str]:
    text = (ROOT / "docs" / "testing.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, re.DOTALL)


@pytest.mark.timeout(150)
def test_the_guide_examples_pass_as_written(tmp_path: Path) -> None:
    examples = _doc_examples()
    assert len(examples) >= 6
    for i, code in enumerate(examples):
        (tmp_path / f"test_doc_{i}.py").write_text(code)
    done = _pytest(str(tmp_path), "-W", "error::pytest.PytestUnraisableExceptionWarning",
                   cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    count = sum(len(re.findall(r"^def test_", code, re.MULTILINE)) for code in examples)
    assert f"{count} passed" in done.stdout


@pytest.mark.timeout(150)
def test_the_plugin_fails_a_test_on_a_handler_error(tmp_path: Path) -> None:
    (tmp_path / "test_plugin.py").write_text(
        "import servekit\n"
        "\n"
        "class Bad(servekit.StreamRequestHandler):\n"
        "    def handle(self):\n"
        "        raise RuntimeError('unnoticed by the client')\n"
        "\n"
        "def test_bad(servekit_serving):\n"
        "    assert servekit_serving(Bad).request(b'x') == b''\n"
        "\n"
        "def test_expected(servekit_serving, servekit_handler_errors):\n"
        "    servekit_handler_errors.expect(RuntimeError)\n"
        "    assert servekit_serving(Bad).request(b'x') == b''\n"
    )
    done = _pytest(str(tmp_path), "-rE", cwd=tmp_path)
    assert done.returncode == 1, done.stdout[-4000:]
    assert "2 passed, 1 error" in done.stdout  # test_bad passed, and failed at teardown
    assert "ERROR at teardown of test_bad" in done.stdout
    assert "RuntimeError: unnoticed by the client" in done.stdout


def test_the_plugin_is_registered_and_imports_pytest_alone() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["pytest11"] == {"servekit": "servekit.testing.pytest_plugin"}
    assert "pytest" not in " ".join(project["dependencies"])
    code = (
        "import sys, servekit, servekit.testing; "
        "assert 'pytest' not in sys.modules and '_pytest' not in sys.modules"
    )
    env = os.environ | {"PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 0, done.stderr
