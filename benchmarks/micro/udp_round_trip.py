"""One thread: a client sends a datagram, the server takes one pass of its loop, the
client reads the reply. Prints the CPU time per round trip (min and median of 15 runs).

    .venv/bin/python benchmarks/micro/udp_round_trip.py servekit|stdlib

Both servers run the same handler; the client's share of each round trip is the
same, so the difference is the servers'. With no second process and no load
generator, this machine's noise is smallest here. It reaches into servekit's
private loop (``_wait_for_request``), as a measurement of its cost must.
"""

from __future__ import annotations

import os
import selectors
import socket
import socketserver
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # for benchmarks.servekit_echo

from benchmarks.servekit_echo import DatagramEcho

import servekit
from servekit import core
from servekit._wakeup import Waker

if TYPE_CHECKING:
    from collections.abc import Callable

ROUNDS = 20_000
MESSAGE = b"x" * 64


class StdlibEcho(socketserver.BaseRequestHandler):
    """The datagram echo of peers/stdlib_socketserver.py, which runs as a script, not a module."""

    def handle(self) -> None:
        data, sock = self.request
        sock.sendto(data, self.client_address)


def stdlib_pass() -> tuple[Callable[[], None], object]:
    server = socketserver.UDPServer(("127.0.0.1", 0), StdlibEcho)
    selector = selectors.PollSelector()
    selector.register(server, selectors.EVENT_READ)

    def one_pass() -> None:  # socketserver's serve_forever(), one pass
        if selector.select(0.5):
            server._handle_request_noblock()  # type: ignore[attr-defined]
        server.service_actions()

    return one_pass, server.server_address


def servekit_pass() -> tuple[Callable[[], None], object]:
    server = servekit.make_server("udp://127.0.0.1:0", DatagramEcho, concurrency="sync")
    waker = Waker()
    wait = core._readable_wait(server.fileno(), waker.fd)

    def one_pass() -> None:  # BaseServer.serve_forever(), one pass
        if server._wait_for_request(wait, waker, 500):
            server._handle_request_noblock()
        server.service_actions()

    return one_pass, server.server_address


def main() -> None:
    os.sched_setaffinity(0, {0})
    one_pass, address = servekit_pass() if sys.argv[1:] == ["servekit"] else stdlib_pass()
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def run() -> float:
        start = time.thread_time_ns()
        for _ in range(ROUNDS):
            client.sendto(MESSAGE, address)
            one_pass()
            client.recv(100)
        return (time.thread_time_ns() - start) / ROUNDS / 1000

    for _ in range(3):
        run()
    runs = [run() for _ in range(15)]
    sys.stdout.write(
        f"min {min(runs):.2f} us, median {statistics.median(runs):.2f} us a round trip\n"
    )


if __name__ == "__main__":
    main()
