"""An RPC program served on every model, over TCP, UDP and Unix sockets: examples/rpc/demo.py,
called with hand-built messages on real sockets (the C peers' checks are in test_rpc_interop)."""

from __future__ import annotations

import asyncio
import itertools
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import pytest

import servekit
from servekit import rpc
from servekit.rpc import message, xdr
from servekit.rpc.message import AcceptStat, AuthStat, AuthSys, RejectStat
from servekit.rpc.record import CLOSED, NEED_DATA, RecordReader, encode_record
from tests.conftest import WAIT, LogWatcher, running, serving

sys.path.insert(0, str(Path(__file__).parent.parent))
from examples.rpc import demo

PROG = 0x20000123
_xids = itertools.count(1)
Text = Annotated[str, xdr.string()]


class Client:
    """A bare RPC client over a real socket: a call out, the reply back, nothing hidden."""

    def __init__(self, address: Any, *, datagram: bool = False, prog: int = PROG) -> None:
        self.prog = prog
        family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
        kind = socket.SOCK_DGRAM if datagram else socket.SOCK_STREAM
        self.sock = socket.socket(family, kind)
        self.sock.settimeout(WAIT)
        if datagram and family == socket.AF_UNIX:
            self.sock.bind("")  # an address of its own, for the reply
        self.sock.connect(address)
        self.datagram = datagram
        self.reader = RecordReader()

    def send(self, vers: int, proc: int, args: bytes = b"", **auth: Any) -> int:
        xid = next(_xids)
        data = message.encode_call(xid, self.prog, vers, proc, args, **auth)
        self.sock.sendall(data if self.datagram else encode_record(data))
        return xid

    def receive(self) -> message.Reply:
        if self.datagram:
            return message.parse_reply(self.sock.recv(65536))
        while (record := self.reader.next_record()) is NEED_DATA:
            self.reader.receive_data(self.sock.recv(65536))
        assert record is not CLOSED, "the server closed the connection"
        return message.parse_reply(record)

    def call(self, vers: int, proc: int, args: bytes = b"", **auth: Any) -> message.Reply:
        xid = self.send(vers, proc, args, **auth)
        reply = self.receive()
        assert reply.xid == xid
        return reply

    def close(self) -> None:
        # shutdown() first: a child forked while this socket was open holds a copy
        # (the server runs in this process), which close() alone would leave open.
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def _ints(*values: int) -> bytes:
    return b"".join(xdr.encode(xdr.int32, v) for v in values)


COMPLEX = demo.complex_arg(
    name="servekit", big=2**40, ubig=2**64 - 1, opt=42, s=demo.shape_SHAPE_RECT(r=demo.rect(6, 7)),
    values=[1, 2, 3, 4], blob=b"\1" * 10, fixed4=b"\xab\xcd\xef",
    list=demo.node(1, demo.node(2, demo.node(3, None))), flag=True, d=3.14159, f=2.5,
)  # fmt: skip


