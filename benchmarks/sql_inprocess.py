"""Rows per second of the SQL source served in one process, without the command line.

    PYTHONPATH=<export>/src .venv/bin/python benchmarks/sql_inprocess.py sync 4000 [BATCH [ACK]]
    PYTHONPATH=<export>/src .venv/bin/python benchmarks/sql_inprocess.py pool 50000 --no-sql

Enqueues ROWS rows into a new SQLite file, serves them with ``make_server(URL, handler,
concurrency=MODEL, claim_batch=BATCH, ack_batch=ACK)`` (ACK 1 unless given) and
``serve_forever()``, and prints the rows per
second from the first row's start to the last's, and the CPU time of the process a row
(every thread's). For quick same-run A/B of the source's per-row path: run it in turns
against two exports (``git archive REV src``); ``sql_bench.py`` is the full benchmark.

``--no-sql``: the server's backend claims and acknowledges without any SQL (each claim
returns a ready-made ``Job``), so what is measured is servekit's own cost a row around the
database: the loop, the hooks, the handler, the source's bookkeeping.
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from typing import Any

import servekit
from servekit.sql import Job, open_backend


class NoSQL:
    """A stand-in for the server's backend: ``rows`` rows, claimed and acknowledged in
    memory; every other call goes to the real backend (waits, close)."""

    def __init__(self, real: Any, rows: int) -> None:
        self._real, self._rows, self._claimed = real, rows, 0
        self._now = datetime.now(UTC)

    def _next(self, limit: int) -> list[Job]:
        count = min(limit, self._rows - self._claimed)
        first, self._claimed = self._claimed, self._claimed + count
        now = self._now
        return [
            Job(i, "default", {"i": i}, 1, 5, 0, now, now, now) for i in range(first, first + count)
        ]

    def claim(self, limit: int = 1, lease: float = 30.0) -> list[Job]:
        return self._next(limit)

    def complete_and_claim(self, jobs: Any, limit: int = 1, lease: float = 30.0) -> Any:
        return list(jobs), self._next(limit)

    def complete(self, job: Job) -> bool:
        return True

    def wait(self, timeout: float | None) -> bool:
        return self._claimed < self._rows or self._real.wait(timeout)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def main(argv: list[str]) -> None:
    no_sql = "--no-sql" in argv
    argv = [arg for arg in argv if arg != "--no-sql"]
    model = argv[0] if argv else "sync"
    rows = int(argv[1]) if len(argv) > 1 else 4000
    batch = int(argv[2]) if len(argv) > 2 else 1
    ack = {"ack_batch": int(argv[3])} if len(argv) > 3 else {}  # older exports lack it
    url = f"sqlite://{tempfile.mkdtemp(prefix='servekit-sql-inprocess-')}/queue.db"
    backend = open_backend(url)
    backend.init()
    if not no_sql:
        backend.enqueue_many({"i": i} for i in range(rows))
    backend.close()
    starts: list[float] = []

    class Note(servekit.BaseRequestHandler):
        def handle(self) -> None:
            starts.append(time.perf_counter())
            if len(starts) == rows:
                threading.Thread(target=self.server.shutdown).start()

    server = servekit.make_server(url, Note, concurrency=model, claim_batch=batch, **ack)
    if no_sql:
        server.backend = NoSQL(server.backend, rows)  # type: ignore[attr-defined]
    cpu = time.process_time()
    server.serve_forever()
    cpu = time.process_time() - cpu
    server.server_close()
    wall = starts[-1] - starts[0]
    rate, per_row = rows / wall, cpu / rows * 1e6
    what = (" (no SQL)" if no_sql else "") + (f", ack batch {ack['ack_batch']}" if ack else "")
    sys.stdout.write(f"{model} batch {batch}{what}: {rate:,.0f} rows/s, CPU {per_row:.1f} us/row\n")


if __name__ == "__main__":
    main(sys.argv[1:])
