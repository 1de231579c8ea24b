"""``servekit serve --source``: a request source that is not a socket, from the command line,
in one process and under ``--workers``, with each launcher a user has (the module, the
console script, an installed wheel).

The source is examples/pipe_jobs.py as the docs show it, copied into the working
directory; the handlers report each job on a FIFO the test reads.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import WAIT, ProcessLog

sys.path.insert(0, str(Path(__file__).parent.parent / "examples"))
import pipe_jobs

ROOT = Path(__file__).parent.parent

APP = """
import os, select, servekit
from servekit.aio import AsyncBaseRequestHandler

def report(job):
    fd = os.open(os.environ["JOBS_DONE"], os.O_WRONLY)
    try:
        os.write(fd, f"{os.getpid()} {job}\\n".encode())
    finally:
        os.close(fd)

def run(job):
    if job.startswith("slow"):
        report("started " + job)
        gate = os.open(os.environ["JOBS_GATE"], os.O_RDONLY | os.O_NONBLOCK)
        try:
            select.select([gate], [], [], 60)  # until the test writes to the gate
        finally:
            os.close(gate)
    report("done " + job)

class Job(servekit.BaseRequestHandler):
    def handle(self):
        run(self.request.decode().strip())

class AsyncJob(AsyncBaseRequestHandler):
    async def handle(self):
        run(self.request.decode().strip())
"""


class Fifo:
    """A named pipe the test reads lines from (held open for writing too, so a
    handler's open() never waits and its close() is no end of file)."""

    def __init__(self, path: Path) -> None:
        os.mkfifo(path)
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
        self._got = b""

    def lines(self, count: int) -> list[str]:
        while self._got.count(b"\n") < count:
            ready, _, _ = select.select([self.fd], [], [], WAIT)
            assert ready, f"only {self._got!r} after {WAIT}s"
            self._got += os.read(self.fd, 4096)
        *lines, self._got = self._got.split(b"\n", count)
        return [line.decode() for line in lines]

    def close(self) -> None:
        os.close(self.fd)


@contextlib.contextmanager
def serving(
    tmp: Path, launcher: tuple[list[str], dict[str, str]], *args: str, ready: str
) -> Iterator[tuple[subprocess.Popen[str], ProcessLog, Fifo, Fifo]]:
    """``servekit serve ... --source pipe_jobs:PipeJobs --listen jobs`` in ``tmp``, until
    the log says ``ready``; yields (process, log, done FIFO, gate FIFO)."""
    (tmp / "app.py").write_text(APP)
    shutil.copy(ROOT / "examples" / "pipe_jobs.py", tmp / "pipe_jobs.py")
    done, gate = Fifo(tmp / "done"), Fifo(tmp / "gate")
    command, env = launcher
    env = env | {"JOBS_DONE": str(done.path), "JOBS_GATE": str(gate.path)}
    proc = subprocess.Popen(
        [*command, "serve", *args, "--source", "pipe_jobs:PipeJobs", "--listen", "jobs",
         "--status-interval", "none"],
        cwd=tmp, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    log = ProcessLog(proc)
    try:
        log.wait_for(ready)
        yield proc, log, done, gate
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(WAIT)
        done.close()
        gate.close()


def _put(tmp: Path, *jobs: str) -> None:
    for job in jobs:
        pipe_jobs.put(str(tmp / "jobs"), job)


@pytest.mark.timeout(120)
def test_workers_take_jobs_and_a_sigterm_lets_the_one_in_flight_finish(
    tmp_path: Path, launcher: tuple[list[str], dict[str, str]]
) -> None:
    with serving(
        tmp_path, launcher, "app:Job", "--workers", "2", "--concurrency", "pool",
        ready=r"worker 2 \(pid \d+\) is serving",
    ) as (proc, log, done, gate):  # fmt: skip
        workers = {int(m.group(1)) for m in log.wait_for(r"worker \d \(pid (\d+)\) is serving", 2)}
        _put(tmp_path, *(f"job {n}" for n in range(20)))
        lines = [line.split(" ", 1) for line in done.lines(20)]
        assert sorted(job for _, job in lines) == sorted(f"done job {n}" for n in range(20))
        assert {int(pid) for pid, _ in lines} <= workers
        _put(tmp_path, "slow 1")
        assert done.lines(1)[0].endswith("started slow 1")
        proc.send_signal(signal.SIGTERM)
        log.wait_for(r"stopping gracefully", count=2)  # each worker heard it
        os.write(gate.fd, b"go\n")
        assert done.lines(1)[0].endswith("done slow 1")
        assert proc.wait(WAIT) == 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("concurrency", ["async", "threads", "sync"])
def test_one_process_serves_the_source_on_each_model(tmp_path: Path, concurrency: str) -> None:
    handler = "app:AsyncJob" if concurrency == "async" else "app:Job"
    module = ([sys.executable, "-m", "servekit"], {
        "PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1",
    })  # fmt: skip
    with serving(
        tmp_path, module, handler, "--concurrency", concurrency,
        ready=r"serving jobs from PipeJobs",
    ) as (proc, log, done, _):  # fmt: skip
        _put(tmp_path, "a", "b", "c")
        assert sorted(line.split(" ", 1)[1] for line in done.lines(3)) == [
            "done a", "done b", "done c",
        ]  # fmt: skip
        proc.send_signal(signal.SIGUSR1)
        log.wait_for(r"status .*requests=3")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--idle-timeout", "5", "--listen", "jobs"], "--idle-timeout: socket options do nothing"),
        (["--certfile", "x.pem", "--listen", "jobs"], "--certfile: socket options do nothing"),
        ([], "--source needs --listen ADDRESS"),
        (["--listen", "jobs", "--source", "nothing"], "is not MODULE:ATTR"),
        (["--listen", "jobs", "--concurrency", "async"], "Job is a sync handler"),
    ],
)
def test_what_does_not_apply_to_a_source_is_one_error_line(
    tmp_path: Path, args: list[str], message: str
) -> None:
    (tmp_path / "app.py").write_text(APP)
    shutil.copy(ROOT / "examples" / "pipe_jobs.py", tmp_path / "pipe_jobs.py")
    env: dict[str, Any] = {"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-m", "servekit", "serve", "app:Job", "--source", "pipe_jobs:PipeJobs",
         *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=WAIT,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("servekit: error:")]
    assert len(errors) == 1, result.stderr
    assert message in errors[0]
    assert "Traceback" not in result.stderr
