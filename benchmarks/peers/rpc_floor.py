"""The least a Python ONC RPC server of demo.x costs: a reference, not a server to use.

    python benchmarks/peers/rpc_floor.py --proto tcp|udp --host 127.0.0.1 --port PORT

NULL and ADD of DEMO_PROG version 1 with AUTH_NONE, and nothing else: one thread per TCP
connection (as servekit's pool runs one), or one thread on the UDP socket; blocking
``recv``/``send``; the call's header unpacked with one ``struct`` and not checked beyond
the procedure number; no limits, no other reply status, a single-fragment record assumed.
What it spends per call is what any Python server spends at least, so the RPC benchmark's
distance from it is servekit's own and the distance from it to the C server is Python's.
"""

from __future__ import annotations

import argparse
import signal
import socket
import struct
import sys
import threading

_CALL = struct.Struct(">10I")  # xid, CALL, 2, prog, vers, proc, cred (2), verf (2)
_ADD = struct.Struct(">2i")
_RECORD = struct.Struct(">I")
_LAST = 0x80000000


def answer(call: bytes | memoryview) -> bytes:
    """The reply's body to one call: accepted, AUTH_NONE verifier, SUCCESS, the result."""
    xid, _, _, _, _, proc = _CALL.unpack_from(call)[:6]
    head = struct.pack(">6I", xid, 1, 0, 0, 0, 0)
    if proc == 1:
        a, b = _ADD.unpack_from(call, _CALL.size)
        return head + struct.pack(">i", (a + b + 2**31) % 2**32 - 2**31)
    return head


def serve_connection(conn: socket.socket) -> None:
    buffer = b""
    with conn:
        while True:
            data = conn.recv(65536)
            if not data:
                return
            buffer += data
            while len(buffer) >= 4:
                (mark,) = _RECORD.unpack_from(buffer)
                end = 4 + (mark & ~_LAST)
                if len(buffer) < end:
                    break
                reply = answer(memoryview(buffer)[4:end])
                buffer = buffer[end:]
                conn.sendall(_RECORD.pack(_LAST | len(reply)) + reply)


def serve_tcp(sock: socket.socket) -> None:
    sock.listen(4096)
    while True:
        conn, _ = sock.accept()
        threading.Thread(target=serve_connection, args=(conn,), daemon=True).start()


def serve_udp(sock: socket.socket) -> None:
    while True:
        data, peer = sock.recvfrom(65536)
        sock.sendto(answer(data), peer)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--proto", choices=("tcp", "udp"), required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    kind = socket.SOCK_STREAM if args.proto == "tcp" else socket.SOCK_DGRAM
    sock = socket.socket(socket.AF_INET, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sys.stdout.write(f"READY {args.proto} {args.host} {sock.getsockname()[1]}\n")
    sys.stdout.flush()
    (serve_tcp if args.proto == "tcp" else serve_udp)(sock)


if __name__ == "__main__":
    main()
