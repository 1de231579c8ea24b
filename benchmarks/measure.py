"""Running one cell: a fresh server on core 0, the load generator on core 1, and what
the server cost, read from /proc (CPU time and memory of its whole process tree)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from catalog import BUILD, ROOT, Server, Workload

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

logger = logging.getLogger("servekit.benchmarks")

SERVER_CORE, LOADGEN_CORE = "0", "1"
READY_TIMEOUT = 30.0
TICKS = os.sysconf("SC_CLK_TCK")
MESSAGE = b"x" * 63 + b"\n"  # the load generator's 64-byte request


def build() -> None:
    """Compile the C load generator and the C echo server with the system compiler."""
    BUILD.mkdir(exist_ok=True)
    for source, binary in (
        ("benchmarks/loadgen.c", "loadgen"),
        ("benchmarks/peers/epoll_echo.c", "epoll_echo"),
    ):
        subprocess.run(
            [
                "cc",
                "-O2",
                "-Wall",
                "-Wextra",
                "-std=gnu11",
                "-o",
                str(BUILD / binary),
                str(ROOT / source),
            ],
            check=True,
        )


# -- the server's process tree -------------------------------------------------------------


def _tree(root: int) -> list[int]:
    """``root`` and every process descended from it (forked children, prefork workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def cpu_seconds(root: int) -> float:
    """User and system CPU time of the tree, with that of children it has reaped."""
    total = 0
    for pid in _tree(root):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return total / TICKS


def rss_kib(root: int) -> int:
    """Resident memory of the tree: the sum of each process's VmRSS (pages that forked
    processes share are counted in each)."""
    total = 0
    for pid in _tree(root):
        with contextlib.suppress(OSError, StopIteration):
            status = Path(f"/proc/{pid}/status").read_text().splitlines()
            total += int(next(line for line in status if line.startswith("VmRSS")).split()[1])
    return total


class PeakRss:
    """Samples the tree's RSS every 100 ms while the block runs; ``peak`` in KiB."""

    def __init__(self, root: int) -> None:
        self.root, self.peak = root, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, rss_kib(self.root))
            if self._stop.wait(0.1):
                return

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# -- starting and stopping a server --------------------------------------------------------


@dataclass
class Address:
    proto: str
    text: str  # host:port, or a socket path

    @classmethod
    def fresh(cls, proto: str) -> Address:
        if proto == "unix":
            return cls(proto, tempfile.mktemp(prefix="servekit-bench-", suffix=".sock"))
        kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
        with socket.socket(socket.AF_INET, kind) as probe:
            probe.bind(("127.0.0.1", 0))  # the kernel's pick, free a moment ago
            return cls(proto, f"127.0.0.1:{probe.getsockname()[1]}")

    def sockaddr(self) -> Any:
        if self.proto == "unix":
            return self.text
        host, _, port = self.text.rpartition(":")
        return host, int(port)

    def loadgen_args(self) -> list[str]:
        if self.proto == "unix":
            return ["--proto", "unix", "--path", self.text]
        host, port = self.sockaddr()
        return ["--proto", self.proto, "--host", host, "--port", str(port)]


def _answers(address: Address) -> bool:
    """One echo from the server: it is up and serving, not just bound."""
    family = socket.AF_UNIX if address.proto == "unix" else socket.AF_INET
    kind = socket.SOCK_DGRAM if address.proto == "udp" else socket.SOCK_STREAM
    try:
        with socket.socket(family, kind) as probe:
            probe.settimeout(0.5)
            probe.connect(address.sockaddr())
            probe.sendall(MESSAGE)
            received = b""
            while len(received) < len(MESSAGE):
                chunk = probe.recv(len(MESSAGE))
                if not chunk:
                    return False
                received += chunk
            return received == MESSAGE
    except OSError:
        return False


@contextlib.contextmanager
def serving(server: Server, workload: Workload, log: Path) -> Iterator[tuple[int, Address]]:
    """Start ``server`` for ``workload`` pinned to the server core; yield (pid, address)
    once it answers; stop it (SIGTERM, then SIGKILL) on the way out."""
    address = Address.fresh(workload.proto)
    argv = server.argv(workload, address.text)
    try:
        with started(argv, server.name, lambda: _answers(address), log) as pid:
            yield pid, address
    finally:
        with contextlib.suppress(FileNotFoundError):
            if address.proto == "unix":
                os.unlink(address.text)


@contextlib.contextmanager
def started(argv: list[str], name: str, ready: Callable[[], bool], log: Path) -> Iterator[int]:
    """Run ``argv`` pinned to the server core, its stderr to ``log``; yield its pid once
    ``ready()`` says it serves; stop its process group (SIGTERM, then SIGKILL) after."""
    with open(log, "ab") as stderr:
        proc = subprocess.Popen(
            ["taskset", "-c", SERVER_CORE, *argv], cwd=ROOT, stdout=subprocess.DEVNULL,
            stderr=stderr, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while not ready():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start; see {log}")
            time.sleep(0.05)  # polling a server that is starting: nothing to wait on
        yield proc.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# -- the load generator --------------------------------------------------------------------


def load(
    workload: Workload,
    address: Address,
    *,
    duration: float,
    warmup: float,
    on_line: Callable[[str], None],
) -> dict[str, Any]:
    """Run the load generator on the load core; ``on_line`` sees each line it prints
    before its result (MEASURING when the measured window opens, HELD n for idle,
    SLOW n once the slow clients are open)."""
    argv = [
        "taskset",
        "-c",
        LOADGEN_CORE,
        str(BUILD / "loadgen"),
        *address.loadgen_args(),
        "--mode",
        workload.mode,
        "--conns",
        str(workload.conns),
        "--size",
        "64",
        "--duration",
        str(duration),
        "--warmup",
        str(warmup),
        "--hold",
        "1",
        "--timeout",
        "10",
    ]
    if workload.slow:
        argv += ["--slow", str(workload.slow), "--slow-interval", "1"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stderr is not None
    result: dict[str, Any] | None = None
    for line in proc.stdout:
        if line.startswith("{"):
            result = json.loads(line)
            on_line("RESULT")
        else:
            on_line(line.strip())
    errors = proc.stderr.read().strip()
    if proc.wait() != 0 or result is None:
        raise RuntimeError(f"loadgen failed ({proc.returncode}): {errors}")
    if errors:
        result["stderr"] = errors
    return result
