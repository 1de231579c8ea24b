"""10,000 connections held at once against the async engine, all answered."""

from __future__ import annotations

import resource
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

PROGRAMS = Path(__file__).parent / "programs"
CONNECTIONS = 10_000
#: The server's whole peak RSS, interpreter included, with every connection open:
#: about twice what was measured (see the run's "measured" summary), to catch a
#: connection that costs several times what it should, not a drift of a few percent.
PEAK_RSS_BOUND_KIB = 160 * 1024


@pytest.mark.timeout(180)
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_ten_thousand_connections(loop: str, record_property: pytest.RecordProperty) -> None:
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < CONNECTIONS + 200:
        pytest.skip(f"the open-file hard limit is {hard}; {CONNECTIONS} connections need more")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    proc = subprocess.Popen(
        [sys.executable, str(PROGRAMS / "aio_many_server.py"), loop],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    watchdog = threading.Timer(170, proc.kill)
    watchdog.start()
    clients: list[socket.socket] = []
    try:
        port = int(proc.stdout.readline())
        for _ in range(CONNECTIONS):
            client = socket.create_connection(("127.0.0.1", port), timeout=30)
            clients.append(client)
        # Every connection is open at once; now each asks and is answered.
        for i, client in enumerate(clients):
            client.sendall(b"%d\n" % i)
        for i, client in enumerate(clients):
            expected = b"%d\n" % i
            reply = b""
            while len(reply) < len(expected):
                chunk = client.recv(64)
                assert chunk, f"connection {i} closed before its answer"
                reply += chunk
            assert reply == expected
    finally:
        for client in clients:
            client.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        proc.send_signal(signal.SIGTERM)
        out = proc.stdout.read()
        proc.wait(30)
        watchdog.cancel()
    peak_kib = int(out.split()[-1])
    record_property("peak_rss_kib", peak_kib)  # shown in the run's summary (conftest.py)
    record_property("bytes_per_connection", round(peak_kib * 1024 / CONNECTIONS))
    assert peak_kib < PEAK_RSS_BOUND_KIB, f"the server peaked at {peak_kib} KiB"
