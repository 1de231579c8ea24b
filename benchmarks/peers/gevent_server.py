"""Echo server on gevent: StreamServer for TCP and Unix, DatagramServer for UDP.

No monkey patching: the servers hand each handler a gevent socket already, and
nothing else here blocks. Each connection (and each datagram) gets a greenlet.
"""

import signal
import socket

import _peer
import gevent
from gevent import socket as gsocket
from gevent.server import DatagramServer, StreamServer


def echo(sock: gsocket.socket, address: object) -> None:
    # StreamServer closes the socket when this returns.
    try:
        while data := sock.recv(_peer.BUFSIZE):
            sock.sendall(data)
    except ConnectionError:
        pass  # the client reset the connection: nobody is left to echo to


class DatagramEcho(DatagramServer):
    # DatagramServer reads at most 8192 bytes a datagram (fixed in gevent), so
    # larger datagrams come back truncated.

    def handle(self, data: bytes, address: tuple[str, int]) -> None:
        self.socket.sendto(data, address)


def main() -> None:
    args = _peer.setup("gevent_server", ["gevent"])
    server: StreamServer | DatagramServer
    if args.proto == "udp":
        server = DatagramEcho((args.host, args.port))
    elif args.proto == "unix":
        # StreamServer binds only TCP addresses itself but accepts a listening socket.
        listener = gsocket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(args.path)
        listener.listen(_peer.BACKLOG)
        server = StreamServer(listener, echo)
    else:
        server = StreamServer((args.host, args.port), echo, backlog=_peer.BACKLOG)
    server.start()

    # close() stops accepting and wakes serve_forever(), which returns; the
    # connection greenlets die with the process.
    gevent.signal_handler(signal.SIGTERM, server.close)
    _peer.ready(args, None if args.proto == "unix" else server.address[1])
    server.serve_forever()


if __name__ == "__main__":
    main()
