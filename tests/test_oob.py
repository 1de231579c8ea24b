"""TCP urgent data (MSG_OOB) and handle_oob, on every model: real sockets on 127.0.0.1.

Each round of a client sends part of a line, one urgent byte, waits for the
server's acknowledgement of it, then sends the rest of the line and waits for
its echo (so the handler's reads have passed the urgent mark before the next
urgent byte comes: TCP keeps one mark, docs/oob.md).
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import servekit
from servekit import _oob
from servekit.factory import make_server
from servekit.testing import no_handler_errors, serving
from tests.conftest import WAIT, connect, recv_until, running

ROOT = Path(__file__).parent.parent

#: The handlers, as source: run here, and written to app.py for servekit serve --workers.
APP = '''
import threading

import servekit
from servekit.aio import AsyncStreamRequestHandler


class Urgent(servekit.StreamRequestHandler):
    """Echo lines; acknowledge each urgent byte; b"!" makes handle_oob raise."""

    def setup(self):
        self.lock = threading.Lock()  # handle_oob writes from the watcher thread
        self.urgent = []
        super().setup()

    def send(self, data):
        with self.lock:
            self.wfile.write(data)

    def handle_oob(self, data):
        self.urgent.append(data)
        if data == b"!":
            raise RuntimeError("handle_oob failed on purpose")
        self.send(b"urgent " + data + b"\\n")

    def handle(self):
        for line in self.rfile:
            if line == b"end\\n":
                self.send(b"end " + b"".join(self.urgent) + b"\\n")
                return
            self.send(b"line " + line)


class AsyncUrgent(AsyncStreamRequestHandler):
    """Urgent on the async engine, with a def hook."""

    async def setup(self):
        self.urgent = []
        await super().setup()

    def handle_oob(self, data):
        self.urgent.append(data)
        if data == b"!":
            raise RuntimeError("handle_oob failed on purpose")
        self.write(b"urgent " + data + b"\\n")

    async def handle(self):
        async for line in self:
            if line == b"end\\n":
                self.write(b"end " + b"".join(self.urgent) + b"\\n")
                return
            self.write(b"line " + line)


class AsyncDefUrgent(AsyncUrgent):
    """The same with an async def hook, which yields to the loop before answering."""

    async def handle_oob(self, data):
        self.urgent.append(data)
        if data == b"!":
            raise RuntimeError("handle_oob failed on purpose")
        await self.drain()
        self.write(b"urgent " + data + b"\\n")
'''

handlers: dict[str, Any] = {}
exec(compile(APP, "app.py", "exec"), handlers)
Urgent, AsyncUrgent, AsyncDefUrgent = (
    handlers["Urgent"], handlers["AsyncUrgent"], handlers["AsyncDefUrgent"],
)  # fmt: skip

#: The urgent bytes each client sends, one per round, in this order.
URGENT = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789"


class Client:
    """One connection, read a line at a time."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def line(self) -> bytes:
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed; unanswered: {self.buffer!r}")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line + b"\n"

    def urgent(self, byte: bytes) -> None:
        assert self.sock.send(byte, socket.MSG_OOB) == 1

    def rounds(self, urgent: bytes = URGENT, raised: Callable[[], object] = list) -> bytes:
        """Every round's line broken by an urgent byte; the lines the server read.
        ``raised`` waits until the hook has raised for b"!", which answers nothing."""
        sent = b""
        for n, byte in enumerate(urgent):
            head, tail = b"line %d of the nor" % n, b"mal stream, %s\n" % (b"x" * n)
            self.sock.sendall(head)
            self.urgent(bytes([byte]))
            if bytes([byte]) == b"!":
                raised()
            else:
                assert self.line() == b"urgent %c\n" % byte
            self.sock.sendall(tail)
            assert self.line() == b"line " + head + tail
            sent += head + tail
        self.sock.sendall(b"end\n")
        return sent

    def end(self, urgent: bytes = URGENT) -> None:
        assert self.line() == b"end " + urgent + b"\n"  # each once, in order


