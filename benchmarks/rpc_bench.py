"""ONC RPC calls per second: servekit serving demo.x against rpcgen's C server (issue 13).

    ./scripts/bench --rpc                      # every cell, 3 runs each: about 3 minutes
    ./scripts/bench --rpc --runs 1 --cells null-tcp-1,add-tcp-64 --out /tmp/rpc.json

NULL and ADD (v1) calls, AUTH_NONE, over TCP at 1 and 64 connections and over UDP at 1 and
64 clients, from ``rpcload.c`` (closed loop, one epoll loop, xid matching). The peers:
rpcgen's C server of ``examples/rpc/demo.x`` (``rpcgen -N -m`` dispatchers, the procedures of
``tests/rpc_c/demo_server_impl.c``, and ``peers/rpc_demo_server.c``'s main, which registers
with protocol 0: no rpcbind), ``peers/rpc_floor.py`` (the least a Python server of the
same calls costs: a thread per connection, blocking recv/send, one ``struct``, no checks;
the reference that splits the distance to C into Python's and servekit's), and
``servekit serve examples.rpc.demo:DEMO_PROG --no-rpcbind`` on the pool and the async
engine (uvloop), each also with ``--workers 2``. A fresh server per
run, pinned to core 0 (a prefork's workers too), the load generator on core 1; CPU per call is
the server tree's user+sys time over the measured window divided by the calls answered in it,
as in the rest of the benchmark. Runs are taken in turns: every server of a cell once, then
each again.

Writes ``docs/benchmarks/rpc-results.json`` (or ``--out``) and prints the tables and the
targets, the ratios with their range over every pair of runs, as markdown.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).parent))  # run as a script: its siblings are modules

import report
from catalog import BUILD, ROOT
from measure import LOADGEN_CORE, Address, PeakRss, cpu_seconds, started

if TYPE_CHECKING:
    from collections.abc import Iterator

logger = logging.getLogger("servekit.benchmarks")

RESULTS = ROOT / "docs" / "benchmarks" / "rpc-results.json"
RPC_BUILD = BUILD / "rpc"
C_SERVER = RPC_BUILD / "rpc_demo_server"
RPCLOAD = BUILD / "rpcload"
DEMO_PROG = 0x20000123
C_NAME = "rpcgen C server"


@dataclass(frozen=True)
class Cell:
    proc: str  # null, add
    proto: str  # tcp, udp
    conns: int

    @property
    def key(self) -> str:
        return f"{self.proc}-{self.proto}-{self.conns}"

    @property
    def title(self) -> str:
        what = "connection" if self.proto == "tcp" else "client"
        plural = "" if self.conns == 1 else "s"
        return f"{self.proc.upper()} over {self.proto.upper()}, {self.conns} {what}{plural}"


CELLS = [Cell(p, t, n) for p in ("null", "add") for t in ("tcp", "udp") for n in (1, 64)]


@dataclass(frozen=True)
class RpcServer:
    name: str
    model: str = ""  # pool, async; "" for the C server, "floor" for peers/rpc_floor.py
    workers: int = 0

    def argv(self, address: Address) -> list[str]:
        host, port = address.sockaddr()
        where = ["--proto", address.proto, "--host", host, "--port", str(port)]
        if not self.model:
            return [str(C_SERVER), *where]
        if self.model == "floor":
            return [sys.executable, str(ROOT / "benchmarks" / "peers" / "rpc_floor.py"), *where]
        argv = [
            sys.executable, "-m", "servekit", "serve", "examples.rpc.demo:DEMO_PROG",
            "--no-rpcbind", "--listen", f"{address.proto}://{address.text}",
            "--log-level", "WARNING", "--status-interval", "none",
            "--max-connections", "none", "--shutdown-timeout", "1",
            "--concurrency", self.model,
        ]  # fmt: skip
        if self.model == "pool":
            argv += ["--threads", "64"]  # a thread for each of 64 connections, as the bench
        if self.model == "async":
            argv += ["--loop", "uvloop"]
        if self.workers:
            argv += ["--workers", str(self.workers)]
        return argv


FLOOR_NAME = "Python floor"

SERVERS = [
    RpcServer(C_NAME),
    RpcServer(FLOOR_NAME, "floor"),
    RpcServer("servekit pool", "pool"),
    RpcServer("servekit async (uvloop)", "async"),
    RpcServer("servekit pool --workers 2", "pool", 2),
    RpcServer("servekit async (uvloop) --workers 2", "async", 2),
]

# The targets of issue 13: at 1 connection (round-trip bound) at least 0.9x the C
# server's calls/s; at 64 connections, --workers 2 at least the C server's.
ONE_CONN_SERVERS = ("servekit pool", "servekit async (uvloop)")
MANY_CONN_SERVERS = ("servekit pool --workers 2", "servekit async (uvloop) --workers 2")


def build() -> None:
    """rpcload, and the C server: rpcgen -N -m (dispatchers without a main) and -c, -h
    from examples/rpc/demo.x, with the tests' procedures and a main without rpcbind."""
    BUILD.mkdir(exist_ok=True)
    RPC_BUILD.mkdir(exist_ok=True)
    cc = ["cc", "-O2", "-Wall", "-Wextra", "-std=gnu11"]
    subprocess.run([*cc, "-o", str(RPCLOAD), str(ROOT / "benchmarks" / "rpcload.c")], check=True)
    if not shutil.which("rpcgen") or not Path("/usr/include/tirpc/rpc/rpc.h").exists():
        raise SystemExit("the C server needs rpcgen (rpcsvc-proto) and libtirpc-dev")
    shutil.copy(ROOT / "examples" / "rpc" / "demo.x", RPC_BUILD / "demo.x")
    for flag, out in (("-h", "demo.h"), ("-c", "demo_xdr.c"), ("-m", "demo_svc.c")):
        with contextlib.suppress(FileNotFoundError):
            (RPC_BUILD / out).unlink()  # rpcgen will not write over a file
        subprocess.run(["rpcgen", "-N", flag, "-o", out, "demo.x"], cwd=RPC_BUILD, check=True)
    # -O2 like the rest of the bench; rpcgen's code draws warnings of its own (-w).
    subprocess.run(
        [
            "cc", "-O2", "-w", "-I", str(RPC_BUILD), "-I", "/usr/include/tirpc",
            "-o", str(C_SERVER),
            str(ROOT / "benchmarks" / "peers" / "rpc_demo_server.c"),
            str(ROOT / "tests" / "rpc_c" / "demo_server_impl.c"),
            str(RPC_BUILD / "demo_svc.c"), str(RPC_BUILD / "demo_xdr.c"),
            "-ltirpc",
        ],
        check=True,
    )  # fmt: skip


