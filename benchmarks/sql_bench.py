"""The SQL request source: rows per second and enqueue-to-start latency (issue 14).

    ./scripts/bench --sql                     # every cell, 3 runs each, and latency: 2-3 minutes
    ./scripts/bench --sql --runs 1 --cells sqlite-w1-b1,postgresql-w4-b64 --out /tmp/sql.json
    .venv/bin/python benchmarks/sql_bench.py --from docs/benchmarks/sql-results.json

Cells: SQLite (a file in a temporary folder: WAL, ``synchronous=NORMAL``, the source's
default) and PostgreSQL (a throwaway server this benchmark starts, ``sql_pgserver.py``),
each unbatched (``--claim-batch 1``) and batched (``--claim-batch 64``), with 1 and 4
worker processes. A run of a cell enqueues ``--rows`` rows, then serves them with
``servekit serve benchmarks.sql_handlers:Job --listen URL --workers N --claim-batch B
--status-interval none --log-level WARNING`` (a handler that only notes the time): the
rows are timed from the first row's start to the last's, from the handlers' own
stamps, so the server's start-up and stop are not counted. Then every row must be done.

The ceiling, in the same run and on the same database, from the same starting state:
servekit's own claim-and-acknowledge SQL run by a minimal loop (``sql_ceiling.py``): a
Python ``sqlite3`` loop in 1 or 4 processes, and ``pgbench`` with 1 or 4 clients; on
PostgreSQL also the same SQL from a minimal psycopg loop (what any Python worker on psycopg
costs at least). Runs are taken in turns (each cell's sides once, which goes first
alternating, then again), and the figures are medians, each ratio with its range over
every pair of runs. ``--src DIR`` serves another servekit than the installed one (say, a
``git archive`` of a commit's ``src/``). ``--ack-batch N`` serves with the source's
``ack_batch`` option (off by default, and so in the issue's cells), and the ceiling then
groups its acknowledgements as the source does (``sql_ceiling.ack_groups``).

Latency: one worker, unbatched, serving ``benchmarks.sql_handlers:Latency``; a producer
enqueues ``--latency-rows`` rows at ``--rate`` a second, each with its ``time.time()`` in
the payload; the handler notes ``time.time() - payload["t"]`` at its start.

Writes ``docs/benchmarks/sql-results.json`` (or ``--out``) and prints the tables and the
targets (every cell >= 0.75x its ceiling; p50 < 5 ms on PostgreSQL) as markdown.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import multiprocessing
import os
import platform
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

sys.path.insert(0, str(Path(__file__).parent))  # run as a script: its siblings are modules

import sql_ceiling
from sql_handlers import STAMPS
from sql_pgserver import PgServer, find_binary, pg_server

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from servekit.sql import PostgresBackend, SQLiteBackend

logger = logging.getLogger("servekit.benchmarks")

ROOT: Final = Path(__file__).resolve().parent.parent
RESULTS: Final = ROOT / "docs" / "benchmarks" / "sql-results.json"
BACKENDS: Final = ("sqlite", "postgresql")
TARGET_RATIO: Final = 0.75
TARGET_P50_MS: Final = 5.0
DONE_TIMEOUT: Final = 120.0  # a run that has not served its rows by then failed
STOP_TIMEOUT: Final = 10.0
SRC: list[str] = []  # --src, first on the servers' PYTHONPATH


@dataclass(frozen=True)
class Cell:
    backend: str  # sqlite, postgresql
    workers: int
    batch: int

    @property
    def key(self) -> str:
        return f"{self.backend}-w{self.workers}-b{self.batch}"


CELLS: Final = [Cell(b, w, n) for b in BACKENDS for n in (1, 64) for w in (1, 4)]


class Database:
    """The database of one backend, emptied and filled again before each run."""

    def __init__(self, backend: str, folder: Path, pg: PgServer | None) -> None:
        self.backend, self.folder, self.pg = backend, folder, pg
        self._runs = itertools.count(1)
        self.url = ""

    def fresh(self, rows: int) -> str:
        """An empty queue with ``rows`` rows pending (in one transaction); its URL."""
        if self.backend == "sqlite":
            self.url = f"sqlite://{self.folder}/run-{next(self._runs)}.db"
        else:
            assert self.pg is not None
            self.url = self.pg.url("bench")
        with self.open() as backend:
            backend.init()
            if self.backend == "postgresql":
                _pg_execute(self.url, "TRUNCATE servekit_jobs RESTART IDENTITY")
            for start in range(0, rows, 10_000):
                backend.enqueue_many({"i": i} for i in range(start, min(rows, start + 10_000)))
        if self.backend == "postgresql":
            # The same state for both sides: statistics fresh, dirty pages written.
            _pg_execute(self.url, "VACUUM ANALYZE servekit_jobs", "CHECKPOINT")
        return self.url

    @contextlib.contextmanager
    def open(self) -> Iterator[SQLiteBackend | PostgresBackend]:
        from servekit.sql import open_backend

        backend = open_backend(self.url)
        try:
            yield backend
        finally:
            backend.close()

    def done(self) -> int:
        with self.open() as backend:
            return sum(queue.get("done", 0) for queue in backend.stats().values())

    def drop(self) -> None:
        """Forget the run's file (SQLite); the PostgreSQL table is emptied by fresh()."""
        if self.backend == "sqlite":
            path = self.url.removeprefix("sqlite://")
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path + suffix)


