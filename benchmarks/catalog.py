"""What is measured: the workloads, and the servers (servekit's models and the peers).

A server is a command line that serves an echo on a given address; the runner
starts a fresh one for every run of every cell.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "benchmarks" / "build"
PEERS = ROOT / "benchmarks" / "peers"


@dataclass(frozen=True)
class Workload:
    key: str  # "echo-64": the name used in results and on the command line
    mode: str  # loadgen's --mode: echo, churn, idle, burst
    proto: str  # tcp, udp, unix
    conns: int
    title: str
    slow: int = 0  # loadgen's --slow: clients trickling a line that never ends, besides
    duration: float = 0.0  # the measured window, at least; 0 for the run's --duration
    only: frozenset[str] = frozenset()  # the servers it is run against; empty for all

    def runs_against(self, server: str) -> bool:
        return not self.only or server in self.only

    @property
    def persistent(self) -> bool:
        """Clients keep their connection open while the cell runs."""
        return self.mode in ("echo", "idle") and self.proto != "udp"


WORKLOADS = [
    Workload("echo-1", "echo", "tcp", 1, "TCP echo, 64 B, 1 connection"),
    Workload("echo-64", "echo", "tcp", 64, "TCP echo, 64 B, 64 connections"),
    Workload("echo-1000", "echo", "tcp", 1000, "TCP echo, 64 B, 1,000 connections"),
    Workload("unix-64", "echo", "unix", 64, "Unix socket echo, 64 B, 64 connections"),
    Workload("churn-64", "churn", "tcp", 64, "TCP churn (connect, 1 request, close), 64 clients"),
    Workload("udp-1", "echo", "udp", 1, "UDP echo, 64 B, 1 client"),
    Workload("udp-64", "echo", "udp", 64, "UDP echo, 64 B, 64 clients"),
    Workload("idle-10000", "idle", "tcp", 10_000, "10,000 idle TCP connections held"),
    Workload("burst-1000", "burst", "tcp", 1000, "1,000 connections launched at once"),
    # 1,000 clients each sending a byte a second of a line that never ends, and
    # reconnecting at once when the server cuts them (read_timeout, 30 s by default),
    # opened before 64 ordinary echo clients, whose service is what is measured.
    # The window covers the first read_timeout cut of all 1,000 and their return.
    Workload(
        "slow-1000",
        "echo",
        "tcp",
        64,
        "TCP echo, 64 B, 64 connections, beside 1,000 slow clients (a byte a second of a "
        "line that never ends)",
        slow=1000,
        duration=40.0,
        only=frozenset(
            {
                "servekit pool",
                "servekit threads (stream)",
                "servekit async (uvloop)",
                "stdlib threading (stream)",
            }
        ),
    ),
]


@dataclass(frozen=True)
class Server:
    name: str  # as shown in the tables: "servekit pool", "stdlib threading (base)"
    servekit: bool
    protos: frozenset[str]
    model: str = ""  # servekit's concurrency model, for the ones that cannot do a workload
    command: tuple[str, ...] = ()  # a peer's command, without the address arguments
    skip: frozenset[str] = field(default_factory=frozenset)  # workloads it sits out

    def argv(self, workload: Workload, address: str) -> list[str]:
        """The command that serves ``workload`` on ``address`` (host:port or a path)."""
        if self.servekit:
            return self._servekit_argv(workload, address)
        if workload.proto == "unix":
            return [*self.command, "--proto", "unix", "--path", address]
        host, _, port = address.rpartition(":")
        return [*self.command, "--proto", workload.proto, "--host", host, "--port", port]

    def _servekit_argv(self, workload: Workload, address: str) -> list[str]:
        listen = {"tcp": address, "udp": f"udp://{address}", "unix": f"unix:{address}"}
        model, _, variant = self.model.partition("-")
        if model == "async":
            handler = "AsyncDatagramEcho" if workload.proto == "udp" else "AsyncEcho"
            if workload.slow:
                # Lines, as the thread models and the stdlib peer read them: a line
                # that never ends is then an unfinished request on every server.
                handler = "AsyncLineEcho"
        elif workload.proto == "udp":
            handler = "DatagramEcho"
        elif variant.startswith("base"):
            handler = "Echo"
        else:
            handler = "LineEcho"
        argv = [
            sys.executable,
            "-m",
            "servekit",
            "serve",
            f"benchmarks.servekit_echo:{handler}",
            "--listen",
            listen[workload.proto],
            "--log-level",
            "WARNING",
            "--status-interval",
            "none",
            "--max-connections",
            "none",
            "--shutdown-timeout",
            "1",
        ]
        if model == "prefork":
            argv += ["--workers", "2", "--concurrency", "pool"]
        else:
            argv += ["--concurrency", model]
        if model in ("pool", "prefork"):
            # "Enough workers for the connections": a pool smaller than the
            # client count would queue persistent clients forever.
            argv += ["--threads", str(max(64, workload.conns))]
        if model == "async":
            argv += ["--loop", variant]
        if variant.endswith("noidle"):
            # What the default idle_timeout costs a handler on the raw socket.
            argv += ["--idle-timeout", "none"]
        if variant == "nolimits":
            # What the stream limits cost a line handler: without them its files
            # are the stdlib's own (socket.makefile()).
            argv += ["--idle-timeout", "none", "--read-timeout", "none"]
            argv += ["--max-line-length", "none"]
        return argv

    def serves(self, workload: Workload) -> str | None:
        """None if this server takes part in ``workload``, else why not."""
        if workload.proto not in self.protos:
            return f"no {workload.proto}"
        if workload.key in self.skip:
            return "left out (see the notes)"
        if self.model == "sync" and workload.persistent and workload.conns > 1:
            return "one connection at a time"
        return None


def _sk(name: str, model: str, protos: str = "tcp udp unix", skip: str = "") -> Server:
    return Server(
        f"servekit {name}",
        True,
        frozenset(protos.split()),
        model=model,
        skip=frozenset(skip.split()),
    )


def _peer(name: str, script: str, variant: str, protos: str, skip: str = "") -> Server:
    command = (sys.executable, str(PEERS / script), "--variant", variant)
    return Server(
        name, False, frozenset(protos.split()), command=command, skip=frozenset(skip.split())
    )


# A process per connection cannot hold 10,000 idle connections on this machine,
# and the C epoll server and the event loops are what that cell is about.
_NO_IDLE = "idle-10000"

SERVERS = [
    _sk("sync", "sync", skip=_NO_IDLE),
    _sk("threads (stream)", "threads"),
    _sk(
        "threads (stream, no limits)",
        "threads-nolimits",
        protos="tcp",
        skip="idle-10000 churn-64 burst-1000",
    ),
    _sk("threads (base)", "threads-base", protos="tcp", skip=_NO_IDLE),
    _sk(
        "threads (base, no idle_timeout)",
        "threads-base-noidle",
        protos="tcp",
        skip="idle-10000 churn-64 burst-1000",
    ),
    _sk("pool", "pool", skip=_NO_IDLE),
    _sk("fork", "fork", skip=_NO_IDLE),
    _sk("prefork x2", "prefork", protos="tcp", skip=_NO_IDLE),
    _sk("async (asyncio)", "async-asyncio"),
    _sk("async (uvloop)", "async-uvloop"),
    _peer("stdlib threading (base)", "stdlib_socketserver.py", "threading-base", "tcp unix"),
    _peer(
        "stdlib threading (stream)",
        "stdlib_socketserver.py",
        "threading-stream",
        "tcp",
        skip=_NO_IDLE,
    ),
    _peer("stdlib forking", "stdlib_socketserver.py", "forking-base", "tcp", skip=_NO_IDLE),
    _peer("stdlib UDPServer", "stdlib_socketserver.py", "udp", "udp"),
    _peer("asyncio streams", "asyncio_streams.py", "asyncio", "tcp unix"),
    _peer("asyncio protocol", "asyncio_protocol.py", "asyncio", "tcp unix udp"),
    _peer("uvloop streams", "asyncio_streams.py", "uvloop", "tcp unix"),
    _peer("uvloop protocol", "asyncio_protocol.py", "uvloop", "tcp unix udp"),
    _peer("asyncio coroutine floor", "coroutine_floor.py", "asyncio", "tcp udp", skip=_NO_IDLE),
    _peer("uvloop coroutine floor", "coroutine_floor.py", "uvloop", "tcp udp", skip=_NO_IDLE),
    _peer("gevent", "gevent_server.py", "gevent", "tcp udp"),
    _peer("trio", "trio_server.py", "trio", "tcp udp"),
    _peer("Twisted", "twisted_server.py", "epoll", "tcp udp"),
    Server(
        "C epoll",
        False,
        frozenset({"tcp", "udp", "unix"}),
        command=(str(BUILD / "epoll_echo"), "--variant", "epoll"),
    ),
]
