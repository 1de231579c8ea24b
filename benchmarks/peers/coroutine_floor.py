"""The floor of any echo whose handler is a coroutine: a reference, not a framework.

A Protocol fills a buffer and wakes one task per connection through a bare
future; the task awaits that future, writes, and waits again. Nothing else: no
timeouts, no limits, no flow control. Whatever an ``await reader.read()``
handler API costs above a bare ``Protocol`` echo, at least this much of it is
the suspend and resume of the task itself, which no such API can avoid.

For UDP it is the same idea per datagram: a DatagramProtocol that answers
each datagram from a task of its own, the least an ``async def`` datagram
handler can cost above answering inside ``datagram_received``.

Variants: ``asyncio`` and ``uvloop``. TCP, Unix and UDP.
"""

import asyncio
from argparse import Namespace
from typing import cast

import _aio_peer
import _peer


class Floor(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)
        self.buffer = bytearray()
        self.eof = False
        self.waiter: asyncio.Future[None] | None = None
        self.task = asyncio.get_running_loop().create_task(self.serve())

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.buffer:
                if self.eof:
                    return
                self.waiter = loop.create_future()
                await self.waiter
                continue
            data = bytes(self.buffer)
            self.buffer.clear()
            self.transport.write(data)


class DatagramFloor(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.DatagramTransport", transport)
        self.loop = asyncio.get_running_loop()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.loop.create_task(self.reply(data, addr))

    async def reply(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(data, addr)


async def serve(args: Namespace) -> None:
    if args.proto == "udp":
        await _aio_peer.serve_datagrams(DatagramFloor, args)
        return
    server, port = await _aio_peer.open_stream_server(Floor, args)
    await _aio_peer.until_sigterm(args, port)
    server.close()


def main() -> None:
    args = _peer.setup("coroutine_floor", ["asyncio", "uvloop"])
    _aio_peer.run(args.variant, serve(args))


if __name__ == "__main__":
    main()