def _pg_execute(url: str, *statements: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


# -- servekit ---------------------------------------------------------------------------------


@contextlib.contextmanager
def serving(argv: list[str], stamps: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``servekit serve``, its handlers writing into ``stamps``; stop its process
    group (SIGTERM, then SIGKILL) on the way out, whatever happened."""
    env = {**os.environ, "SERVEKIT_SQL_BENCH_DIR": str(stamps)}
    if SRC:  # --src: servekit from there, not the installed one
        env["PYTHONPATH"] = os.pathsep.join([*SRC, env.get("PYTHONPATH", "")])
    with open(log, "ab") as stderr:
        proc = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr,
            start_new_session=True,
        )  # fmt: skip
    try:
        yield proc
    finally:
        # SIGTERM to the supervisor, which stops its workers gracefully; then SIGKILL to
        # whatever of the group is left (after STOP_TIMEOUT, or at once once it is gone).
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(STOP_TIMEOUT)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def serve_argv(
    handler: str, url: str, workers: int, batch: int, concurrency: str, ack_batch: int = 1
) -> list[str]:
    return [
        sys.executable, "-m", "servekit", "serve", f"benchmarks.sql_handlers:{handler}",
        "--listen", url, "--workers", str(workers), "--claim-batch", str(batch),
        "--concurrency", concurrency, "--status-interval", "none", "--log-level", "WARNING",
        # Only when asked: a --src export older than the option does not know the flag.
        *(["--ack-batch", str(ack_batch)] if ack_batch > 1 else []),
    ]  # fmt: skip


def read_stamps(folder: Path) -> tuple[float, float, int]:
    """The first start and last start over every process, and the rows started."""
    data = [path.read_bytes() for path in folder.glob("stamps-*")]
    found = [STAMPS.unpack(d) for d in data if len(d) == STAMPS.size]  # not one being made
    found = [stamp for stamp in found if stamp[2]]
    if not found:
        return 0.0, 0.0, 0
    return (
        min(s[0] for s in found),
        max(s[1] for s in found),
        int(sum(s[2] for s in found)),
    )


def until(
    proc: subprocess.Popen[bytes],
    ready: Callable[[], bool],
    what: str,
    log: Path,
    every: float = 0.02,
) -> None:
    """Poll ``ready()`` every ``every`` seconds while the server runs (it writes files
    and rows; nothing to wait on)."""
    deadline = time.monotonic() + DONE_TIMEOUT
    while not ready():
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited ({proc.returncode}) before {what}; see {log}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {what} after {DONE_TIMEOUT:.0f} s; see {log}")
        time.sleep(every)


def run_servekit(cell: Cell, db: Database, args: argparse.Namespace, log: Path) -> float:
    """One run of servekit on ``cell``: rows/s from the handlers' stamps."""
    rows = _rows(cell.backend, args)
    url = db.fresh(rows)
    stamps = Path(tempfile.mkdtemp(prefix="stamps-", dir=db.folder))
    try:
        argv = serve_argv("Job", url, cell.workers, cell.batch, args.concurrency, args.ack_batch)
        with serving(argv, stamps, log) as proc:
            until(proc, lambda: read_stamps(stamps)[2] >= rows, "every row started", log)
            # Stopped once every row is acknowledged too, not in the middle of the last.
            until(proc, lambda: db.done() >= rows, "every row done", log, every=0.1)
        first, last, started = read_stamps(stamps)
    finally:
        shutil.rmtree(stamps, ignore_errors=True)
        db.drop()
    return (started - 1) / (last - first)


def _check_done(db: Database, rows: int, who: str) -> None:
    done = db.done()
    if done != rows:
        raise RuntimeError(f"{who} left {rows - done} of {rows} rows not done")


# -- the ceiling ------------------------------------------------------------------------------


def run_ceiling(cell: Cell, db: Database, args: argparse.Namespace, log: Path) -> float:
    """One run of the minimal loop on ``cell``'s settings (the SQLite loop, or pgbench):
    rows/s."""
    rows = _rows(cell.backend, args)
    url = db.fresh(rows)
    try:
        if cell.backend == "sqlite":
            path = url.removeprefix("sqlite://")
            rate = _processes(sql_ceiling.sqlite_worker, path, cell, args.ack_batch)
        else:
            rate = _pgbench(cell, db, rows, log, args.ack_batch)
        _check_done(db, rows, "the ceiling")
    finally:
        db.drop()
    return rate


def run_floor(cell: Cell, db: Database, args: argparse.Namespace, log: Path) -> float:
    """PostgreSQL only: the same statements through psycopg from a minimal Python loop."""
    rows = _rows(cell.backend, args)
    url = db.fresh(rows)
    try:
        rate = _processes(sql_ceiling.psycopg_worker, url, cell, args.ack_batch)
        _check_done(db, rows, "the psycopg loop")
    finally:
        db.drop()
    return rate


def _processes(target: Callable[..., None], where: str, cell: Cell, ack_batch: int) -> float:
    """``cell.workers`` processes of ``target`` (spawned: no connection crosses a fork),
    started together once each is connected; rows over first start to last end."""
    context = multiprocessing.get_context("spawn")
    go = context.Barrier(cell.workers + 1)
    results: Any = context.Queue()
    procs = [
        context.Process(target=target, args=(where, cell.batch, go, results, ack_batch))
        for _ in range(cell.workers)
    ]
    try:
        for proc in procs:
            proc.start()
        go.wait(timeout=60)
        found = [results.get(timeout=DONE_TIMEOUT) for _ in procs]
    finally:
        for proc in procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join()
    start, end = min(f[0] for f in found), max(f[1] for f in found)
    return float(sum(f[2] for f in found) / (end - start))


def _pgbench(cell: Cell, db: Database, rows: int, log: Path, ack_batch: int) -> float:
    """pgbench with ``cell.workers`` clients, each running its share of the steps and one
    more (whose transaction acknowledges the last row of its last claim): rows over the
    time pgbench took (steps processed / its tps)."""
    assert db.pg is not None
    pgbench = find_binary("pgbench")
    if pgbench is None:
        raise SystemExit("pgbench is missing (Debian: apt-get install postgresql-contrib)")
    script = db.folder / f"claim-{cell.batch}.sql"
    script.write_text(sql_ceiling.pgbench_script(cell.batch, ack_batch))
    argv = [
        pgbench, "-n", "-M", "prepared", "-c", str(cell.workers), "-j", str(cell.workers),
        "-t", str(rows // (cell.workers * cell.batch) + 1), "-f", str(script),
        *sql_ceiling.pgbench_variables(cell.batch),
        "-h", "127.0.0.1", "-p", str(db.pg.port), "-U", "postgres", "bench",
    ]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=300)
    with open(log, "a") as out:
        out.write(result.stdout + result.stderr)
    tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", result.stdout)
    steps = re.search(r"number of transactions actually processed: (\d+)", result.stdout)
    if result.returncode or tps is None or steps is None:
        raise RuntimeError(f"pgbench failed ({result.returncode}): {result.stderr[-500:]}")
    # A client whose extra step still found rows (the others' last claims came short)
    # left that claim's last row running: at most one a client, acknowledged untimed.
    _pg_execute(db.url, "UPDATE servekit_jobs SET state = 'done' WHERE state = 'running'")
    return rows / (int(steps.group(1)) / float(tps.group(1)))


def _rows(backend: str, args: argparse.Namespace) -> int:
    return int(args.rows if backend == "sqlite" else args.pg_rows)


# -- latency ----------------------------------------------------------------------------------


def run_latency(backend: str, db: Database, args: argparse.Namespace, log: Path) -> dict[str, Any]:
    """Enqueue-to-start latency of one unbatched worker, rows enqueued at ``--rate``."""
    url = db.fresh(0)
    stamps = Path(tempfile.mkdtemp(prefix="latency-", dir=db.folder))
    try:
        argv = serve_argv("Latency", url, 1, 1, args.concurrency)
        with serving(argv, stamps, log) as proc, db.open() as producer:
            producer.enqueue({"t": time.time()})  # the warm-up row: the server serves
            until(proc, lambda: bool(_latencies(stamps, 1)), "the warm-up row", log)
            start = time.monotonic()
            for k in range(args.latency_rows):
                time.sleep(max(0.0, start + k / args.rate - time.monotonic()))
                producer.enqueue({"t": time.time()})
            wanted = args.latency_rows + 1
            until(proc, lambda: bool(_latencies(stamps, wanted)), "every row started", log)
        waits = sorted(_latencies(stamps, wanted)[1:])  # the warm-up row is the first
    finally:
        shutil.rmtree(stamps, ignore_errors=True)
        db.drop()
    ms = [w * 1000 for w in waits]
    return {
        "backend": backend,
        "rows": len(ms),
        "rate": args.rate,
        "p50_ms": _percentile(ms, 50),
        "p99_ms": _percentile(ms, 99),
        "max_ms": ms[-1],
        "mean_ms": statistics.fmean(ms),
    }


def _latencies(folder: Path, wanted: int) -> list[float]:
    """The waits noted so far, in order, if there are ``wanted`` of them (else [])."""
    lines = [float(line) for path in folder.glob("latency-*") for line in path.read_text().split()]
    return lines if len(lines) >= wanted else []


def _percentile(ordered: list[float], p: float) -> float:
    index = min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))
    return ordered[index]