def _watcher_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "servekit-oob"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("concurrency", ["sync", "threads", "pool", "fork"])
def test_each_urgent_byte_once_in_order_and_the_stream_intact(concurrency: str) -> None:
    with no_handler_errors(), serving(Urgent, concurrency=concurrency) as served:
        clients = [Client(served.connect()) for _ in range(1 if concurrency == "sync" else 3)]
        for client in clients:
            client.rounds()
            client.end()
            client.sock.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("loop", ["auto", "asyncio"])
@pytest.mark.parametrize("handler", [AsyncUrgent, AsyncDefUrgent], ids=["def", "async-def"])
def test_async_handlers_get_each_urgent_byte_once_in_order(handler: Any, loop: str) -> None:
    server = make_server("127.0.0.1:0", handler, concurrency="async")
    server.loop = loop  # type: ignore[union-attr]
    assert server.event_loop() == "asyncio"  # type: ignore[union-attr]  # even with uvloop
    with no_handler_errors(), serving(server) as served:
        clients = [Client(served.connect()) for _ in range(3)]
        for client in clients:
            client.rounds()
        for client in clients:
            client.end()
            client.sock.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("concurrency", ["threads", "async"])
def test_urgent_byte_followed_at_once_by_data_is_taken_first(concurrency: str) -> None:
    """No wait between the urgent byte and the rest of the line: the handler's reads
    take the urgent byte before they pass its mark (asyncio's loop: uvloop reads in C)."""
    handler = AsyncUrgent if concurrency == "async" else Urgent
    server = make_server("127.0.0.1:0", handler, concurrency=concurrency)  # loop "auto"
    with no_handler_errors(), serving(server) as served, served.connect() as sock:
        client = Client(sock)
        for n, byte in enumerate(URGENT):
            sock.sendall(b"%d before " % n)
            client.urgent(bytes([byte]))
            sock.sendall(b"and after\n")
            answers = {client.line(), client.line()}  # either may come first
            assert answers == {b"urgent %c\n" % byte, b"line %d before and after\n" % n}
        sock.sendall(b"end\n")
        client.end()


def test_uvloop_is_refused_for_a_handler_with_handle_oob(tmp_path: Path) -> None:
    """uvloop reads in C, past an urgent byte's mark: asked for by name, it is refused
    before serving (in Python, and as one line from the command line)."""
    pytest.importorskip("uvloop")
    server = make_server("127.0.0.1:0", AsyncUrgent, concurrency="async")
    server.loop = "uvloop"  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="AsyncUrgent has handle_oob, which needs asyncio's"):
        server.event_loop()  # type: ignore[union-attr]
    server.server_close()
    (tmp_path / "app.py").write_text(APP)
    result = subprocess.run(
        [str(Path(sys.executable).parent / "servekit"), "serve", "app:AsyncUrgent",
         "--concurrency", "async", "--loop", "uvloop", "--listen", "127.0.0.1:0"],
        cwd=tmp_path, capture_output=True, text=True, timeout=WAIT * 3,
    )  # fmt: skip
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith("servekit: error: cannot serve 127.0.0.1:0: AsyncUrgent has handle_oob")


