"""rpcbind: servekit's built-in one, look-ups, and a program's server registering itself
(with the real rpcbind: test_rpc_interop, in a network namespace)."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import servekit
from servekit.rpc import rpcbind
from tests.conftest import WAIT, LogWatcher, running, serving

sys.path.insert(0, str(Path(__file__).parent.parent))
from examples.rpc import demo

PROG = 0x20000123


@pytest.fixture
def builtin_rpcbind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """servekit's rpcbind on loopback TCP, UDP and a local socket of this test, and the
    environment that points registrations at it."""
    registry = rpcbind.Registry()
    program = rpcbind.rpcbind_program()
    servers = [
        servekit.make_server(address, program, rpcbind=False)
        for address in ("tcp://127.0.0.1:0", "udp://127.0.0.1:0", f"unix:{tmp_path}/rpcbind.sock")
    ]
    for server in servers:
        server.rpcbind_registry = registry
    places = {
        "tcp": f"tcp://127.0.0.1:{servers[0].server_address[1]}",
        "udp": f"udp://127.0.0.1:{servers[1].server_address[1]}",
        "local": f"unix:{servers[2].server_address}",
    }
    monkeypatch.setenv("SERVEKIT_RPCBIND_SOCKET", places["local"])
    monkeypatch.setenv("SERVEKIT_RPCBIND_PORTMAP", places["tcp"])
    with serving(servers[0]), serving(servers[1]), serving(servers[2]):
        yield places


def test_a_program_registers_when_it_listens_and_unregisters_when_it_closes(
    builtin_rpcbind: dict[str, str],
) -> None:
    tcp = servekit.make_server("tcp://127.0.0.1:0", demo.DEMO_PROG)
    udp = servekit.make_server("udp://127.0.0.1:0", demo.DEMO_PROG)
    tcp_port, udp_port = tcp.server_address[1], udp.server_address[1]
    try:
        found = {
            (e.r_prog, e.r_vers, e.r_netid, e.r_addr) for e in rpcbind.dump(builtin_rpcbind["tcp"])
        }
        assert found == {
            (PROG, 1, "tcp", rpcbind.universal_address(2, ("127.0.0.1", tcp_port))),
            (PROG, 2, "tcp", rpcbind.universal_address(2, ("127.0.0.1", tcp_port))),
            (PROG, 1, "udp", rpcbind.universal_address(2, ("127.0.0.1", udp_port))),
            (PROG, 2, "udp", rpcbind.universal_address(2, ("127.0.0.1", udp_port))),
        }
        # The portmapper's view (version 2), over TCP and over UDP.
        assert rpcbind.getport(builtin_rpcbind["tcp"], PROG, 1, rpcbind.IPPROTO_TCP) == tcp_port
        assert rpcbind.getport(builtin_rpcbind["udp"], PROG, 2, rpcbind.IPPROTO_UDP) == udp_port
        # Another version's port, as rpcbind answers: the call's PROG_MISMATCH says more.
        assert rpcbind.getport(builtin_rpcbind["tcp"], PROG, 3) == tcp_port
        assert rpcbind.getport(builtin_rpcbind["tcp"], PROG + 1, 1) == 0
    finally:
        tcp.server_close()
        udp.server_close()
    assert rpcbind.dump(builtin_rpcbind["local"]) == []


def test_registration_can_be_turned_off(builtin_rpcbind: dict[str, str]) -> None:
    server = servekit.make_server("tcp://127.0.0.1:0", demo.DEMO_PROG, rpcbind=False)
    server.server_close()
    assert rpcbind.dump(builtin_rpcbind["tcp"]) == []


def test_without_rpcbind_a_server_warns_once_per_version_and_serves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, servekit_log: LogWatcher
) -> None:
    monkeypatch.setenv("SERVEKIT_RPCBIND_SOCKET", f"unix:{tmp_path}/none.sock")
    monkeypatch.setenv("SERVEKIT_RPCBIND_PORTMAP", "tcp://127.0.0.1:1")
    server = servekit.make_server("tcp://127.0.0.1:0", demo.DEMO_PROG)
    with (
        serving(server),
        servekit.rpc.Client(
            f"tcp://127.0.0.1:{server.server_address[1]}", demo.DEMO_V1, timeout=WAIT
        ) as client,
    ):
        assert client.call(demo.DEMO_V1.DEMO_ADD, 1, 2) == 3
    warnings = [r for r in servekit_log.records if "could not register" in r.getMessage()]
    assert len(warnings) == 2  # versions 1 and 2, each with every place it tried
    assert "none.sock" in warnings[0].getMessage()


def test_set_and_unset_come_from_this_host_only() -> None:
    assert rpcbind._trusted(("127.0.0.1", 700))
    assert rpcbind._trusted(("::1", 700, 0, 0))
    assert rpcbind._trusted("")  # the local socket
    assert not rpcbind._trusted(("192.0.2.7", 700))


def test_getaddr_and_universal_addresses() -> None:
    assert rpcbind.universal_address(2, ("127.0.0.1", 2049)) == "127.0.0.1.8.1"
    assert rpcbind.parse_universal("::1.8.1") == ("::1", 2049)
    with pytest.raises(ValueError, match="does not appear to be an IPv4 or IPv6 address"):
        rpcbind.parse_universal("host.8.1")


@pytest.mark.timeout(60)
def test_servekit_rpcbind_command(tmp_path: Path) -> None:
    command = [
        str(Path(sys.executable).parent / "servekit"), "rpcbind",
        "--listen", "tcp://127.0.0.1:0", "--listen", f"unix:{tmp_path}/rpcbind.sock",
    ]  # fmt: skip
    with running(command, start_new_session=True) as (proc, _log, port):
        places: dict[str, Any] = {"local": f"unix:{tmp_path}/rpcbind.sock",
                                  "portmap": f"tcp://127.0.0.1:{port}"}  # fmt: skip
        assert rpcbind.register(PROG, 1, "tcp", "127.0.0.1.8.1", **places)
        assert rpcbind.getport(places["portmap"], PROG, 1) == 2049
        assert rpcbind.unregister(PROG, 1, "tcp", **places)
        # What is left is rpcbind itself, listed as rpcbind lists itself.
        assert {(e.r_prog, e.r_vers, e.r_netid) for e in rpcbind.dump(places["portmap"])} == {
            (100000, 2, "tcp"), (100000, 3, "tcp"), (100000, 4, "tcp"),
            (100000, 3, "local"), (100000, 4, "local"),
        }  # fmt: skip
        proc.terminate()
        assert proc.wait(WAIT) == 0


@pytest.mark.timeout(90)
def test_workers_register_and_the_supervisor_unregisters_at_the_end(tmp_path: Path) -> None:
    """Under --workers each worker registers (the sockets are shared), none unregisters
    when it goes (a SIGHUP replaces them all, the others serving on), and the supervisor
    takes the sockets' registrations out when the service stops."""
    root = Path(__file__).parent.parent
    binary = str(Path(sys.executable).parent / "servekit")
    local = f"unix:{tmp_path}/rpcbind.sock"
    rpcbind_command = [binary, "rpcbind", "--listen", "tcp://127.0.0.1:0", "--listen", local]
    with running(rpcbind_command, start_new_session=True) as (rpcbind_proc, _, port):
        env = os.environ | {
            "SERVEKIT_RPCBIND_SOCKET": local,
            "SERVEKIT_RPCBIND_PORTMAP": f"tcp://127.0.0.1:{port}",
        }
        command = [
            binary, "serve", "examples.rpc.demo:DEMO_PROG", "--workers", "2",
            "--listen", "tcp://127.0.0.1:0", "--listen", "udp://127.0.0.1:0",
            "--status-interval", "none",
        ]  # fmt: skip
        with running(command, cwd=root, env=env, start_new_session=True) as (proc, log, tcp):
            log.wait_for(r"worker \d+ \(pid \d+\) is serving", count=2)
            with servekit.rpc.Client(f"tcp://127.0.0.1:{tcp}", demo.DEMO_V2, timeout=WAIT) as c:
                assert c.call(demo.DEMO_V2.DEMO2_ADD, 1, 2) == 1003
            registered = _programs(rpcbind.dump(local))
            assert registered == {(PROG, v, n) for v in (1, 2) for n in ("tcp", "udp")}
            proc.send_signal(signal.SIGHUP)
            log.wait_for(r"worker \d+ \(pid \d+\) is serving", count=4)
            log.wait_for(r"worker \d+ \(pid \d+\) exited", count=2)
            assert _programs(rpcbind.dump(local)) == registered
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(WAIT) == 0
        assert _programs(rpcbind.dump(local)) == set()
        rpcbind_proc.terminate()
        assert rpcbind_proc.wait(WAIT) == 0


def _programs(entries: list[rpcbind.rpcb]) -> set[tuple[int, int, str]]:
    """The registrations of ``entries`` but rpcbind's own."""
    return {(e.r_prog, e.r_vers, e.r_netid) for e in entries if e.r_prog != 100000}