# -- the run ----------------------------------------------------------------------------------


@contextlib.contextmanager
def databases(args: argparse.Namespace, folder: Path) -> Iterator[dict[str, Database]]:
    """A Database for each backend wanted; PostgreSQL started (and stopped after)."""
    wanted = {cell.backend for cell in args.cell_list} | (set(BACKENDS) if args.latency else set())
    with contextlib.ExitStack() as stack:
        pg = None
        if "postgresql" in wanted:
            pg = stack.enter_context(pg_server(args.pg_synchronous_commit))
            _pg_execute(pg.url(), "CREATE DATABASE bench")
        yield {name: Database(name, folder, pg) for name in BACKENDS if name in wanted}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="servekit-sql-bench-"))
    log = folder.parent / f"{folder.name}.log"
    started = time.monotonic()
    entries = [
        {"cell": c.key, "servekit": [], "ceiling": [], "floor": [], "failures": []}
        for c in args.cell_list
    ]
    latency: list[dict[str, Any]] = []
    try:
        with databases(args, folder) as dbs:
            for run in range(args.runs):
                for cell, entry in zip(args.cell_list, entries, strict=True):
                    _run_cell(cell, entry, dbs[cell.backend], args, log, ceiling_first=run % 2 == 1)
            if args.latency:
                latency = [run_latency(name, dbs[name], args, log) for name in BACKENDS]
            versions = _versions(dbs)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    for entry in entries:
        for side in ("servekit", "ceiling", "floor"):
            entry[f"{side}_median"] = statistics.median(entry[side]) if entry[side] else None
    meta = _meta(args, time.monotonic() - started, versions, log)
    return {"meta": meta, "cells": entries, "latency": latency}


