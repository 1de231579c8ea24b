"""Echo server on asyncio's low-level protocols: data_received -> transport.write.

Variants: ``asyncio`` (the default event loop) and ``uvloop`` (the same code on uvloop's loop).
TCP and Unix use create_server / create_unix_server; UDP uses create_datagram_endpoint.
"""

import asyncio
from argparse import Namespace
from typing import cast

import _aio_peer
import _peer


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
    if args.proto == "udp":
        await _aio_peer.serve_datagrams(DatagramEcho, args)
        return
    # Connections have no tasks to wait for: the process exit drops them.
    server, port = await _aio_peer.open_stream_server(Echo, args)
    await _aio_peer.until_sigterm(args, port)
    server.close()


def main() -> None:
    args = _peer.setup("asyncio_protocol", ["asyncio", "uvloop"])
    _aio_peer.run(args.variant, serve(args))


if __name__ == "__main__":
    main()
