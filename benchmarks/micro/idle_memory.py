"""What one held, idle connection costs the async engine, in traced bytes.

    .venv/bin/python benchmarks/micro/idle_memory.py [uvloop|asyncio] [--top N]

Serves the benchmark's ``AsyncEcho`` in a thread, opens 2,000 connections, has
each answered once, and compares ``tracemalloc`` snapshots from before and after,
leaving out what this script's own client sockets take. ``--top N`` lists the N
largest allocation sites, per connection, with where they were made.
"""

from __future__ import annotations

import argparse
import gc
import socket
import sys
import threading
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # for benchmarks.servekit_echo

from benchmarks.servekit_echo import AsyncEcho

import servekit

CONNECTIONS = 2000
WARM = 50  # opened first, so that what the first connections make once is not counted


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("loop", nargs="?", default="uvloop", choices=["uvloop", "asyncio"])
    parser.add_argument("--top", type=int, default=0)
    args = parser.parse_args()
    server = servekit.make_server(
        "127.0.0.1:0", AsyncEcho, concurrency="async", max_connections=None, backlog=4096
    )
    server.loop = args.loop  # type: ignore[attr-defined]
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    address = server.server_address
    warm = [socket.create_connection(address) for _ in range(WARM)]
    for client in warm:
        client.sendall(b"x")
        client.recv(10)
    gc.collect()
    tracemalloc.start(25)
    before = tracemalloc.take_snapshot()
    clients = [socket.create_connection(address) for _ in range(CONNECTIONS)]
    for client in clients:
        client.sendall(b"x")
    for client in clients:
        client.recv(10)  # answered: the server has its connection, task and handler
    deadline = time.monotonic() + 10
    while server.stats.connections_open < CONNECTIONS + WARM and time.monotonic() < deadline:
        time.sleep(0.05)  # a measurement's wait, bounded, not a test's synchronisation
    gc.collect()
    after = tracemalloc.take_snapshot()
    mine = [tracemalloc.Filter(False, __file__, all_frames=True)]
    diff = after.filter_traces(mine).compare_to(before.filter_traces(mine), "traceback")
    total = sum(d.size_diff for d in diff)
    out = sys.stdout
    out.write(f"{args.loop}: {total / CONNECTIONS:.0f} bytes per held connection\n")
    for d in sorted(diff, key=lambda d: -d.size_diff)[: args.top]:
        out.write(f"{d.size_diff / CONNECTIONS:7.0f} B  {d.count_diff / CONNECTIONS:5.2f} blocks\n")
        for line in d.traceback.format()[-6:]:
            out.write(f"        {line}\n")
    for client in clients + warm:
        client.close()
    server.shutdown()
    serving.join()


if __name__ == "__main__":
    main()