@pytest.fixture(params=["sync", "threads", "pool", "fork", "async"])
def concurrency(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=["tcp", "udp"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def demo_server(concurrency: str, transport: str) -> Iterator[Any]:
    server = servekit.make_server(
        f"{transport}://127.0.0.1:0", demo.DEMO_PROG, concurrency=concurrency
    )
    with serving(server):
        yield server


def test_the_demo_program_answers_on_every_model(demo_server: Any, transport: str) -> None:
    client = Client(demo_server.server_address, datagram=transport == "udp")
    try:
        assert client.call(1, 0).results == b""
        assert client.call(1, 1, _ints(2, 3)).results == _ints(5)
        assert client.call(2, 1, _ints(2, 3)).results == _ints(1005)
        echo = xdr.encode(xdr.string(), "héllo")
        assert client.call(1, 2, echo).results == echo
        reply = client.call(1, 3, xdr.encode(demo.complex_arg, COMPLEX))
        assert xdr.decode(demo.complex_res, reply.results) == demo.complex_res(
            values_sum=10, opt_present=1, opt_value=42, big_plus_one=2**40 + 1, ubig=2**64 - 1,
            area=42, list_len=3, blob_len=10,
            summary="name=servekit kind=2 flag=1 d=3.142 f=2.500 fixed=abcdef",
        )  # fmt: skip
    finally:
        client.close()


def test_every_refusal_has_its_status(demo_server: Any, transport: str) -> None:
    client = Client(demo_server.server_address, datagram=transport == "udp")
    try:
        assert client.call(3, 0).accept_stat is AcceptStat.PROG_MISMATCH
        assert client.call(3, 0).mismatch == (1, 2)
        assert client.call(1, 9).accept_stat is AcceptStat.PROC_UNAVAIL
        assert client.call(1, 1, _ints(2)).accept_stat is AcceptStat.GARBAGE_ARGS
        assert client.call(1, 1, _ints(2, 3, 4)).accept_stat is AcceptStat.GARBAGE_ARGS
        unknown = message.OpaqueAuth(99)
        denied = client.call(1, 0, cred=unknown)
        assert (denied.reject_stat, denied.auth_stat) == (
            RejectStat.AUTH_ERROR, AuthStat.AUTH_REJECTEDCRED,
        )  # fmt: skip
        cred = AuthSys(stamp=1, machinename="here", uid=1000, gid=1000, gids=[4]).encode()
        assert client.call(1, 1, _ints(1, 1), cred=cred).results == _ints(2)
    finally:
        client.close()


class Checked(rpc.Version, program=PROG + 1, version=1):
    @rpc.procedure(1)
    def WHO(self) -> Text:
        credential = self.credential
        return credential.machinename if isinstance(credential, AuthSys) else "nobody"

    @rpc.procedure(2)
    def FAIL(self) -> None:
        raise RuntimeError("a procedure that fails")


def test_a_procedure_sees_the_credential_and_one_that_raises_gives_system_err(
    concurrency: str, servekit_log: LogWatcher
) -> None:
    server = servekit.make_server(
        "tcp://127.0.0.1:0", rpc.Program(Checked), concurrency=concurrency
    )
    with serving(server):
        client = Client(server.server_address, prog=PROG + 1)
        cred = AuthSys(stamp=1, machinename="caller", uid=0, gid=0).encode()
        assert xdr.decode(xdr.string(), client.call(1, 1, cred=cred).results) == "caller"
        assert xdr.decode(xdr.string(), client.call(1, 1).results) == "nobody"
        assert client.call(1, 2).accept_stat is AcceptStat.SYSTEM_ERR
        assert client.call(1, 1).ok  # the connection serves on
        client.close()
    if concurrency != "fork":  # a child logs in its own process
        assert servekit_log.wait_for("Exception occurred during processing")


def test_calls_sent_together_on_one_connection_are_all_answered(concurrency: str) -> None:
    server = servekit.make_server("tcp://127.0.0.1:0", demo.DEMO_PROG, concurrency=concurrency)
    with serving(server):
        _pipelined(server)


def _pipelined(demo_server: Any) -> None:
    client = Client(demo_server.server_address)
    try:
        xids = [client.send(1, 1, _ints(n, n)) for n in range(20)]
        replies = {reply.xid: reply for reply in (client.receive() for _ in xids)}
        assert {xid: replies[xid].results for xid in xids} == {
            xid: _ints(2 * n) for n, xid in enumerate(xids)
        }
    finally:
        client.close()


class Gate(rpc.Version, program=PROG + 3, version=1):
    """BLOCK waits for RELEASE (on the same connection, so in the same process
    under fork too); ADD answers at once."""

    opened = threading.Event()
    running = threading.Semaphore(0)

    @rpc.procedure(1)
    def ADD(self, a: xdr.Int, b: xdr.Int) -> xdr.Int:
        return a + b

    @rpc.procedure(2)
    def BLOCK(self) -> xdr.Bool:
        Gate.running.release()
        return Gate.opened.wait(WAIT)

    @rpc.procedure(3)
    def RELEASE(self) -> None:
        Gate.opened.set()


@pytest.fixture
def gate() -> Iterator[rpc.Program]:
    Gate.opened = threading.Event()
    Gate.running = threading.Semaphore(0)
    yield rpc.Program(Gate)
    Gate.opened.set()  # whatever happened, no procedure waits on


@pytest.mark.parametrize("concurrency", ["threads", "pool", "fork"])
def test_a_slow_call_holds_up_no_call_after_it_on_its_connection(
    concurrency: str, gate: rpc.Program
) -> None:
    server = servekit.make_server("tcp://127.0.0.1:0", gate, concurrency=concurrency)
    with serving(server):
        client = Client(server.server_address, prog=PROG + 3)
        try:
            blocked = client.send(1, 2)
            added = client.send(1, 1, _ints(2, 3))
            first = client.receive()  # BLOCK still runs
            assert (first.xid, first.results) == (added, _ints(5))
            released = client.send(1, 3)
            replies = {reply.xid: reply.results for reply in (client.receive(), client.receive())}
            assert replies == {blocked: xdr.encode(xdr.boolean, True), released: b""}
        finally:
            client.close()


def test_calls_past_rpc_max_calls_in_flight_wait_for_room(gate: rpc.Program) -> None:
    server = servekit.make_server("tcp://127.0.0.1:0", gate, concurrency="pool")
    server.rpc_max_calls_in_flight = 2
    with serving(server):
        client = Client(server.server_address, prog=PROG + 3)
        try:
            blocked = {client.send(1, 2), client.send(1, 2)}
            added = client.send(1, 1, _ints(2, 3))
            for _ in blocked:
                assert Gate.running.acquire(timeout=WAIT)  # both calls run: the limit
            Gate.opened.set()
            replies = [client.receive() for _ in range(3)]
            # ADD was not read while two calls ran: a reply of theirs came first.
            assert replies[0].xid in blocked
            assert {r.xid for r in replies} == {*blocked, added}
        finally:
            client.close()


def test_calls_on_the_sync_model_are_answered_in_turn(gate: rpc.Program) -> None:
    server = servekit.make_server("tcp://127.0.0.1:0", gate, concurrency="sync")
    with serving(server):
        client = Client(server.server_address, prog=PROG + 3)
        try:
            blocked = client.send(1, 2)
            added = client.send(1, 1, _ints(2, 3))
            assert Gate.running.acquire(timeout=WAIT)
            Gate.opened.set()  # from here: in turn, BLOCK is answered first
            assert [client.receive().xid, client.receive().xid] == [blocked, added]
        finally:
            client.close()


@pytest.mark.parametrize("concurrency", ["pool", "async"])
def test_a_connection_whose_call_runs_past_idle_timeout_is_not_idle(
    concurrency: str, servekit_log: LogWatcher
) -> None:
    """The call takes three idle timeouts (that is its work, not a wait for the test);
    its connection serves on, and is cut for idleness only once it is idle."""

    class Long(rpc.Version, program=PROG + 4, version=1):
        @rpc.procedure(0)
        def PING(self) -> None:
            pass

        @rpc.procedure(1)
        def WORK(self) -> xdr.Int:
            time.sleep(0.9)
            return 1

    class AsyncLong(rpc.Version, program=PROG + 4, version=1):
        @rpc.procedure(0)
        def PING(self) -> None:
            pass

        @rpc.procedure(1)
        async def WORK(self) -> xdr.Int:
            await asyncio.sleep(0.9)
            return 1

    program = rpc.Program(AsyncLong if concurrency == "async" else Long)
    server = servekit.make_server(
        "tcp://127.0.0.1:0", program, concurrency=concurrency, idle_timeout=0.3
    )
    with serving(server):
        client = Client(server.server_address, prog=PROG + 4)
        try:
            assert client.call(1, 1).results == _ints(1)
            assert client.call(1, 0).ok  # the connection was not cut meanwhile
            assert client.sock.recv(10) == b""  # idle now: cut
            assert servekit_log.wait_for("idle for 0.3s")
        finally:
            client.close()


@pytest.mark.parametrize("concurrency", ["pool", "async"])
def test_a_stalled_record_is_cut_by_read_timeout_and_stalls_no_one(
    concurrency: str, servekit_log: LogWatcher
) -> None:
    """A record mark promising 1,000 bytes, then 8: the rpcgen C server stalls every
    client on it; here it costs its own connection, after read_timeout."""
    server = servekit.make_server(
        "tcp://127.0.0.1:0", demo.DEMO_PROG, concurrency=concurrency, read_timeout=0.3
    )
    with serving(server):
        stalled = socket.create_connection(server.server_address, timeout=WAIT)
        stalled.sendall(struct.pack(">I", 0x80000000 | 1000) + bytes(8))
        other = Client(server.server_address)
        assert other.call(1, 0).ok  # at once, beside the stalled one
        assert stalled.recv(10) == b""  # cut: the record was not whole in time
        assert servekit_log.wait_for("request not complete after 0.3s")
        other.close()
        stalled.close()


@pytest.mark.parametrize("concurrency", ["pool", "async"])
def test_a_record_over_max_record_size_is_refused_at_its_header(
    concurrency: str, servekit_log: LogWatcher
) -> None:
    server = servekit.make_server("tcp://127.0.0.1:0", demo.DEMO_PROG, concurrency=concurrency)
    with serving(server):
        with socket.create_connection(server.server_address, timeout=WAIT) as hostile:
            hostile.sendall(struct.pack(">I", 0x80000000 | 0x7FFFFFFF))
            assert hostile.recv(10) == b""
        assert servekit_log.wait_for("max_record_size")
    assert server.stats.limits.get("max_record_size") == 1


def test_unix_stream_and_async_procedures(tmp_path: Path) -> None:
    class Slow(rpc.Version, program=PROG + 2, version=1):
        @rpc.procedure(1)
        async def WAIT_THEN_ADD(self, a: xdr.Int, b: xdr.Int) -> xdr.Int:
            await asyncio.sleep(0.2 if a == 1 else 0)  # the first call finishes last
            return a + b

    path = str(tmp_path / "rpc.sock")
    program = rpc.Program(Slow)
    with pytest.raises(TypeError, match="async def procedures"):
        servekit.make_server(f"unix:{path}", program, concurrency="pool")
    server = servekit.make_server(f"unix:{path}", program, concurrency="async")
    with serving(server):
        client = Client(path, prog=PROG + 2)
        first = client.send(1, 1, _ints(1, 1))
        second = client.send(1, 1, _ints(2, 2))
        replies = [client.receive(), client.receive()]
        assert [r.xid for r in replies] == [second, first]  # answered as they finish
        assert [r.results for r in replies] == [_ints(4), _ints(2)]
        client.close()


@pytest.mark.timeout(60)
def test_servekit_serve_runs_the_demo_as_the_docs_print_it() -> None:
    root = Path(__file__).parent.parent
    command = [
        str(Path(sys.executable).parent / "servekit"), "serve", "examples.rpc.demo:DEMO_PROG",
        "--listen", "tcp://127.0.0.1:0", "--listen", "udp://127.0.0.1:0",
        "--status-interval", "none",
    ]  # fmt: skip
    with running(command, cwd=root, start_new_session=True) as (proc, log, port):
        udp_port = int(log.wait_for(r"listening on udp://127\.0\.0\.1:(\d+)")[0].group(1))
        for address, datagram in ((("127.0.0.1", port), False), (("127.0.0.1", udp_port), True)):
            client = Client(address, datagram=datagram)
            assert client.call(1, 1, _ints(20, 22)).results == _ints(42)
            client.close()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(WAIT) == 0


class Counter(rpc.Version, program=PROG + 3, version=1):
    """Not idempotent: each call that runs adds one."""

    runs = 0

    @rpc.procedure(1)
    def INCREMENT(self) -> xdr.Int:
        type(self).runs += 1
        return type(self).runs


@pytest.mark.parametrize("concurrency", ["sync", "threads", "pool", "async"])
def test_a_retransmitted_udp_call_is_answered_again_not_run_again(concurrency: str) -> None:
    Counter.runs = 0
    server = servekit.make_server(
        "udp://127.0.0.1:0", rpc.Program(Counter), concurrency=concurrency
    )
    with serving(server):
        client = Client(server.server_address, datagram=True, prog=PROG + 3)
        call = message.encode_call(4242, PROG + 3, 1, 1)
        replies = []
        for _ in range(3):  # the first send, and two retransmissions of it
            client.sock.send(call)
            replies.append(client.sock.recv(65536))
        other = client.call(1, 1)  # another xid: a new call
        client.close()
    assert replies[0] == replies[1] == replies[2] == message.success(4242, _ints(1))
    assert xdr.decode(xdr.int32, other.results) == 2
    assert Counter.runs == 2


@pytest.mark.parametrize("concurrency", ["sync", "pool", "async"])
def test_stats_count_calls(concurrency: str) -> None:
    server = servekit.make_server("tcp://127.0.0.1:0", demo.DEMO_PROG, concurrency=concurrency)
    with serving(server):
        client = Client(server.server_address)
        for n in range(5):
            assert client.call(1, 1, _ints(n, n)).ok
        client.close()
    assert server.stats.calls == 5
    assert server.stats.requests == 1  # one connection
    assert "calls=5" in server.stats.summary()
