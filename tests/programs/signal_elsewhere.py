"""`servekit serve` in this process's main thread, and a thread of the program's own
(which, unlike the serving threads, does not block signals) that sends itself
SIGTERM once the server listens. The kernel runs the signal's C handler in that
thread; CPython then runs the Python handler in the main thread at its next
bytecode, but wakes no wait of the main thread: the command line must look on its
own. The thread signals once a client has been served, when the main thread waits.
Usage: signal_elsewhere.py APP; serves APP (a line echo) on 127.0.0.1; exit status 0
once stopped."""

from __future__ import annotations

import logging
import re
import signal
import socket
import sys
import threading

from servekit import cli

listening = threading.Event()
port = 0


class _Listening(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        global port
        found = re.match(r"listening on tcp://127\.0\.0\.1:(\d+)", record.getMessage())
        if found:
            port = int(found.group(1))
            listening.set()


def _terminate_from_here() -> None:
    if not listening.wait(30):
        return
    with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
        client.sendall(b"served?\n")
        client.recv(100)
    signal.pthread_kill(threading.get_ident(), signal.SIGTERM)


logging.getLogger("servekit").addHandler(_Listening())
threading.Thread(target=_terminate_from_here, daemon=True).start()
cli.main(["serve", sys.argv[1], "--listen", "127.0.0.1:0", "--status-interval", "none"])
