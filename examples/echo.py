"""A line echo server: the smallest complete servekit program.

    python examples/echo.py --listen 127.0.0.1:8000
    printf 'hello\\n' | nc -q1 127.0.0.1 8000      # another terminal

Any listen address works: udp://..., [::]:8000, unix:/tmp/echo.sock, fd://3.
Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import logging

import servekit

logger = logging.getLogger("echo")


class LineEcho(servekit.StreamRequestHandler):
    """Send every line back. A client silent for a minute is disconnected."""

    timeout = 60

    def handle(self) -> None:
        logger.info("client %s connected", self.client_address)
        try:
            for line in self.rfile:
                self.wfile.write(line)
        except TimeoutError:
            logger.info("client %s idle for %ss, closing", self.client_address, self.timeout)


class DatagramEcho(servekit.DatagramRequestHandler):
    """Send every datagram back."""

    def handle(self) -> None:
        self.wfile.write(self.rfile.read())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:8000", help="listen address")
    parser.add_argument("--concurrency", default="threads", choices=["threads", "fork", "sync"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    datagram = servekit.parse_address(args.listen).transport in ("udp", "unix-dgram")
    handler = DatagramEcho if datagram else LineEcho
    with servekit.make_server(args.listen, handler, concurrency=args.concurrency) as server:
        # Ctrl-C should not wait for connected clients to leave.
        server.daemon_threads = True  # type: ignore[attr-defined]
        server.block_on_close = False  # type: ignore[attr-defined]
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            logger.info("interrupted, stopping")


if __name__ == "__main__":
    main()