def _run_cell(
    cell: Cell,
    entry: dict[str, Any],
    db: Database,
    args: argparse.Namespace,
    log: Path,
    *,
    ceiling_first: bool,
) -> None:
    """servekit and the ceiling once each (in turns: which goes first alternates)."""
    sides: list[tuple[str, Callable[..., float]]] = [
        ("servekit", run_servekit),
        ("ceiling", run_ceiling),
    ]
    if cell.backend == "postgresql" and args.floor:
        sides.append(("floor", run_floor))
    for side, run in reversed(sides) if ceiling_first else sides:
        try:
            rate = run(cell, db, args, log)
        except (RuntimeError, sqlite3.Error, OSError) as exc:
            entry["failures"].append(f"{side}: {exc}")
            logger.warning("%s / %s: %s", cell.key, side, exc)
            continue
        entry[side].append(rate)
        logger.info("%-20s %-8s %9s rows/s", cell.key, side, f"{rate:,.0f}")


def _versions(dbs: dict[str, Database]) -> dict[str, str]:
    from importlib.metadata import version

    found = {"servekit": version("servekit"), "sqlite": sqlite3.sqlite_version}
    db = dbs.get("postgresql")
    if db is not None and db.pg is not None:
        import psycopg

        with psycopg.connect(db.pg.url(), autocommit=True) as conn:
            row = conn.execute("SHOW server_version").fetchone()
        found["postgresql"] = "" if row is None else str(row[0])
        found["psycopg"] = psycopg.__version__
    return found