def _null_call(xid: int) -> bytes:
    return struct.pack(">10I", xid, 0, 2, DEMO_PROG, 1, 0, 0, 0, 0, 0)


def _answers(address: Address) -> bool:
    """A NULL call answered: the server is up and serving, not just bound."""
    kind = socket.SOCK_DGRAM if address.proto == "udp" else socket.SOCK_STREAM
    call = _null_call(0x0BEEF)
    try:
        with socket.socket(socket.AF_INET, kind) as probe:
            probe.settimeout(0.5)
            probe.connect(address.sockaddr())
            if address.proto == "udp":
                probe.send(call)
                reply = probe.recv(4096)
            else:
                probe.sendall(struct.pack(">I", 0x80000000 | len(call)) + call)
                reply = b""
                while len(reply) < 28:
                    chunk = probe.recv(4096)
                    if not chunk:
                        return False
                    reply += chunk
                reply = reply[4:]
            return len(reply) == 24 and struct.unpack(">6I", reply)[:3] == (0x0BEEF, 1, 0)
    except OSError:
        return False


@contextlib.contextmanager
def serving(server: RpcServer, proto: str, log: Path) -> Iterator[tuple[int, Address]]:
    address = Address.fresh(proto)
    with started(server.argv(address), server.name, lambda: _answers(address), log) as pid:
        yield pid, address


