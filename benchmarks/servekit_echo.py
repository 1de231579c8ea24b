"""The servekit echo handlers the benchmark serves with ``servekit serve``.

Each is what a user would write: the same echo as the peers in ``peers/``,
through servekit's handler APIs, served by the command line with its
production defaults (limits on, graceful stop, stats).
"""

from __future__ import annotations

import servekit
from servekit.aio import AsyncDatagramRequestHandler, AsyncStreamRequestHandler


class Echo(servekit.BaseRequestHandler):
    """recv/sendall on the socket, as the stdlib's BaseRequestHandler echo does."""

    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


class DatagramEcho(servekit.BaseRequestHandler):
    """Each datagram straight back to its sender, as the stdlib peer's handler does."""

    def handle(self) -> None:
        data, sock = self.request
        sock.sendto(data, self.client_address)


class LineEcho(servekit.StreamRequestHandler):
    """Line by line through rfile and wfile, as the stdlib's StreamRequestHandler echo does."""

    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(line)


class AsyncEcho(AsyncStreamRequestHandler):
    """The async stream API: await a read, write it back, drain."""

    async def handle(self) -> None:
        while data := await self.read(65536):
            self.write(data)
            await self.drain()


class AsyncLineEcho(AsyncStreamRequestHandler):
    """Line by line through the async stream API, as LineEcho goes through rfile: the
    handler the slow clients' line that never ends is aimed at (read_timeout cuts it)."""

    async def handle(self) -> None:
        while line := await self.readline():
            self.write(line)
            await self.drain()


class AsyncDatagramEcho(AsyncDatagramRequestHandler):
    async def handle(self) -> None:
        self.send(self.packet)
