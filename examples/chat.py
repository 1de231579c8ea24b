"""A line-based chat room: every line a client sends goes to everyone else.

    servekit serve examples.chat:Chat --concurrency async --listen 127.0.0.1:7000
    nc 127.0.0.1 7000        # any netcat, in two or more terminals

One asyncio loop holds every connection. A member who stops reading is
dropped once max_write_buffer of messages piles up for them, instead of
making the server hold ever more.
"""

from __future__ import annotations

from typing import ClassVar

from servekit import LimitExceeded
from servekit.aio import AsyncStreamRequestHandler


class Chat(AsyncStreamRequestHandler):
    """One member of the room."""

    room: ClassVar[set[Chat]] = set()
    max_write_buffer = 256 * 1024

    async def handle(self) -> None:
        name = f"{self.client_address[0]}:{self.client_address[1]}"
        self.write(f"welcome, {name}; {len(self.room)} other(s) here\n".encode())
        await self.drain()
        self.room.add(self)
        self.broadcast(f"* {name} joined\n".encode())
        try:
            async for line in self:
                self.broadcast(f"{name}: ".encode() + line)
        finally:
            self.room.discard(self)
            self.broadcast(f"* {name} left\n".encode())

    def broadcast(self, message: bytes) -> None:
        for member in list(self.room):
            if member is self:
                continue
            try:
                member.write(message)
            except LimitExceeded:  # not reading: logged by the limit; drop them
                self.room.discard(member)
                member.close()
