"""The bundled examples run, serve, log their address, and stop cleanly on Ctrl-C."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import WAIT, connect, recv_until, running

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


def _serve(*args: str) -> Any:
    return running([sys.executable, "-m", "servekit", "serve", *args], cwd=EXAMPLES.parent)


def test_kvstore_example() -> None:
    with _serve("examples.kvstore:KeyValue", "--listen", "127.0.0.1:0") as (proc, _, port):
        with connect(("127.0.0.1", port)) as client:
            for command, reply in [
                (b"SET colour blue", b"OK"), (b"GET colour", b"VALUE blue"),
                (b"KEYS", b"KEYS colour"), (b"DEL colour", b"OK"),
                (b"GET colour", b"NOT_FOUND"), (b"FLY", (b"ERROR commands: SET <key> <value>, "
                 b"GET <key>, DEL <key>, KEYS")),
            ]:  # fmt: skip
                client.sendall(command + b"\n")
                assert recv_until(client) == reply + b"\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0


def test_syslog_example() -> None:
    with (
        _serve("examples.syslog:Collector", "--listen", "udp://127.0.0.1:0") as (proc, log, port),
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client,
    ):
        client.sendto(b"<28>Nov 25 12:00:00 host app: disk almost full", ("127.0.0.1", port))
        client.sendto(b"no priority at all", ("127.0.0.1", port))
        log.wait_for(r"WARNING syslog: daemon\.warning from 127\.0\.0\.1: .*disk almost full")
        log.wait_for(r"INFO syslog: user\.notice from 127\.0\.0\.1: no priority at all")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0


@pytest.mark.timeout(180)
def test_readme_example_command() -> None:
    """./scripts/example, as the README says, installs and serves; Ctrl-C stops it."""
    command = [str(EXAMPLES.parent / "scripts" / "example"), "--listen", "127.0.0.1:0"]
    with running(command, timeout=150, start_new_session=True) as (proc, _, port):
        with connect(("127.0.0.1", port)) as client:
            client.sendall(b"readme\n")
            assert recv_until(client) == b"readme\n"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(WAIT) == 0


def test_chat_example() -> None:
    with _serve("examples.chat:Chat", "--concurrency", "async", "--listen", "127.0.0.1:0") as (
        proc,
        _,
        port,
    ):
        alice = connect(("127.0.0.1", port))
        assert recv_until(alice).startswith(b"welcome")
        bob = connect(("127.0.0.1", port))
        assert recv_until(bob).endswith(b"1 other(s) here\n")
        assert recv_until(alice).endswith(b"joined\n")
        alice.sendall(b"hello bob\n")
        assert recv_until(bob).endswith(b": hello bob\n")
        bob.close()
        assert recv_until(alice).endswith(b"left\n")
        alice.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0
