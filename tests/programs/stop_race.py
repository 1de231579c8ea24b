"""Race a Ctrl-C against a connection being accepted, many times, in one process.

Usage: stop_race.py MODEL ROUNDS [serve_forever|handle_request]. Each round
serves make_server(MODEL) in the main thread, as examples/echo.py does (or in
a loop of handle_request()); a client connects and sends a line
while a SIGINT lands at a delay that sweeps across the accept, hand-off and
thread start. After server_close() the round checks that the stop drained or
cut every connection it accepted: the client got its echo or its connection
closed, no handler thread is left running, and nothing is still open.
Prints one JSON line: the rounds, and those that went wrong and how.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import threading
import time

import servekit

#: A round whose client hears nothing this long after the stop has hung.
BOUND = 5.0

#: The clients' sockets: a forked child closes its copies (_close_clients_in_child),
#: else a client's close never reaches its handler and every fork round waits for
#: the stop to cut the child (shutdown_timeout).
_clients: list[socket.socket] = []


def _close_clients_in_child() -> None:
    for sock in _clients:
        sock.close()


class Echo(servekit.StreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(line)


class Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "still running" in record.getMessage():
            self.lines.append(record.getMessage())


def one_round(model: str, delay: float, errors: Errors, loop: str) -> str | None:
    server = servekit.make_server(
        "127.0.0.1:0", Echo, concurrency=model, shutdown_timeout=0.5, idle_timeout=60
    )
    address = server.server_address
    outcome: list[str] = []
    main = threading.main_thread().ident
    assert main is not None

    def client() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})  # for the main thread
        with socket.socket() as sock:
            _clients.append(sock)  # before the connect, so before any fork that serves it
            sock.settimeout(BOUND)
            sock.connect(address)
            sock.sendall(b"hello\n")
            deadline = time.perf_counter() + delay
            while time.perf_counter() < deadline:
                pass  # the sweep's offset: far below any sleep's resolution
            # At the main thread, where Python runs handlers: sent to the process,
            # a signal may go to a handler thread, and then the main thread sees
            # it only when its wait ends (poll_interval), not where the race is.
            signal.pthread_kill(main, signal.SIGINT)
            try:
                outcome.append("echo" if sock.recv(100) else "closed")
            except TimeoutError:
                outcome.append("hung")
            except OSError:
                outcome.append("closed")

    talker = threading.Thread(target=client)
    try:
        talker.start()
        if loop == "handle_request":
            server.timeout = 0.5  # as poll_interval below: a missed wake-up is seen then
            while True:
                server.handle_request()
        else:
            # The default poll_interval: on a loaded machine the main thread's
            # poll() was, in some rounds, not woken by the SIGINT (with and without
            # the signal guard); the loop then sees it at its next wake-up.
            server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    talker.join(BOUND * 2)
    _clients.clear()
    left = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    if outcome == ["hung"] or talker.is_alive():
        return f"the client heard nothing for {BOUND}s after the stop"
    if left:
        return f"threads still running after server_close(): {left}"
    if server.stats.connections_open:
        return f"{server.stats.connections_open} connection(s) still counted open"
    if errors.lines:
        return errors.lines.pop()
    return None


def main() -> None:
    model, rounds = sys.argv[1], int(sys.argv[2])
    loop = sys.argv[3] if len(sys.argv) > 3 else "serve_forever"
    os.register_at_fork(after_in_child=_close_clients_in_child)
    errors = Errors()
    logging.getLogger("servekit").addHandler(errors)
    logging.getLogger("servekit").setLevel(logging.WARNING)
    bad: list[str] = []
    for n in range(rounds):
        delay = (n % 50) * 20e-6  # 0 to 1 ms in 20 us steps
        try:
            problem = one_round(model, delay, errors, loop)
        except KeyboardInterrupt:  # landed after the loop ended: not this test's race
            problem = None
        if problem is not None:
            bad.append(f"round {n} (delay {delay * 1e6:.0f} us): {problem}")
    print(json.dumps({"rounds": rounds, "bad": bad}))


if __name__ == "__main__":
    main()
