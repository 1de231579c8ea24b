"""Run the benchmark: every workload against every server, a fresh server per run.

    ./scripts/bench                # the full run, about 10 minutes and 9 more for slow-1000
    ./scripts/bench --quick        # one short run per cell, about 3 minutes and 3 more
    ./scripts/bench --workloads slow-1000   # 1,000 slow clients: 40 s windows, about 9 minutes
    ./scripts/bench --servers uvloop,async --workloads echo-64
    ./scripts/bench --rpc          # ONC RPC against rpcgen's C server: benchmarks/rpc_bench.py
    ./scripts/bench --sql          # the SQL request source against its SQL: benchmarks/sql_bench.py

Results go to docs/benchmarks/results.json, and the report (tables, targets,
chart) to docs/benchmarks.md and docs/benchmarks/chart.png.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))  # run as a script: its siblings are modules

import report
from catalog import ROOT, SERVERS, WORKLOADS, Server, Workload
from measure import PeakRss, build, cpu_seconds, load, rss_kib, serving

logger = logging.getLogger("servekit.benchmarks")

RESULTS = ROOT / "docs" / "benchmarks" / "results.json"


def run_once(server: Server, workload: Workload, args: argparse.Namespace, log: Path) -> dict:
    """One run of one cell, on a server started for it."""
    with serving(server, workload, log) as (pid, address):
        base_rss = rss_kib(pid)
        marks: dict[str, float] = {}

        def on_line(line: str) -> None:
            if line == "MEASURING":
                marks["cpu_start"] = cpu_seconds(pid)
            elif line.startswith("HELD"):
                marks["held_rss"] = rss_kib(pid)
            elif line == "MEASURED" or (line == "RESULT" and "cpu_end" not in marks):
                marks["cpu_end"] = cpu_seconds(pid)

        with PeakRss(pid) as peak:
            cpu_before = cpu_seconds(pid)
            result = load(
                workload,
                address,
                duration=max(args.duration, workload.duration),
                warmup=_warmup(workload, args),
                on_line=on_line,
            )
    requests = result["requests"]
    cpu = marks.get("cpu_end", 0.0) - marks.get("cpu_start", cpu_before)
    run: dict[str, Any] = {
        "rps": result["rps"],
        "requests": requests,
        "errors": result["errors"],
        "p50_us": result["lat_us"]["p50"],
        "p99_us": result["lat_us"]["p99"],
        "max_us": result["lat_us"]["max"],
        "cpu_us_per_req": cpu / requests * 1e6 if requests else None,
        "peak_rss_kib": peak.peak,
    }
    if workload.mode == "idle" and "held_rss" in marks and result.get("answered"):
        run["held"] = result["answered"]
        run["kib_per_conn"] = (marks["held_rss"] - base_rss) / result["answered"]
    if workload.mode == "burst":
        run["served_in_deadline"] = result["served_in_deadline"]
        run["served"] = result["served"]
    if workload.slow:
        slow = result["slow"]
        for key in ("connected_start", "connected_min", "connected_mean", "connected_max"):
            run[f"slow_{key}"] = slow[key]
        run["slow_cuts"] = slow["cuts"]
    return run


def _warmup(workload: Workload, args: argparse.Namespace) -> float:
    """--warmup, or 1 ms per persistent connection (slow clients included) if longer:
    a thread-per-connection server takes about that to start a thread for each, and
    1,000 connections measured while the last threads start measured the start-up
    (pool and threads models: 49,700 and 47,800 req/s after 0.2 s, 68,200 and 64,600
    after 1.5 s)."""
    if workload.mode != "echo":
        return float(args.warmup)
    return max(float(args.warmup), (workload.conns + workload.slow) / 1000)


def median_of(runs: list[dict]) -> dict:
    """The median of each figure over the runs that produced it."""
    keys = {key for run in runs for key in run}
    medians = {}
    for key in sorted(keys):
        values = [run[key] for run in runs if run.get(key) is not None]
        if values:
            medians[key] = statistics.median(values)
    return medians


def main() -> None:
    if sys.argv[1:2] == ["--rpc"]:  # ONC RPC against rpcgen's C server (issue 13)
        import rpc_bench

        rpc_bench.main(sys.argv[2:])
        return
    if sys.argv[1:2] == ["--sql"]:  # the SQL request source against its own SQL (issue 14)
        import sql_bench

        sql_bench.main(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="1 run of 0.5 s per cell (slow-1000: 40 s)"
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--duration",
        type=float,
        default=0.7,
        help="measured seconds per run (slow-1000's window is 40 s at least)",
    )
    parser.add_argument("--warmup", type=float, default=0.2)
    parser.add_argument("--servers", help="comma-separated parts of server names to keep")
    parser.add_argument("--workloads", help="comma-separated workload keys to keep")
    parser.add_argument(
        "--out", type=Path, default=RESULTS,
        help="results file; any but the default leaves docs/benchmarks.md as it is",
    )  # fmt: skip
    args = parser.parse_args()
    if args.quick:
        args.runs, args.duration, args.warmup = 1, 0.5, 0.2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    build()
    servers = _pick(SERVERS, args.servers, lambda s: s.name)
    workloads = _pick(WORKLOADS, args.workloads, lambda w: w.key, exact=True)
    log = Path(tempfile.mkdtemp(prefix="servekit-bench-")) / "servers.log"
    cells = []
    started = time.monotonic()
    for workload in workloads:
        entries: list[dict[str, Any]] = []
        measured: list[tuple[Server, dict[str, Any]]] = []
        for server in servers:
            if not workload.runs_against(server.name):
                continue
            why_not = server.serves(workload)
            if why_not is not None:
                entries.append({"workload": workload.key, "server": server.name, "na": why_not})
                continue
            cell = {
                "workload": workload.key,
                "server": server.name,
                "servekit": server.servekit,
                "runs": [],
                "failures": [],
            }
            entries.append(cell)
            measured.append((server, cell))
        # Rounds over the servers, not one server's runs back to back: a slow spell
        # of the machine (a shared host) then costs one run of each server, which
        # the median drops, not every run of one server.
        for _ in range(args.runs):
            for server, cell in measured:
                try:
                    cell["runs"].append(run_once(server, workload, args, log))
                except RuntimeError as exc:
                    cell["failures"].append(str(exc))
                    logger.warning("%s / %s: %s", workload.key, server.name, exc)
        for _, cell in measured:
            cell["median"] = median_of(cell["runs"])
            logger.info("%-10s %-28s %s", workload.key, cell["server"], report.brief(cell))
        cells += entries
    results = {"meta": _meta(args, time.monotonic() - started), "cells": cells}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    if args.out.resolve() == RESULTS.resolve():
        report.write(results)
        where = "report in docs/benchmarks.md"
    else:  # a trial run to a file of its own leaves the published report alone
        where = f"report not written (python -m benchmarks.report --from {args.out})"
    logger.info(
        "done in %.0f s; results in %s, %s (server log: %s)",
        results["meta"]["seconds"],
        args.out,
        where,
        log,
    )


def _pick(items: list[Any], wanted: str | None, name: Any, exact: bool = False) -> list[Any]:
    if not wanted:
        return items
    parts = [part.strip() for part in wanted.split(",")]
    if exact:
        return [item for item in items if name(item) in parts]
    return [item for item in items if any(part in name(item) for part in parts)]


def _meta(args: argparse.Namespace, seconds: float) -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.machine(),
    )
    return {
        "date": time.strftime("%Y-%m-%d"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "runs": args.runs,
        "duration": args.duration,
        "warmup": args.warmup,
        "seconds": round(seconds),
        "versions": _versions(),
    }


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("servekit", "uvloop", "gevent", "trio", "twisted"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            pass
    return found


if __name__ == "__main__":
    main()
