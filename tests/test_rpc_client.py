"""servekit's RPC client, sync and async, TCP, UDP and Unix, against servekit's server on
real sockets (against the C server: test_rpc_interop)."""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

import servekit
from servekit import rpc
from servekit.rpc import message, xdr
from tests.conftest import WAIT, serving

sys.path.insert(0, str(Path(__file__).parent.parent))
from examples.rpc import demo
from examples.rpc.demo import DEMO_V1, DEMO_V2

ARG = demo.complex_arg(
    name="client", big=-(2**63), ubig=7, opt=None, s=demo.shape_SHAPE_CIRCLE(radius=2),
    values=[5, 6], blob=b"", fixed4=b"\0\1\2", list=None, flag=False, d=-0.5, f=0.25,
)  # fmt: skip


@pytest.fixture(params=["pool", "async"])
def demo_addresses(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """The demo served on TCP, UDP and a Unix stream socket at once."""
    servers = [
        servekit.make_server(address, demo.DEMO_PROG, concurrency=request.param)
        for address in ("tcp://127.0.0.1:0", "udp://127.0.0.1:0", f"unix:{tmp_path}/rpc.sock")
    ]
    with serving(servers[0]), serving(servers[1]), serving(servers[2]):
        tcp, udp, unix = (s.server_address for s in servers)
        yield {
            "tcp": f"tcp://127.0.0.1:{tcp[1]}",
            "udp": f"udp://127.0.0.1:{udp[1]}",
            "unix": f"unix:{unix}",
        }


@pytest.mark.parametrize("transport", ["tcp", "udp", "unix"])
def test_the_sync_client_calls_every_procedure(demo_addresses: Any, transport: str) -> None:
    with rpc.Client(demo_addresses[transport], DEMO_V1, timeout=WAIT) as client:
        assert client.call(DEMO_V1.DEMO_NULL) is None
        assert client.call(DEMO_V1.DEMO_ADD, 2, 3) == 5
        assert client.call(DEMO_V1.DEMO_ADD, 2**31 - 1, 1) == -(2**31)  # C's wrap
        assert client.call(DEMO_V1.DEMO_ECHO, "échos") == "échos"
        result = client.call(DEMO_V1.DEMO_COMPLEX, ARG)
    assert result.area == 12
    assert (result.opt_present, result.opt_value, result.big_plus_one) == (0, 0, -(2**63) + 1)
    assert result.summary == "name=client kind=1 flag=0 d=-0.500 f=0.250 fixed=000102"
    with rpc.Client(demo_addresses[transport], DEMO_V2, timeout=WAIT) as client:
        assert client.call(DEMO_V2.DEMO2_ADD, 2, 3) == 1005


def test_each_refusal_is_its_own_exception(demo_addresses: Any) -> None:
    class Absent(rpc.Version, program=0x20000123, version=7):
        @rpc.procedure(1)
        def ADD(self, a: xdr.Int, b: xdr.Int) -> xdr.Int:
            return 0

    class NoProc(rpc.Version, program=0x20000123, version=1):
        @rpc.procedure(42)
        def NOTHING(self) -> None:
            pass

    class Other(rpc.Version, program=0x30000000, version=1):
        @rpc.procedure(0)
        def NULL(self) -> None:
            pass

    address = demo_addresses["tcp"]
    with rpc.Client(address, Absent, timeout=WAIT) as client:
        with pytest.raises(rpc.ProgMismatch) as mismatch:
            client.call(Absent.ADD, 1, 2)
        assert (mismatch.value.low, mismatch.value.high) == (1, 2)
    with rpc.Client(address, NoProc, timeout=WAIT) as client, pytest.raises(rpc.ProcUnavail):
        client.call(NoProc.NOTHING)
    with rpc.Client(address, Other, timeout=WAIT) as client, pytest.raises(rpc.ProgUnavail):
        client.call(Other.NULL)


def test_auth_sys_reaches_the_server_and_a_refused_credential_is_auth_error() -> None:
    class Who(rpc.Version, program=0x20000200, version=1):
        @rpc.procedure(1)
        def WHO(self) -> xdr.UInt:
            credential = self.credential
            return credential.uid if isinstance(credential, rpc.AuthSys) else 2**32 - 1

    server = servekit.make_server("tcp://127.0.0.1:0", rpc.Program(Who))
    with serving(server):
        address = f"tcp://127.0.0.1:{server.server_address[1]}"
        me = rpc.AuthSys(stamp=1, machinename="here", uid=1234, gid=5)
        with rpc.Client(address, Who, credential=me, timeout=WAIT) as client:
            assert client.call(Who.WHO) == 1234
        with rpc.Client(address, Who, timeout=WAIT) as client:
            assert client.call(Who.WHO) == 2**32 - 1
            client.cred = message.OpaqueAuth(message.AuthFlavor.AUTH_DH)
            with pytest.raises(rpc.AuthError) as refused:
                client.call(Who.WHO)
            assert refused.value.stat is message.AuthStat.AUTH_REJECTEDCRED


def test_udp_retransmits_until_the_timeout_and_ignores_other_xids() -> None:
    """A server that swallows the first two sends and then answers with a wrong xid
    before the right one: the client sends again at growing intervals and takes only
    the reply to its call."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as fake:
        fake.bind(("127.0.0.1", 0))
        fake.settimeout(WAIT)
        received: list[bytes] = []

        def serve() -> None:
            for _ in range(3):
                data, client = fake.recvfrom(65536)
                received.append(data)
            xid = message.parse_call(received[-1]).xid
            fake.sendto(message.success(xid ^ 1, xdr.encode(xdr.int32, 666)), client)
            fake.sendto(message.success(xid, xdr.encode(xdr.int32, 5)), client)

        thread = threading.Thread(target=serve)
        thread.start()
        with rpc.Client(f"udp://127.0.0.1:{fake.getsockname()[1]}", DEMO_V1, timeout=WAIT) as c:
            assert c.call(DEMO_V1.DEMO_ADD, 2, 3) == 5
        thread.join(WAIT)
    assert len(received) == 3
    assert len({message.parse_call(d).xid for d in received}) == 1  # the same call, again


def test_no_reply_is_rpc_timeout() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        address = f"udp://127.0.0.1:{silent.getsockname()[1]}"
        with rpc.Client(address, DEMO_V1, timeout=0.3) as client, pytest.raises(rpc.RpcTimeout):
            client.call(DEMO_V1.DEMO_NULL)


@pytest.mark.parametrize("transport", ["tcp", "udp", "unix"])
def test_the_async_client_runs_calls_at_once(demo_addresses: Any, transport: str) -> None:
    async def main() -> list[int]:
        async with rpc.AsyncClient(demo_addresses[transport], DEMO_V1, timeout=WAIT) as client:
            assert await client.call(DEMO_V1.DEMO_ECHO, "a") == "a"
            # One argument short, as a client with a wrong declaration would send.
            client.procedures["DEMO_ADD"] = rpc.Procedure(
                1, "DEMO_ADD", (xdr.int32,), xdr.int32, False
            )
            with pytest.raises(rpc.GarbageArgs):
                await client.call(DEMO_V1.DEMO_ADD, 1)  # type: ignore[call-arg]
            client.procedures = {p.name: p for p in DEMO_V1.procedures().values()}
            return list(
                await asyncio.gather(*(client.call(DEMO_V1.DEMO_ADD, n, n) for n in range(50)))
            )

    assert asyncio.run(main()) == [2 * n for n in range(50)]
