"""An async echo server for the many-connections test: raises its own open-file
limit, prints its port, serves until SIGTERM, then prints its peak RSS in KiB."""

from __future__ import annotations

import resource
import signal
import sys
import threading

import servekit
from servekit.aio import AsyncStreamRequestHandler


class Echo(AsyncStreamRequestHandler):
    async def handle(self) -> None:
        async for line in self:
            self.write(line)
            await self.drain()


def main() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    server = servekit.make_server(
        "127.0.0.1:0", Echo, concurrency="async", max_connections=None, backlog=16384
    )
    server.loop = sys.argv[1] if len(sys.argv) > 1 else "auto"
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(server.server_address[1], flush=True)
    server.serve_forever()
    server.server_close()
    print(_peak_rss_kib(), flush=True)


def _peak_rss_kib() -> int:
    """VmHWM, this program's own peak. Not getrusage()'s ru_maxrss: Linux carries that
    across exec, so it would report pytest's size at the fork when that was larger."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


if __name__ == "__main__":
    main()
