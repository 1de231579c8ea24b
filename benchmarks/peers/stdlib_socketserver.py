"""Echo server on the standard library's socketserver, imported directly (not servekit).

Variants:
  threading-base    ThreadingTCPServer / ThreadingUnixStreamServer, BaseRequestHandler
                    (recv/sendall until EOF)
  threading-stream  the same servers, StreamRequestHandler echoing line by line
  forking-base      ForkingTCPServer / ForkingUnixStreamServer, BaseRequestHandler
  udp               UDPServer, one datagram at a time in the serving thread
  threading-udp     ThreadingUDPServer, a thread per datagram
"""

import os
import signal
import socket
import socketserver
from argparse import Namespace
from types import FrameType

import _peer

STREAM_VARIANTS = ["threading-base", "threading-stream", "forking-base"]
DATAGRAM_VARIANTS = ["udp", "threading-udp"]


class EchoHandler(socketserver.BaseRequestHandler):
    """Echo every byte received until the client closes its side."""

    request: socket.socket

    def handle(self) -> None:
        try:
            while data := self.request.recv(_peer.BUFSIZE):
                self.request.sendall(data)
        except ConnectionError:
            pass  # the client reset the connection: not worth a traceback on stderr


class LineEchoHandler(socketserver.StreamRequestHandler):
    """Echo line by line through the buffered rfile/wfile pair.

    StreamRequestHandler's default wbufsize=0 makes wfile unbuffered (each write
    is one sendall), so every line goes out as soon as it is read; no flush needed.
    """

    def handle(self) -> None:
        try:
            for line in self.rfile:
                self.wfile.write(line)
        except ConnectionError:
            pass  # see EchoHandler


class DatagramEchoHandler(socketserver.BaseRequestHandler):
    """Reply with each datagram to its sender."""

    def handle(self) -> None:
        data, sock = self.request
        sock.sendto(data, self.client_address)


class ThreadingTCPServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    request_queue_size = _peer.BACKLOG
    # Daemon threads let the process exit on SIGTERM while clients are still connected
    # (with daemon threads, server_close() has no threads to join).
    daemon_threads = True


class ThreadingUnixStreamServer(socketserver.ThreadingUnixStreamServer):
    request_queue_size = _peer.BACKLOG
    daemon_threads = True


class ForkingTCPServer(socketserver.ForkingTCPServer):
    allow_reuse_address = True
    request_queue_size = _peer.BACKLOG
    # The default of 40 would deadlock a closed-loop benchmark: once 40 persistent
    # clients are connected, the serving loop blocks in waitpid() for a child to exit
    # and stops accepting, and no child exits while its client stays connected.
    # Each connection is a process, so beyond 2000 connections the same stall returns.
    max_children = 2000


class ForkingUnixStreamServer(socketserver.ForkingMixIn, socketserver.UnixStreamServer):
    request_queue_size = _peer.BACKLOG
    max_children = 2000  # see ForkingTCPServer


class UDPServer(socketserver.UDPServer):
    # No allow_reuse_address: for TCP it lets a restarted server bind over TIME_WAIT
    # connections, for UDP it would only let a second server share the port.
    # The default 8192 would truncate larger datagrams; 65536 holds any UDP payload.
    max_packet_size = _peer.BUFSIZE


class ThreadingUDPServer(socketserver.ThreadingUDPServer):
    max_packet_size = _peer.BUFSIZE
    daemon_threads = True


def make_server(args: Namespace) -> socketserver.TCPServer:
    # (UDPServer and UnixStreamServer are TCPServer subclasses in the stdlib.)
    inet = (args.host, args.port)
    match args.proto, args.variant:
        case "tcp", "threading-base":
            return ThreadingTCPServer(inet, EchoHandler)
        case "tcp", "threading-stream":
            return ThreadingTCPServer(inet, LineEchoHandler)
        case "tcp", "forking-base":
            return ForkingTCPServer(inet, EchoHandler)
        case "unix", "threading-base":
            return ThreadingUnixStreamServer(args.path, EchoHandler)
        case "unix", "threading-stream":
            return ThreadingUnixStreamServer(args.path, LineEchoHandler)
        case "unix", "forking-base":
            return ForkingUnixStreamServer(args.path, EchoHandler)
        case "udp", "udp":
            return UDPServer(inet, DatagramEchoHandler)
        case "udp", "threading-udp":
            return ThreadingUDPServer(inet, DatagramEchoHandler)
    kind = "datagram" if args.variant in DATAGRAM_VARIANTS else "stream"
    raise _peer.unsupported(f"variant {args.variant} is {kind}-only, not for --proto {args.proto}")


def on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Python runs signal handlers in the main thread, which is the one inside
    # serve_forever(); SystemExit unwinds it like Ctrl-C would, without a traceback.
    # Forked children inherit this handler: there SystemExit ends the handler, and
    # ForkingMixIn's own finally clause calls os._exit().
    raise SystemExit(0)


def main() -> None:
    variants = STREAM_VARIANTS + DATAGRAM_VARIANTS
    args = _peer.setup("stdlib_socketserver", variants, udp_default="udp")
    signal.signal(signal.SIGTERM, on_sigterm)
    server = make_server(args)
    try:
        _peer.ready(args, None if args.proto == "unix" else server.socket.getsockname()[1])
        server.serve_forever()
    finally:
        # A forking server's children serve persistent clients that are not going to
        # hang up, and server_close() waits for them: end them first.
        if isinstance(server, socketserver.ForkingMixIn):
            for pid in server.active_children or ():
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass  # it exited on its own and waits to be reaped
        server.server_close()


if __name__ == "__main__":
    main()
