"""Hostile input to an RPC server: each is answered with GARBAGE_ARGS, an AUTH_ERROR or a
closed connection, and meanwhile another client's NULL calls keep being answered.

The attacks are those that take down or stall rpcgen's C servers: a length claiming 4 GB
(CVE-2017-8779), a 100,000-node list, fragments of nothing, one-byte fragments by the
thousand, a record that never comes whole, more connections than descriptors.
"""

from __future__ import annotations

import resource
import socket
import struct
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import servekit
from servekit.rpc import message, xdr
from servekit.rpc.message import AcceptStat, AuthFlavor, AuthStat, OpaqueAuth
from servekit.rpc.record import encode_record
from tests.conftest import WAIT, LogWatcher, running, serving

sys.path.insert(0, str(Path(__file__).parent.parent))
from examples.rpc import demo

PROG = 0x20000123
LAST = 0x80000000


class Bystander:
    """A client that makes NULL calls on its own connection, over and over, until stopped,
    and counts the answers: the attack beside it must not stop them."""

    def __init__(self, address: Any) -> None:
        self.sock = socket.create_connection(address, timeout=WAIT)
        self.answered = 0
        self.failed: BaseException | None = None
        self._stop = threading.Event()
        self._progress = threading.Condition()
        self._thread = threading.Thread(target=self._run)
        self._thread.start()

    def _run(self) -> None:
        call = encode_record(message.encode_call(1, PROG, 1, 0))
        try:
            while not self._stop.is_set():
                self.sock.sendall(call)
                reply = b""
                while len(reply) < 28:  # a NULL reply: its record mark and 24 bytes
                    chunk = self.sock.recv(65536)
                    if not chunk:
                        raise ConnectionError("the server closed the bystander's connection")
                    reply += chunk
                with self._progress:
                    self.answered += 1
                    self._progress.notify_all()
        except BaseException as exc:
            self.failed = exc

    def answers_more(self) -> bool:
        """True once a NULL call made from now on has been answered."""
        with self._progress:
            now = self.answered
            return (
                self._progress.wait_for(
                    lambda: self.answered > now + 1 or self.failed is not None, WAIT
                )
                and self.failed is None
            )

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(WAIT)
        self.sock.close()


@pytest.fixture(params=["pool", "async"])
def server(request: pytest.FixtureRequest) -> Iterator[Any]:
    made = servekit.make_server(
        "tcp://127.0.0.1:0", demo.DEMO_PROG, concurrency=request.param, read_timeout=0.5
    )
    with serving(made):
        yield made


@pytest.fixture
def bystander(server: Any) -> Iterator[Bystander]:
    watcher = Bystander(server.server_address)
    yield watcher
    watcher.stop()


def _exchange(address: Any, data: bytes) -> bytes:
    """Send ``data`` on a new connection; what comes back before the server closes it."""
    with socket.create_connection(address, timeout=WAIT) as attacker:
        try:
            attacker.sendall(data)
            attacker.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # closed on us already: read why
        received = b""
        try:
            while chunk := attacker.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
        return received


def _reply_status(received: bytes) -> message.Reply:
    assert len(received) > 4, f"no reply: {received!r}"
    return message.parse_reply(received[4:])  # one record, one fragment


def _call(proc: int, args: bytes, **auth: Any) -> bytes:
    return encode_record(message.encode_call(7, PROG, 1, proc, args, **auth))


def test_a_length_claiming_4_gb_is_garbage_args(server: Any, bystander: Bystander) -> None:
    """CVE-2017-8779: ECHO's string claims 0xFFFFFFFF bytes; the server allocates nothing."""
    reply = _reply_status(
        _exchange(server.server_address, _call(2, b"\xff\xff\xff\xff" + bytes(8)))
    )
    assert reply.accept_stat is AcceptStat.GARBAGE_ARGS
    assert bystander.answers_more()


