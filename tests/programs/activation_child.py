"""A program started the way systemd starts a socket-activated service.

It calls servekit.activation.inherited_sockets() and prints one JSON line:
``{"pid", "sockets": [{"fd", "family", "type", "name", "sockname",
"inheritable"}], "environ", "open_fds"}`` on success, or ``{"pid", "error",
"message", "environ", "open_fds"}`` if it raised. ``environ`` holds the
LISTEN_* variables left after the call, ``open_fds`` which of descriptors
3..9 are still open. With ``--serve`` it then echoes one line on each stream
socket and one datagram on each datagram socket, so the caller can prove the
sockets still work in their new process; every wait is bounded.

Usage: activation_child.py [--names NAME,NAME] [--serve]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import selectors
import socket
import sys
from typing import Any

from servekit.activation import inherited_sockets, listen_fds

WAIT = 10.0
LISTEN_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


def _open_fds() -> list[int]:
    found = []
    for fd in range(3, 10):
        try:
            os.fstat(fd)
        except OSError:
            continue
        found.append(fd)
    return found


def _sockname(sock: socket.socket) -> Any:
    address = sock.getsockname()
    if isinstance(address, tuple):
        return list(address)
    if isinstance(address, bytes):
        return address.decode("latin-1")
    return address


def _describe(sock: socket.socket, name: str) -> dict[str, Any]:
    return {
        "fd": sock.fileno(),
        "family": sock.family.name,
        "type": sock.type.name,
        "name": name,
        "sockname": _sockname(sock),
        "inheritable": os.get_inheritable(sock.fileno()),
    }


def _serve_once(sock: socket.socket) -> None:
    if sock.type == socket.SOCK_STREAM:
        conn, _ = sock.accept()
        with conn:
            conn.settimeout(WAIT)
            data = b""
            while not data.endswith(b"\n"):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
            conn.sendall(data)
    else:
        data, peer = sock.recvfrom(65536)
        sock.sendto(data, peer)


def _serve(sockets: list[socket.socket]) -> None:
    """Serve each socket once, in whatever order the clients arrive."""
    with selectors.DefaultSelector() as selector:
        for sock in sockets:
            sock.settimeout(WAIT)
            selector.register(sock, selectors.EVENT_READ)
        pending = len(sockets)
        while pending:
            ready = selector.select(WAIT)
            if not ready:
                raise TimeoutError(f"{pending} socket(s) got no client within {WAIT} s")
            for key, _ in ready:
                client_ready = key.fileobj
                assert isinstance(client_ready, socket.socket)
                _serve_once(client_ready)
                selector.unregister(client_ready)
                pending -= 1


def main() -> int:
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="%(levelname)s %(message)s")
    parser = argparse.ArgumentParser()
    parser.add_argument("--names", help="comma-separated names to keep")
    parser.add_argument("--serve", action="store_true")
    args = parser.parse_args()
    names = args.names.split(",") if args.names is not None else None
    report: dict[str, Any] = {"pid": os.getpid()}
    try:
        # The names as the library reads them; the environment stays for the real call.
        names_by_fd = {s.fd: s.name for s in listen_fds(unset_environment=False)}
        sockets = inherited_sockets(names)
    except ValueError as exc:
        sockets = []
        report.update(error=type(exc).__name__, message=str(exc))
    else:
        report["sockets"] = [_describe(s, names_by_fd.get(s.fileno(), "?")) for s in sockets]
    report["environ"] = {name: os.environ.get(name) for name in LISTEN_VARIABLES}
    report["open_fds"] = _open_fds()
    print(json.dumps(report), flush=True)
    if args.serve:
        _serve(sockets)
    for sock in sockets:
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
