"""servekit's asyncio engine: async handlers under socketserver's hooks.

class Echo(servekit.aio.AsyncStreamRequestHandler):
    async def handle(self):
        async for line in self:
            self.write(line)
            await self.drain()

servekit.make_server("127.0.0.1:8000", Echo, concurrency="async").serve_forever()
"""

from servekit.aio.handlers import (
    AsyncBaseRequestHandler,
    AsyncDatagramRequestHandler,
    AsyncStreamRequestHandler,
)
from servekit.aio.server import (
    AsyncServerMixIn,
    AsyncTCPServer,
    AsyncUDPServer,
    AsyncUnixDatagramServer,
    AsyncUnixStreamServer,
    run,
)
from servekit.aio.stream import Stream

__all__ = [
    "AsyncBaseRequestHandler",
    "AsyncDatagramRequestHandler",
    "AsyncServerMixIn",
    "AsyncStreamRequestHandler",
    "AsyncTCPServer",
    "AsyncUDPServer",
    "AsyncUnixDatagramServer",
    "AsyncUnixStreamServer",
    "Stream",
    "run",
]
