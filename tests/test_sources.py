"""A request source that is not a socket (examples/pipe_jobs.py) on every model, the
async engine included: nothing but a BaseServer subclass and a handler, and it gets the
loop, stats, errors, limits and a graceful stop from the model it is combined with."""

from __future__ import annotations

import asyncio
import os
import select
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import servekit
from tests.conftest import WAIT, LogWatcher

sys.path.insert(0, str(Path(__file__).parent.parent / "examples"))
import pipe_jobs


class Pipe:
    """A pipe the handlers (threads or forked children) write their lines to."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()

    def lines(self, count: int) -> list[str]:
        got = b""
        while got.count(b"\n") < count:
            ready, _, _ = select.select([self.read_fd], [], [], WAIT)
            assert ready, f"only {got!r} after {WAIT}s"
            got += os.read(self.read_fd, 4096)
        return sorted(got.decode().splitlines())

    def close(self) -> None:
        os.close(self.read_fd)
        os.close(self.write_fd)


def handler(done: Pipe, gate: Pipe, model: str = "sync") -> Any:
    if model == "async":
        return async_handler(done, gate)

    class Job(servekit.BaseRequestHandler):
        def handle(self) -> None:
            job = self.request.decode().strip()
            if job == "boom":
                os.write(done.write_fd, b"failing boom\n")
                raise RuntimeError("a job that fails")
            if job.startswith("slow"):
                os.write(done.write_fd, f"started {job}\n".encode())
                select.select([gate.read_fd], [], [], WAIT)  # until the test opens the gate
            os.write(done.write_fd, f"done {job}\n".encode())

    return Job


def async_handler(done: Pipe, gate: Pipe) -> type[servekit.aio.AsyncBaseRequestHandler]:
    class AsyncJob(servekit.aio.AsyncBaseRequestHandler):
        async def handle(self) -> None:
            job = self.request.decode().strip()
            if job == "boom":
                os.write(done.write_fd, b"failing boom\n")
                raise RuntimeError("a job that fails")
            if job.startswith("slow"):
                os.write(done.write_fd, f"started {job}\n".encode())
                await asyncio.to_thread(select.select, [gate.read_fd], [], [], WAIT)
            os.write(done.write_fd, f"done {job}\n".encode())

    return AsyncJob


@pytest.fixture(params=sorted(pipe_jobs.MODELS))
def model(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def pipes() -> Iterator[tuple[Pipe, Pipe]]:
    done, gate = Pipe(), Pipe()
    yield done, gate
    done.close()
    gate.close()


def _serve(server: Any) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    return thread


def test_jobs_are_served_counted_and_errors_handled(
    tmp_path: Path, model: str, pipes: tuple[Pipe, Pipe], servekit_log: LogWatcher
) -> None:
    done, gate = pipes
    path = str(tmp_path / "jobs")
    server = pipe_jobs.MODELS[model](path, handler(done, gate, model))
    loop = _serve(server)
    try:
        for n in range(20):
            pipe_jobs.put(path, f"job {n}")
        pipe_jobs.put(path, "boom")
        expected = sorted([*(f"done job {n}" for n in range(20)), "failing boom"])
        assert done.lines(21) == expected
        if model != "fork":  # a child logs in its own process; the parent counts its exit
            assert servekit_log.wait_for("Exception occurred during processing of request")
    finally:
        server.shutdown()
        server.server_close()
        loop.join(WAIT)
    assert server.stats.requests == 21
    assert server.stats.errors == 1


def _stop(server: Any) -> None:
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("stop_model", ["threads", "pool", "fork", "async"])
def test_a_stop_lets_the_jobs_in_flight_finish(
    tmp_path: Path, stop_model: str, pipes: tuple[Pipe, Pipe]
) -> None:
    done, gate = pipes
    path = str(tmp_path / "jobs")
    server = pipe_jobs.MODELS[stop_model](path, handler(done, gate, stop_model))
    server.shutdown_timeout = WAIT
    loop = _serve(server)
    pipe_jobs.put(path, "slow 1")
    pipe_jobs.put(path, "slow 2")
    assert done.lines(2) == ["started slow 1", "started slow 2"]
    # The sync loops drain in server_close(), the async loop before shutdown() returns.
    closing = threading.Thread(target=_stop, args=(server,))
    closing.start()  # waits for the two in flight ...
    os.write(gate.write_fd, b"go\n")  # ... which finish once let go
    closing.join(WAIT)
    loop.join(WAIT)
    assert not closing.is_alive()
    assert done.lines(2) == ["done slow 1", "done slow 2"]


def test_the_pool_limits_apply(
    tmp_path: Path, pipes: tuple[Pipe, Pipe], servekit_log: LogWatcher
) -> None:
    """One worker and no queue: the second job waits in the pipe until the first ends
    (a source that is not a socket does not grow the pool)."""
    done, gate = pipes

    class OneAtATime(pipe_jobs.ThreadPoolPipeJobs):
        max_workers = 1
        max_pending = 0

    server = OneAtATime(str(tmp_path / "jobs"), handler(done, gate))
    loop = _serve(server)
    try:
        pipe_jobs.put(server.server_address, "slow 1")
        pipe_jobs.put(server.server_address, "slow 2")
        assert done.lines(1) == ["started slow 1"]
        assert servekit_log.wait_for("not accepting until one finishes")
        assert server.stats.limits.get("max_pending") == 1  # the loop stopped taking
        assert server.stats.requests == 1
        os.write(gate.write_fd, b"go\ngo\n")
        assert done.lines(3) == ["done slow 1", "done slow 2", "started slow 2"]
    finally:
        server.shutdown()
        server.server_close()
        loop.join(WAIT)


def test_async_max_in_flight_leaves_jobs_in_the_source(
    tmp_path: Path, pipes: tuple[Pipe, Pipe], servekit_log: LogWatcher
) -> None:
    """The async engine's bound for a source that is not a socket: past max_in_flight the
    loop stops calling get_request(), so the next job waits in the pipe, not in a task."""
    done, gate = pipes

    class OneAtATime(pipe_jobs.AsyncPipeJobs):
        max_in_flight = 1

    server = OneAtATime(str(tmp_path / "jobs"), handler(done, gate, "async"))
    loop = _serve(server)
    try:
        pipe_jobs.put(server.server_address, "slow 1")
        pipe_jobs.put(server.server_address, "slow 2")
        assert done.lines(1) == ["started slow 1"]
        assert servekit_log.wait_for("max_in_flight=1 requests in their handlers")
        assert server.stats.limits.get("max_in_flight") == 1
        assert server.stats.requests == 1  # the second is still in the pipe
        os.write(gate.write_fd, b"go\n")
        assert done.lines(3) == ["done slow 1", "done slow 2", "started slow 2"]
        assert servekit_log.wait_for("below max_in_flight=1 again")
    finally:
        server.shutdown()
        server.server_close()
        loop.join(WAIT)
    assert server.stats.requests == 2


@pytest.mark.parametrize("concurrency", ["sync", "threads", "pool", "fork", "async"])
def test_with_model_gives_the_named_class_or_makes_one_once(concurrency: str) -> None:
    """make_server's classes come from with_model(): the stdlib's names for the socket
    sources (no table beside them to forget), a class made once for any other source."""
    prefix = {"sync": "", "threads": "Threading", "pool": "ThreadPool", "fork": "Forking",
              "async": "Async"}[concurrency]  # fmt: skip
    for source in (servekit.TCPServer, servekit.UDPServer):
        made = servekit.with_model(source, concurrency)
        assert made.__name__ == prefix + source.__name__
        assert made.__module__ != "servekit.factory"  # the named class, not a made one
    made = servekit.with_model(pipe_jobs.PipeJobs, concurrency)
    assert made is servekit.with_model(pipe_jobs.PipeJobs, concurrency)
    assert issubclass(made, pipe_jobs.PipeJobs)
    assert made.__name__ == prefix + "PipeJobs"
    with pytest.raises(ValueError, match="unknown concurrency 'greenlets'"):
        servekit.with_model(pipe_jobs.PipeJobs, "greenlets")
