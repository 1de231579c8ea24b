"""A line handler's files, servekit's (with the stream limits on) against the stdlib's:
eight 64-byte lines sent at once over a socket pair, each read with ``readline()`` and
written back, in one thread. Prints the CPU time per line (min and median of 25 runs).

    .venv/bin/python benchmarks/micro/line_round_trip.py servekit|stdlib

Eight lines a send keep the system calls' share, and so the noise, small: what is
left is mostly the Python each line goes through.
"""

from __future__ import annotations

import os
import socket
import statistics
import sys
import time
from typing import Any

from servekit.handlers import _SocketWriter
from servekit.limits import (
    ConnectionLimits,
    IdleSocket,
    LimitedReader,
    LimitedSocketIO,
    kernel_timeouts,
)

LINES = 20_000
LINE = b"x" * 63 + b"\n"
BLOCK = LINE * 8


class Server:
    """What the limits report to: the make_server defaults of a server."""

    idle_timeout = 300.0
    _counters = None


def files(sock: socket.socket, which: str) -> tuple[Any, Any]:
    if which == "stdlib":
        return sock.makefile("rb", -1), _SocketWriter(sock)
    server = Server()
    sock.__class__ = IdleSocket.for_server(server)  # as TCPServer does at accept()
    kernel_timeouts(sock, server.idle_timeout)
    limits = ConnectionLimits(
        sock, idle=server.idle_timeout, read=30, max_line=65536, server=server, client=None
    )
    raw = LimitedSocketIO(limits)
    return LimitedReader(raw, limits, 8192), raw


def main() -> None:
    os.sched_setaffinity(0, {0})
    client, served = socket.socketpair()
    rfile, wfile = files(served, "servekit" if sys.argv[1:] == ["servekit"] else "stdlib")
    lines = iter(rfile)

    def run() -> float:
        start = time.thread_time_ns()
        for _ in range(LINES // 8):
            client.sendall(BLOCK)
            for _ in range(8):
                wfile.write(next(lines))
            client.recv(len(BLOCK))
        return (time.thread_time_ns() - start) / LINES / 1000

    for _ in range(3):
        run()
    runs = [run() for _ in range(25)]
    sys.stdout.write(f"min {min(runs):.2f} us, median {statistics.median(runs):.2f} us a line\n")


if __name__ == "__main__":
    main()