def run_once(server: RpcServer, cell: Cell, args: argparse.Namespace, log: Path) -> dict:
    with serving(server, cell.proto, log) as (pid, address):
        host, port = address.sockaddr()
        argv = [
            "taskset", "-c", LOADGEN_CORE, str(RPCLOAD),
            "--proto", cell.proto, "--host", host, "--port", str(port),
            "--proc", cell.proc, "--conns", str(cell.conns),
            "--duration", str(args.duration), "--warmup", str(args.warmup),
        ]  # fmt: skip
        marks: dict[str, float] = {}
        result: dict[str, Any] | None = None
        with PeakRss(pid) as peak:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            assert proc.stdout is not None
            assert proc.stderr is not None
            for line in proc.stdout:
                if line.startswith("{"):
                    result = json.loads(line)
                elif line.strip() == "MEASURING":
                    marks["start"] = cpu_seconds(pid)
                elif line.strip() == "MEASURED":
                    marks["end"] = cpu_seconds(pid)
            errors = proc.stderr.read().strip()
            if proc.wait() != 0 or result is None:
                raise RuntimeError(f"rpcload failed ({proc.returncode}): {errors}")
    calls = result["requests"]
    cpu = marks.get("end", 0.0) - marks.get("start", 0.0)
    return {
        "rps": result["rps"],
        "requests": calls,
        "errors": result["errors"],
        "p50_us": result["lat_us"]["p50"],
        "p99_us": result["lat_us"]["p99"],
        "max_us": result["lat_us"]["max"],
        "cpu_us_per_req": cpu / calls * 1e6 if calls else None,
        "peak_rss_kib": peak.peak,
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    servers = [s for s in SERVERS if not args.servers or any(p in s.name for p in args.servers)]
    cells = [c for c in CELLS if not args.cells or c.key in args.cells]
    log = Path(tempfile.mkdtemp(prefix="servekit-rpc-bench-")) / "servers.log"
    started = time.monotonic()
    out: list[dict[str, Any]] = []
    for cell in cells:
        entries = [
            {"workload": cell.key, "server": s.name, "runs": [], "failures": []} for s in servers
        ]
        for _ in range(args.runs):  # in turns: each server once, then each again
            for server, entry in zip(servers, entries, strict=True):
                try:
                    entry["runs"].append(run_once(server, cell, args, log))
                except RuntimeError as exc:
                    entry["failures"].append(str(exc))
                    logger.warning("%s / %s: %s", cell.key, server.name, exc)
        for entry in entries:
            entry["median"] = _median(entry["runs"])
            logger.info("%-12s %-38s %s", cell.key, entry["server"], report.brief(entry))
        out += entries
    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "runs": args.runs,
        "duration": args.duration,
        "warmup": args.warmup,
        "seconds": round(time.monotonic() - started),
        "log": str(log),
    }
    return {"meta": meta, "cells": out}


def _median(runs: list[dict[str, Any]]) -> dict[str, float]:
    import statistics

    keys = {key for run in runs for key in run}
    return {
        key: statistics.median(values)
        for key in sorted(keys)
        if (values := [run[key] for run in runs if run.get(key) is not None])
    }


def markdown(results: dict[str, Any]) -> str:
    """The tables (calls/s, CPU per call, p99, each servekit row as a ratio to the C
    server's) and the targets with their range over every pair of runs."""
    cells: report.Cells = {(c["workload"], c["server"]): c for c in results["cells"]}
    servers = [s.name for s in SERVERS if any(k[1] == s.name for k in cells)]
    lines = [
        "| cell | server | calls/s | x C | CPU us/call | x C | p50 us | p99 us | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for cell in CELLS:
        for server in servers:
            m = cells.get((cell.key, server), {}).get("median")
            if not m:
                continue
            rps = report._versus(cells, cell.key, server, C_NAME, "rps")
            cpu = report._versus(cells, cell.key, server, C_NAME, "cpu_us_per_req")
            lines.append(
                f"| {cell.key} | {server} | {m.get('rps', 0):,.0f} | "
                f"{'' if server == C_NAME else _x(rps)} | {report._num(m.get('cpu_us_per_req'))} | "
                f"{'' if server == C_NAME else _x(cpu)} | {report._num(m.get('p50_us'))} | "
                f"{report._num(m.get('p99_us'))} | {m.get('errors', 0):.0f} |"
            )
    lines += ["", "| target | calls/s ratio to the C server (range) | met |", "|---|---:|---|"]
    for cell in CELLS:
        wanted, floor = (ONE_CONN_SERVERS, 0.9) if cell.conns == 1 else (MANY_CONN_SERVERS, 1.0)
        for server in wanted:
            ratio = report._versus(cells, cell.key, server, C_NAME, "rps")
            spread = report._spread(cells, cell.key, server, C_NAME, "rps")
            if ratio is None:
                continue
            span = f" ({spread[0]:.2f}-{spread[1]:.2f})" if spread else ""
            lines.append(
                f"| {cell.key}: {server} >= {floor}x | {ratio:.2f}{span} | "
                f"{'met' if ratio >= floor else 'missed'} |"
            )
    return "\n".join(lines) + "\n"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=1.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=0.3)
    parser.add_argument("--servers", type=lambda s: s.split(","), help="parts of server names")
    parser.add_argument("--cells", type=lambda s: s.split(","), help="e.g. null-tcp-1,add-udp-64")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--from", dest="source", type=Path, help="report a results file again")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.source:
        sys.stdout.write(markdown(json.loads(args.source.read_text())))
        return
    build()
    results = measure(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    sys.stdout.write(markdown(results))
    logger.info("done in %.0f s; results in %s", results["meta"]["seconds"], args.out)


if __name__ == "__main__":
    main()
