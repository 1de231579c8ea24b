"""The bundled examples run, serve, log their address, and stop cleanly on Ctrl-C."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import WAIT, connect, recv_until

EXAMPLES = Path(__file__).parent.parent / "examples"


@pytest.mark.parametrize("concurrency", ["pool", "threads", "fork", "sync"])
def test_echo_example(concurrency: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "echo.py"), "--listen", "127.0.0.1:0",
         "--concurrency", concurrency],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr
    try:
        first = proc.stderr.readline()
        match = re.search(r"listening on tcp://127\.0\.0\.1:(\d+)", first)
        assert match, first
        with connect(("127.0.0.1", int(match.group(1)))) as client:
            client.sendall(b"one\ntwo\n")
            assert recv_until(client, b"two\n") == b"one\ntwo\n"
            # Ctrl-C with a client still connected stops the server all the same.
            proc.send_signal(signal.SIGINT)
            assert proc.wait(WAIT) == 0
    finally:
        proc.kill()
        proc.wait(WAIT)
    assert "interrupted, stopping" in proc.stderr.read()


def test_echo_example_udp() -> None:
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "echo.py"), "--listen", "udp://127.0.0.1:0"],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr
    try:
        match = re.search(r"udp://127\.0\.0\.1:(\d+)", proc.stderr.readline())
        assert match
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(WAIT)
            client.sendto(b"ping", ("127.0.0.1", int(match.group(1))))
            assert client.recv(100) == b"ping"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(WAIT) == 0
    finally:
        proc.kill()
        proc.wait(WAIT)
