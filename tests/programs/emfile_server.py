"""A threading or async server run with a tiny descriptor limit, driven over stdin.

The model is the first argument ("threads" or "async"). Prints its port, then
answers commands: "count" prints how many times
get_request() was called so far; "release" lets every held request finish.
Held requests answer "ok\\n" when released; later ones answer at once.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import sys
import threading
from typing import Any

import servekit
from servekit.aio import AsyncStreamRequestHandler, AsyncTCPServer

LIMIT = 64
release = threading.Event()
async_release = asyncio.Event()  # bound to the server's loop at its first wait


class Hold(servekit.StreamRequestHandler):
    def handle(self) -> None:
        release.wait(60)
        self.wfile.write(b"ok\n")


class AsyncHold(AsyncStreamRequestHandler):
    async def handle(self) -> None:
        await async_release.wait()
        self.write(b"ok\n")
        await self.drain()


class Counting:
    request_queue_size = 256
    daemon_threads = True
    calls = 0

    def get_request(self) -> tuple[Any, Any]:
        self.calls += 1
        return super().get_request()  # type: ignore[misc]


class CountingThreads(Counting, servekit.ThreadingTCPServer):
    pass


class CountingAsync(Counting, AsyncTCPServer):
    loop = "asyncio"


def main() -> None:
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="%(levelname)s %(message)s")
    resource.setrlimit(resource.RLIMIT_NOFILE, (LIMIT, LIMIT))
    server: Any
    if sys.argv[1] == "async":
        server = CountingAsync(("127.0.0.1", 0), AsyncHold)
    else:
        server = CountingThreads(("127.0.0.1", 0), Hold)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(server.server_address[1], flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "count":
            print(server.calls, flush=True)
        elif command == "release":
            release.set()
            loop = getattr(server, "_aio_loop", None)
            if loop is not None:
                loop.call_soon_threadsafe(async_release.set)
            print("released", flush=True)
    server.shutdown()


if __name__ == "__main__":
    main()
