"""Echo server on asyncio's low-level protocols: data_received -> transport.write.

Variants: ``asyncio`` (the default event loop) and ``uvloop`` (the same code on uvloop's loop).
TCP and Unix use create_server / create_unix_server; UDP uses create_datagram_endpoint.
"""

import asyncio
import signal
from argparse import Namespace
from typing import cast

import _peer
import uvloop


class Echo(asyncio.Protocol):
    # No TCP_NODELAY here: asyncio and uvloop set it on every TCP transport themselves.

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)

    def data_received(self, data: bytes) -> None:
        # No flow control: a closed-loop client reads each echo before it sends
        # again, so the transport's write buffer never grows past one message.
        self.transport.write(data)


class DatagramEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.DatagramTransport", transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(data, addr)


async def serve(args: Namespace) -> None:
    loop = asyncio.get_running_loop()
    server: asyncio.Server | None = None
    transport: asyncio.BaseTransport | None = None
    if args.proto == "udp":
        transport, _ = await loop.create_datagram_endpoint(
            DatagramEcho, local_addr=(args.host, args.port)
        )
        port = transport.get_extra_info("sockname")[1]
    elif args.proto == "unix":
        server = await loop.create_unix_server(Echo, args.path, backlog=_peer.BACKLOG)
        port = None
    else:
        server = await loop.create_server(Echo, args.host, args.port, backlog=_peer.BACKLOG)
        port = server.sockets[0].getsockname()[1]

    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    _peer.ready(args, port)
    await stop.wait()
    # Stop listening and return: connections have no tasks to wait for, and the
    # process exit drops them. Not `async with server`: its wait_closed() waits for every
    # client to hang up (Python 3.12.1+), which a benchmark's persistent clients never do.
    if server is not None:
        server.close()
    if transport is not None:
        transport.close()


def main() -> None:
    args = _peer.setup("asyncio_protocol", ["asyncio", "uvloop"])
    if args.variant == "uvloop":
        uvloop.run(serve(args))
    else:
        asyncio.run(serve(args))


if __name__ == "__main__":
    main()
