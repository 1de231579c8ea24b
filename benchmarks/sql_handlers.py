"""The handlers sql_bench.py serves: ``servekit serve benchmarks.sql_handlers:Job``.

Both do nothing with the row but note the time, into files in the folder named by
the ``SERVEKIT_SQL_BENCH_DIR`` environment variable, one file per process (``--workers``
forks after import, so each worker opens its own on its first row):

- ``Job`` keeps three doubles in ``stamps-PID`` (memory-mapped, so a row costs no
  system call): the ``time.time()`` of the first row's start, that of the last row's
  start, and the rows started. The benchmark times the rows from these, so the
  server's start-up and stop are not counted.
- ``Latency`` appends ``time.time() - payload["t"]`` (seconds from the producer's
  enqueue to this handler's start) to ``latency-PID``, a line a row.
"""

from __future__ import annotations

import mmap
import os
import struct
import threading
import time

import servekit

STAMPS = struct.Struct("<3d")  # first start, last start, rows started

_lock = threading.Lock()
_pid = 0
_stamps: mmap.mmap | None = None
_latency_fd = -1


def _folder() -> str:
    return os.environ["SERVEKIT_SQL_BENCH_DIR"]


def _stamp_map() -> mmap.mmap:
    """This process's stamps file, mapped (opened anew in a forked worker)."""
    global _pid, _stamps
    if _stamps is None or _pid != os.getpid():
        fd = os.open(f"{_folder()}/stamps-{os.getpid()}", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.ftruncate(fd, STAMPS.size)
            _stamps = mmap.mmap(fd, STAMPS.size)
        finally:
            os.close(fd)
        _pid = os.getpid()
    return _stamps


class Job(servekit.BaseRequestHandler):
    """A row that does nothing; its start is noted."""

    def handle(self) -> None:
        now = time.time()
        with _lock:  # the pool runs rows on several threads
            stamps = _stamp_map()
            first, _, count = STAMPS.unpack_from(stamps)
            STAMPS.pack_into(stamps, 0, first or now, now, count + 1)


class Latency(servekit.BaseRequestHandler):
    """Notes how long ago the producer enqueued the row (``payload["t"]``)."""

    def handle(self) -> None:
        waited = time.time() - self.request.payload["t"]
        global _latency_fd, _pid
        with _lock:
            if _latency_fd < 0 or _pid != os.getpid():
                path = f"{_folder()}/latency-{os.getpid()}"
                _latency_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                _pid = os.getpid()
            os.write(_latency_fd, f"{waited:.6f}\n".encode())