def test_a_100000_node_list_is_garbage_args(server: Any, bystander: Bystander) -> None:
    """rpcgen's C server recurses once per node and crashes on it."""
    head = None
    for value in range(100_000):
        head = demo.node(value, head)
    arg = demo.complex_arg(
        name="", big=0, ubig=0, opt=None, s=demo.shape_default(kind=demo.shape_kind.SHAPE_NONE),
        values=[], blob=b"", fixed4=b"abc", list=head, flag=False, d=0.0, f=0.0,
    )  # fmt: skip
    args = xdr.encode(demo.complex_arg, arg)
    assert len(args) < 1024 * 1024  # within max_record_size: the node cap refuses it
    reply = _reply_status(_exchange(server.server_address, _call(3, args)))
    assert reply.accept_stat is AcceptStat.GARBAGE_ARGS
    assert bystander.answers_more()


@pytest.mark.parametrize(
    ("flavor", "body", "status"),
    [
        (AuthFlavor.AUTH_SYS, b"\0\0\0\1\0\0\0\x40ab", AuthStat.AUTH_BADCRED),  # cut short
        (77, b"", AuthStat.AUTH_REJECTEDCRED),
    ],
)
def test_a_bad_credential_is_auth_error(
    server: Any, bystander: Bystander, flavor: int, body: bytes, status: AuthStat
) -> None:
    received = _exchange(server.server_address, _call(0, b"", cred=OpaqueAuth(flavor, body)))
    assert _reply_status(received).auth_stat is status
    assert bystander.answers_more()


def test_fragments_of_nothing_close_the_connection(
    server: Any, bystander: Bystander, servekit_log: LogWatcher
) -> None:
    assert _exchange(server.server_address, struct.pack(">I", 0) * 1000) == b""
    assert servekit_log.wait_for("closing connection from")
    assert bystander.answers_more()


def test_ten_thousand_one_byte_fragments_are_refused(
    server: Any, bystander: Bystander, servekit_log: LogWatcher
) -> None:
    call = message.encode_call(9, PROG, 1, 0)
    pieces = b"".join(struct.pack(">I", 1) + bytes([byte]) for byte in call[:-1])
    flood = pieces + (struct.pack(">I", 1) + b"\0") * 10_000
    assert _exchange(server.server_address, flood) == b""
    assert servekit_log.wait_for("max_fragments")
    assert server.stats.limits.get("max_fragments") == 1
    assert bystander.answers_more()


def test_a_record_that_never_comes_whole_costs_its_own_connection(
    server: Any, bystander: Bystander, servekit_log: LogWatcher
) -> None:
    """A record mark promising 1,000 bytes, then 8: rpcgen's C server stalls every client."""
    with socket.create_connection(server.server_address, timeout=WAIT) as stalled:
        stalled.sendall(struct.pack(">I", LAST | 1000) + bytes(8))
        assert bystander.answers_more()  # while the stalled record waits
        assert stalled.recv(10) == b""  # then read_timeout cuts it
    assert servekit_log.wait_for("request not complete after 0.5s")


def _few_descriptors() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))


@pytest.mark.timeout(60)
def test_more_idle_connections_than_descriptors(tmp_path: Path) -> None:
    """The server may open 64 files; 100 clients connect and say nothing. It keeps
    accepting what it can, idle_timeout frees the idle ones, and a NULL call gets through."""
    root = Path(__file__).parent.parent
    command = [
        sys.executable, "-m", "servekit", "serve", "examples.rpc.demo:DEMO_PROG",
        "--listen", "tcp://127.0.0.1:0", "--idle-timeout", "1", "--status-interval", "none",
    ]  # fmt: skip
    with running(command, cwd=root, preexec_fn=_few_descriptors) as (proc, log, port):
        idle = []
        for _ in range(100):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=WAIT))
        log.wait_for("cannot take a new request")  # EMFILE: accepting pauses, no spin
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as client:
            client.sendall(encode_record(message.encode_call(5, PROG, 1, 0)))
            assert message.parse_reply(client.recv(65536)[4:]).ok
        for sock in idle:
            sock.close()
        proc.terminate()
        assert proc.wait(WAIT) == 0
