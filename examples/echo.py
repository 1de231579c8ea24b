"""A line echo server: the smallest complete servekit program.

    python examples/echo.py --listen 127.0.0.1:8000
    nc 127.0.0.1 8000        # another terminal, any netcat: type lines, they come back

Any listen address works: udp://..., [::]:8000, unix:/tmp/echo.sock, fd://3.
Any concurrency model too: --concurrency async serves the same echo with async
handlers on the asyncio engine. Ctrl-C stops it: requests in flight get
--shutdown-timeout seconds to finish, and a second Ctrl-C cuts them at once.
"""

from __future__ import annotations

import argparse
import logging
import socket
from typing import Any

import servekit
from servekit.aio import AsyncDatagramRequestHandler, AsyncStreamRequestHandler

logger = logging.getLogger("echo")


class LineEcho(servekit.StreamRequestHandler):
    """Send every line back.

    make_server's limits apply: a client idle for 5 minutes, one that takes
    30 s to send a line, or one that sends a line over 64 KiB is disconnected.
    """

    def handle(self) -> None:
        logger.info("client %s connected", self.client_address)
        for line in self.rfile:
            self.wfile.write(line)


class DatagramEcho(servekit.DatagramRequestHandler):
    """Send every datagram back."""

    def handle(self) -> None:
        self.wfile.write(self.rfile.read())


class AsyncLineEcho(AsyncStreamRequestHandler):
    """LineEcho for the async engine: the same limits, one task per connection."""

    async def handle(self) -> None:
        logger.info("client %s connected", self.client_address)
        async for line in self:
            self.write(line)
            await self.drain()  # a client that does not read holds us here, not in memory


class AsyncDatagramEcho(AsyncDatagramRequestHandler):
    async def handle(self) -> None:
        self.wfile.write(self.packet)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:8000", help="listen address")
    parser.add_argument(
        "--concurrency", default="pool", choices=["pool", "threads", "fork", "sync", "async"]
    )
    parser.add_argument(
        "--shutdown-timeout", type=float, default=2.0, metavar="SECONDS",
        help="how long Ctrl-C lets requests in flight finish (default: 2)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    is_async = args.concurrency == "async"
    handler: type[Any] = AsyncLineEcho if is_async else LineEcho
    if servekit.socket_type_of(args.listen) == socket.SOCK_DGRAM:  # udp://, unix-dgram:, ...
        handler = AsyncDatagramEcho if is_async else DatagramEcho
    # Ctrl-C stops accepting; requests in flight get a few seconds to finish.
    server = servekit.make_server(
        args.listen, handler, concurrency=args.concurrency, shutdown_timeout=args.shutdown_timeout
    )
    interrupted = False
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        close(server, interrupted)


def close(server: servekit.BaseServer, interrupted: bool) -> None:
    """server_close(): requests in flight get shutdown_timeout to finish, then
    their connections are cut; a Ctrl-C meanwhile cuts them at once.

    The first "interrupted" line is logged inside the try as well: a second
    Ctrl-C that lands while it is being written counts as one too.
    """
    while True:
        try:
            if interrupted:
                interrupted = False
                logger.info("interrupted, stopping")
            server.server_close()
        except KeyboardInterrupt:
            logger.info("interrupted again, stopping at once")
            server.shutdown_timeout = 0
        else:
            return


if __name__ == "__main__":
    main()
