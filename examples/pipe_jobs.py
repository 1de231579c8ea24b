"""A request source that is not a socket: jobs read from a named pipe (FIFO).

The shape the module's design note describes, and the one every servekit
source takes: a ``BaseServer`` subclass with ``fileno()`` (readable when a
request waits) and ``get_request()`` (which raises ``BlockingIOError``, as a
non-blocking socket would, when another process or thread took it first).
Combined with a model's mixin it runs on that model, with its stats, its
limits and its graceful stop, and nothing else written, the async engine
included (with an async handler):

    class Server(servekit.ThreadPoolMixIn, PipeJobs): ...
    class AsyncServer(servekit.aio.AsyncServerMixIn, PipeJobs): ...

Each job is one record of RECORD bytes (a line, padded with spaces): a write
of up to PIPE_BUF bytes to a pipe is atomic, and so is a read of exactly that
size, so any number of processes can put jobs in and any number of servers
take them out without ever splitting one.

    python examples/pipe_jobs.py /tmp/jobs --concurrency pool    # or async, threads, ...
    printf '%-63s\\n' 'hello' > /tmp/jobs      # another terminal: logs "job 'hello' done"
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import stat
from typing import Any

import servekit
from servekit.aio import AsyncBaseRequestHandler, AsyncServerMixIn
from servekit.concurrency import ThreadingMixIn, ThreadPoolMixIn

logger = logging.getLogger("pipe_jobs")

#: The size of one job record: well under PIPE_BUF (512 bytes at least, by POSIX).
RECORD = 64


class PipeJobs(servekit.BaseServer):
    """Jobs from the FIFO at ``path``; each is a ``bytes`` record, its address the path."""

    def __init__(self, path: str, RequestHandlerClass: Any) -> None:
        super().__init__(path, RequestHandlerClass)
        if not os.path.exists(path):
            os.mkfifo(path, 0o600)
        elif not stat.S_ISFIFO(os.stat(path).st_mode):
            raise ValueError(f"{path} exists and is not a named pipe")
        # Read and write: the pipe never reports end of file when the last
        # writer closes, and opening does not wait for a writer.
        self._fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)

    def fileno(self) -> int:
        return self._fd

    def get_request(self) -> tuple[bytes, str]:
        record = os.read(self._fd, RECORD)  # BlockingIOError: another server took it
        if len(record) != RECORD:
            # An OSError skips this wake-up, as a lost connection does on a socket.
            logger.warning("dropped %d bytes: a writer broke a %d-byte record", len(record), RECORD)
            raise OSError(errno.EBADMSG, "a broken record")
        return record, self.server_address

    def server_close(self) -> None:
        super().server_close()
        with contextlib.suppress(OSError):
            os.close(self._fd)


class Job(servekit.BaseRequestHandler):
    """Runs one job: here, log it."""

    def handle(self) -> None:
        logger.info("job %r done", self.request.decode().strip())


class AsyncJob(AsyncBaseRequestHandler):
    """The same, for the async engine."""

    async def handle(self) -> None:
        logger.info("job %r done", self.request.decode().strip())


def put(path: str, text: str) -> None:
    """Add a job to the pipe at ``path`` (from any process)."""
    data = text.encode().ljust(RECORD - 1)[: RECORD - 1] + b"\n"
    fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


class ThreadPoolPipeJobs(ThreadPoolMixIn, PipeJobs):
    pass


class ThreadingPipeJobs(ThreadingMixIn, PipeJobs):
    pass


class AsyncPipeJobs(AsyncServerMixIn, PipeJobs):
    pass


MODELS: dict[str, type[PipeJobs]] = {
    "sync": PipeJobs,
    "threads": ThreadingPipeJobs,
    "pool": ThreadPoolPipeJobs,
    "async": AsyncPipeJobs,
}
if hasattr(os, "fork"):
    from servekit.concurrency import ForkingMixIn

    class ForkingPipeJobs(ForkingMixIn, PipeJobs):
        pass

    MODELS["fork"] = ForkingPipeJobs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", help="the named pipe (made if missing)")
    parser.add_argument("--concurrency", default="pool", choices=sorted(MODELS))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    job = AsyncJob if args.concurrency == "async" else Job
    with MODELS[args.concurrency](args.path, job) as server:
        server.shutdown_timeout = 5.0
        logger.info("taking jobs from %s (%s)", args.path, args.concurrency)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            logger.info("interrupted, stopping")


if __name__ == "__main__":
    main()