@pytest.mark.timeout(90)
def test_prefork_workers(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(APP)
    script = Path(sys.executable).parent / "servekit"
    with running(
        [str(script), "serve", "app:Urgent", "--listen", "127.0.0.1:0", "--workers", "2",
         "--status-interval", "none"],
        cwd=tmp_path, start_new_session=True, env={"PATH": "/usr/bin:/bin"},
    ) as (proc, log, port):  # fmt: skip
        log.wait_for(r"worker \d+ \(pid \d+\) is serving", 2)
        for _ in range(3):
            with connect(("127.0.0.1", port)) as sock:
                client = Client(sock)
                client.rounds(URGENT[:10])
                client.end(URGENT[:10])
        proc.terminate()
        assert proc.wait(WAIT) == 0
    assert "Traceback" not in "".join(log.lines)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("concurrency", ["threads", "async"])
def test_a_raising_handle_oob_is_logged_and_the_connection_goes_on(concurrency: str) -> None:
    handler = AsyncUrgent if concurrency == "async" else Urgent
    urgent = b"ab!cd"
    with (
        no_handler_errors() as errors,
        serving(handler, concurrency=concurrency) as served,
        served.connect() as sock,
    ):
        errors.expect(RuntimeError, match="handle_oob failed on purpose")
        client = Client(sock)
        client.rounds(urgent, raised=lambda: errors.wait_for(1, timeout=WAIT))
        client.end(urgent)
        (record,) = errors.records
        assert record.name.startswith("servekit")
        assert record.exc_info is not None
        assert str(record.exc_info[1]) == "handle_oob failed on purpose"


@pytest.mark.timeout(60)
def test_a_handler_without_handle_oob_starts_no_watcher() -> None:
    """Run in a child process: this one's watcher may be running from other tests."""
    code = (
        "import threading, servekit\n"
        "from servekit.testing import serving\n"
        "class Echo(servekit.StreamRequestHandler):\n"
        "    def handle(self):\n"
        "        self.wfile.write(self.rfile.readline())\n"
        "for model in ('sync', 'threads', 'pool'):\n"
        "    with serving(Echo, concurrency=model) as served:\n"
        "        assert served.request(b'hi\\n') == b'hi\\n'\n"
        "        names = [t.name for t in threading.enumerate()]\n"
        "        assert 'servekit-oob' not in names, names\n"
        "import servekit._oob as oob\n"
        "assert oob._current is None\n"
        "print('none')\n"
    )
    import subprocess

    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=WAIT * 3,
        cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == "none\n"


def test_no_registration_for_a_handler_without_the_hook() -> None:
    class Plain(servekit.StreamRequestHandler):
        def handle(self) -> None:
            self.wfile.write(self.rfile.readline())

    assert not _oob.wants_oob(Plain)
    with serving(Plain, concurrency="threads") as served:
        assert served.request(b"hi\n") == b"hi\n"
    assert _oob.wants_oob(Urgent)


# -- refused before listening -------------------------------------------------------------


def test_refused_on_tls(tmp_path: Path) -> None:
    ssl = pytest.importorskip("ssl")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with pytest.raises(ValueError, match="TLS has no urgent data"):
        make_server("127.0.0.1:0", Urgent, ssl_context=context)


def test_refused_on_a_datagram_socket() -> None:
    class DatagramUrgent(servekit.DatagramRequestHandler):
        def handle_oob(self, data: bytes) -> None:
            pass

    with pytest.raises(ValueError, match="is a datagram socket: urgent data is TCP's"):
        make_server("udp://127.0.0.1:0", DatagramUrgent)


def test_refused_on_a_unix_socket(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is a Unix socket: urgent data is TCP's"):
        make_server(f"unix:{tmp_path}/s.sock", Urgent)
    assert not (tmp_path / "s.sock").exists()  # refused before binding
    with pytest.raises(ValueError, match="is a Unix socket: urgent data is TCP's"):
        make_server(f"unix:{tmp_path}/s.sock", AsyncUrgent, concurrency="async")


def test_cli_refuses_with_one_line(tmp_path: Path) -> None:
    import subprocess

    (tmp_path / "app.py").write_text(APP)
    done = subprocess.run(
        [str(Path(sys.executable).parent / "servekit"), "serve", "app:Urgent",
         "--listen", "udp://127.0.0.1:0"],
        cwd=tmp_path, capture_output=True, text=True, timeout=WAIT,
        env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert re.search(r"has handle_oob, but .* datagram socket: urgent data is TCP's", lines[0])


def test_a_watched_connection_closes_when_the_handler_closes_it() -> None:
    """The watcher's dup must not keep a connection open after the handler's end."""
    with serving(AsyncUrgent, concurrency="async") as served, served.connect() as sock:
        sock.sendall(b"end\n")
        assert recv_until(sock) == b"end \n"
        assert sock.recv(1) == b""  # the server closed: the dup did not hold it
