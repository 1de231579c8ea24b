"""Rows per second of the SQL source served in one process, without the command line.

    PYTHONPATH=<export>/src .venv/bin/python benchmarks/sql_inprocess.py sync 4000 [BATCH]

Enqueues ROWS rows into a new SQLite file, serves them with ``make_server(URL, handler,
concurrency=MODEL, claim_batch=BATCH)`` and ``serve_forever()``, and prints the rows per
second from the first row's start to the last's, and the CPU time of the process a row
(every thread's). For quick same-run A/B of the source's per-row path: run it in turns
against two exports (``git archive REV src``); ``sql_bench.py`` is the full benchmark.
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time

import servekit
from servekit.sql import open_backend


def main(argv: list[str]) -> None:
    model = argv[0] if argv else "sync"
    rows = int(argv[1]) if len(argv) > 1 else 4000
    batch = int(argv[2]) if len(argv) > 2 else 1
    url = f"sqlite://{tempfile.mkdtemp(prefix='servekit-sql-inprocess-')}/queue.db"
    backend = open_backend(url)
    backend.init()
    backend.enqueue_many({"i": i} for i in range(rows))
    backend.close()
    starts: list[float] = []

    class Note(servekit.BaseRequestHandler):
        def handle(self) -> None:
            starts.append(time.perf_counter())
            if len(starts) == rows:
                threading.Thread(target=self.server.shutdown).start()

    server = servekit.make_server(url, Note, concurrency=model, claim_batch=batch)
    cpu = time.process_time()
    server.serve_forever()
    cpu = time.process_time() - cpu
    server.server_close()
    wall = starts[-1] - starts[0]
    rate, per_row = rows / wall, cpu / rows * 1e6
    sys.stdout.write(f"{model} batch {batch}: {rate:,.0f} rows/s, CPU {per_row:.0f} us/row\n")


if __name__ == "__main__":
    main(sys.argv[1:])
