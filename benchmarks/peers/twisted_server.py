"""Echo server on Twisted with the epoll reactor: Protocol.dataReceived -> transport.write.

TCP with listenTCP, Unix with listenUNIX, UDP with a DatagramProtocol on listenUDP.
reactor.run() installs Twisted's own SIGTERM handler, which stops the reactor.
"""

import _peer
from twisted.internet import epollreactor
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol


class Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)


class DatagramEcho(DatagramProtocol):
    def datagramReceived(self, datagram: bytes, addr: tuple[str, int]) -> None:
        self.transport.write(datagram, addr)


def main() -> None:
    args = _peer.setup("twisted_server", ["epoll"])
    # Installed explicitly, before anything imports twisted.internet.reactor, so the
    # benchmark does not depend on which reactor Twisted would pick by default.
    epollreactor.install()
    from twisted.internet import reactor

    if args.proto == "udp":
        # The default maxPacketSize of 8192 would truncate larger datagrams.
        port = reactor.listenUDP(
            args.port, DatagramEcho(), interface=args.host, maxPacketSize=_peer.BUFSIZE
        )
    elif args.proto == "unix":
        port = reactor.listenUNIX(args.path, Factory.forProtocol(Echo), backlog=_peer.BACKLOG)
    else:
        port = reactor.listenTCP(
            args.port, Factory.forProtocol(Echo), backlog=_peer.BACKLOG, interface=args.host
        )
    # listen*() has bound and is listening already; getHost() has the port the OS picked.
    bound_port = None if args.proto == "unix" else port.getHost().port
    reactor.callWhenRunning(_peer.ready, args, bound_port)
    reactor.run()


if __name__ == "__main__":
    main()