def _meta(
    args: argparse.Namespace, seconds: float, versions: dict[str, str], log: Path
) -> dict[str, Any]:
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
        "python": platform.python_version(),
        "versions": versions,
        "runs": args.runs,
        "rows": {"sqlite": args.rows, "postgresql": args.pg_rows},
        "concurrency": args.concurrency,
        "ack_batch": args.ack_batch,
        "servekit_measured": _source(args),
        "sqlite": "WAL, synchronous=NORMAL, busy_timeout 5 s, BEGIN IMMEDIATE",
        "postgresql": f"fsync on, synchronous_commit={args.pg_synchronous_commit}",
        "latency_rows": args.latency_rows,
        "rate": args.rate,
        "seconds": round(seconds),
        "log": str(log),
    }


def _source(args: argparse.Namespace) -> str:
    """Which servekit the servers ran: --src, or the checkout's commit (and whether its
    src/ had changes not committed)."""
    if args.src:
        return f"--src {args.src}"
    git = ["git", "-C", str(ROOT)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run([*git, "status", "--porcelain", "src"], capture_output=True, text=True)
    return head.stdout.strip() + (" with src/ changes not committed" if dirty.stdout else "")


# -- the report -------------------------------------------------------------------------------


def markdown(results: dict[str, Any]) -> str:
    """The cells (rows/s, the ceiling's, the ratio with its range, the target; on
    PostgreSQL the psycopg loop too) and the latency table, as markdown."""
    header = (
        "| cell | workers | claim batch | servekit rows/s | ceiling rows/s "
        "| x ceiling (range) | >= 0.75x | psycopg loop rows/s | x loop |"
    )
    lines = [header, "|---|---:|---:|---:|---:|---:|---|---:|---:|"]
    keys = {cell.key: cell for cell in CELLS}
    for entry in results["cells"]:
        cell = keys[entry["cell"]]
        mine, ceiling = entry["servekit_median"], entry["ceiling_median"]
        ratio = _ratio(mine, ceiling)
        verdict = "-" if ratio is None else ("met" if ratio >= TARGET_RATIO else "missed")
        floor = entry.get("floor_median")
        to_ceiling = _with_range(ratio, entry["servekit"], entry["ceiling"])
        to_floor = _with_range(_ratio(mine, floor), entry["servekit"], entry.get("floor") or [])
        lines.append(
            f"| {cell.key} | {cell.workers} | {cell.batch} | {_rate(mine)} | {_rate(ceiling)} "
            f"| {to_ceiling} | {verdict} | {_rate(floor)} | {to_floor} |"
        )
    if results.get("latency"):
        lines += ["", *_latency_table(results["latency"])]
    return "\n".join(lines) + "\n"


def _latency_table(found: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| enqueue to handler start | rows, at | p50 ms | p99 ms | max ms | target |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for one in found:
        target = "-"
        if one["backend"] == "postgresql":
            met = "met" if one["p50_ms"] < TARGET_P50_MS else "missed"
            target = f"p50 < {TARGET_P50_MS:.0f} ms: {met}"
        lines.append(
            f"| {one['backend']}, 1 worker, claim batch 1 | {one['rows']}, {one['rate']:.0f}/s "
            f"| {one['p50_ms']:.2f} | {one['p99_ms']:.2f} | {one['max_ms']:.2f} | {target} |"
        )
    return lines


def _ratio(mine: float | None, theirs: float | None) -> float | None:
    return mine / theirs if mine and theirs else None


def _with_range(ratio: float | None, mine: list[float], theirs: list[float]) -> str:
    if ratio is None:
        return "-"
    spread = _spread(mine, theirs)
    if spread is None or len(mine) * len(theirs) < 2:
        return f"{ratio:.2f}"
    return f"{ratio:.2f} ({spread[0]:.2f}-{spread[1]:.2f})"


def _spread(mine: list[float], theirs: list[float]) -> tuple[float, float] | None:
    """The least and the most the ratio could be, over every pair of runs."""
    if not mine or not theirs:
        return None
    ratios = [a / b for a in mine for b in theirs]
    return min(ratios), max(ratios)


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


# -- the command line -------------------------------------------------------------------------


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rows", type=int, default=4096, help="SQLite: rows per run")
    parser.add_argument("--pg-rows", type=int, default=2048, help="PostgreSQL: rows per run")
    parser.add_argument(
        "--no-floor", dest="floor", action="store_false",
        help="PostgreSQL: leave out the psycopg loop",
    )  # fmt: skip
    parser.add_argument("--cells", type=lambda s: s.split(","), help="e.g. sqlite-w1-b1")
    parser.add_argument("--concurrency", default="pool", help="servekit serve's (default pool)")
    parser.add_argument(
        "--ack-batch", type=int, default=1,
        help="servekit serve's --ack-batch (default 1, off); the ceiling groups its "
        "acknowledgements the same way",
    )  # fmt: skip
    parser.add_argument("--pg-synchronous-commit", default="off", choices=("on", "off"))
    parser.add_argument("--no-latency", dest="latency", action="store_false")
    parser.add_argument("--latency-rows", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=200.0, help="latency: rows enqueued a second")
    parser.add_argument(
        "--src", type=Path,
        help="a folder holding the servekit package to measure (say, a git archive of a "
        "commit's src/), instead of the installed one",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--from", dest="source", type=Path, help="report a results file again")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.source:
        sys.stdout.write(markdown(json.loads(args.source.read_text())))
        return
    if args.rows % 256 or args.pg_rows % 256:
        parser.error("--rows and --pg-rows: multiples of 256 (4 processes x 64 rows a claim)")
    args.cell_list = [c for c in CELLS if not args.cells or c.key in args.cells]
    # A SIGTERM stops the run as Ctrl-C does: through every finally, which stop the servers
    # and PostgreSQL and remove the temporary folders.
    signal.signal(signal.SIGTERM, _stop)
    if args.src:
        SRC.append(str(args.src.resolve()))
        sys.path.insert(0, SRC[0])  # the producer's and the checks' servekit.sql too
    results = measure(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    sys.stdout.write(markdown(results))
    logger.info("done in %.0f s; results in %s", results["meta"]["seconds"], args.out)


if __name__ == "__main__":
    main()
