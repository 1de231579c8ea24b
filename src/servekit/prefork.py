"""Prefork: worker processes serving the same listening sockets, under a supervisor.

The supervisor opens the listening sockets, forks the workers, and from then
on serves nothing itself: it watches. Each worker inherits the sockets and
runs ``worker_main``, which builds its servers on them and serves.

Shared inherited sockets, not SO_REUSEPORT: with one socket per worker, the
kernel hashes each new connection to one worker's queue, and the connections
queued on a worker that dies or is replaced are reset. A shared socket keeps
one queue that outlives any worker, so a restart or a roll refuses nothing;
it works for every kind of socket (Unix, UDP, inherited from systemd) too.

Supervisor, by signal:

- SIGTERM, SIGINT: stop. Workers get SIGTERM and drain (stop accepting, let
  requests in flight finish within their shutdown_timeout); a second signal
  kills them at once.
- SIGHUP: replace the workers one by one. A new worker is started and, once
  it says it is serving, an old one is asked to stop: the number serving never
  drops, and a worker imports the application afresh, so new code is served.
- SIGTTIN, SIGTTOU: one worker more, one fewer.
- SIGUSR1: passed on to the workers, which log their statistics.
- SIGUSR2: reopen the log files (after logrotate moved them), and pass it on
  to the workers, which reopen theirs.

A worker that dies is logged (its exit status or signal) and replaced, at
once if it had been serving, after a growing delay if workers keep dying
before they are ready. A worker that does not send a heartbeat within
``worker_timeout`` (its serving loop is stuck) is killed and replaced.

Starting and deploying: the first worker starts alone; only once it serves
are the others started, so an application that cannot start (it does not
import, its handler does not fit) ends the start with that worker's one error
(``boot_error``) and status 2, not a line per worker or a restart loop. Once
the service has served, a new worker that cannot start is a bad deploy, not a
reason to stop: a SIGHUP roll that meets one stops there, the old workers keep
serving, and the error is logged once; the next SIGHUP tries again.

Workers stop when the supervisor dies (SIGKILL, a crash): on Linux the kernel
sends them SIGTERM (``PR_SET_PDEATHSIG``), and everywhere each worker watches
a pipe only the supervisor writes to, whose end of file says it is gone. They
then stop as on SIGTERM: gracefully, within their shutdown_timeout.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import select
import signal
import socket
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple, Protocol

from servekit import _logsetup
from servekit._systemd import Notifier

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["WORKER_BOOT_FAILED", "ReportSink", "Supervisor", "WorkerChannel", "WorkerCounts"]

logger = logging.getLogger(__name__)

#: A worker exits with this status when it cannot start (the application does
#: not import): restarting it would fail the same way, so the supervisor stops.
WORKER_BOOT_FAILED = 3

#: Workers that die before they are ready are restarted after this delay,
#: doubled each time in a row, up to RESTART_DELAY_MAX seconds.
RESTART_DELAY_FIRST = 0.1
RESTART_DELAY_MAX = 10.0
#: How long past shutdown_timeout a stopping worker may take to exit before it
#: is killed: it needs to cut its connections and let its handlers return.
STOP_GRACE = 10.0

#: What the supervisor handles; SIGTERM and SIGINT stop it, the others steer it.
_SUPERVISOR_SIGNALS = frozenset({
    signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR1,
    signal.SIGUSR2,
})  # fmt: skip

_READY = b"R"
_BEAT = b"."
_REPLACE = b"M"  # max_requests served: start my replacement, then retire me
_FAILED = b"E"  # then the error's text, to the end of what the pipe holds
#: A failure's text is cut to this: a pipe write up to PIPE_BUF arrives whole.
_FAILED_MAX = 4000
#: A report (--metrics: a server's counters) is _REPORT, its bytes in lowercase
#: hex, then _REPORT_END: hex holds none of the one-byte messages above, so a
#: report cannot be mistaken for them, nor they for part of one.
_REPORT = b"S"
_REPORT_END = b";"


class WorkerChannel:
    """A worker's line to its supervisor: ready() once, then beat() regularly;
    or failed(message) once, if it cannot start."""

    def __init__(self, fd: int, heartbeat_interval: float) -> None:
        self._fd = fd
        self._interval = heartbeat_interval
        self._last = 0.0

    def ready(self) -> None:
        self._send(_READY)

    def replace_me(self) -> None:
        """Ask to be replaced (max_requests): retired once a new worker serves."""
        self._send(_REPLACE)

    def failed(self, message: str) -> None:
        """The application cannot start; ``message`` says why, in one line."""
        self._send(_FAILED + message.encode("utf-8", "replace")[:_FAILED_MAX])

    def report(self, payload: bytes) -> bool:
        """Pass ``payload`` (opaque here) to the supervisor's ReportSink. False if
        it was not sent: too long to arrive whole (PIPE_BUF), or the pipe is full."""
        message = _REPORT + payload.hex().encode("ascii") + _REPORT_END
        if len(message) > select.PIPE_BUF:
            return False
        try:
            return os.write(self._fd, message) == len(message)
        except (BlockingIOError, BrokenPipeError):
            return False

    def beat(self) -> None:
        """Say the worker is alive; cheap to call often (sends at most once per interval)."""
        now = time.monotonic()
        if now - self._last >= self._interval:
            self._last = now
            self._send(_BEAT)

    def _send(self, data: bytes) -> None:
        try:
            os.write(self._fd, data)
        except (BlockingIOError, BrokenPipeError):
            pass  # the supervisor is gone or behind: it will find out by other means


class ReportSink(Protocol):
    """Where the supervisor hands the workers' reports (see WorkerChannel.report)."""

    def received(self, worker: int, payload: bytes) -> None:
        """Worker number ``worker`` sent ``payload``."""

    def gone(self, worker: int) -> None:
        """Worker number ``worker`` exited; its last report has been received."""


class WorkerCounts(NamedTuple):
    """The supervisor's state, for metrics: workers alive and wanted, and how many
    were started, replaced after exiting unasked, and could not start the application."""

    alive: int
    target: int
    started: int
    restarts: int
    boot_failures: int


@dataclass
class _Worker:
    pid: int
    pipe: int
    number: int
    started: float
    last_beat: float
    ready: bool = False
    retiring: bool = False
    killed_for: str = ""
    boot_error: str | None = None
    replace_asked: bool = False
    report_part: bytes = b""  # a report cut by the end of a read


@dataclass
class _Roll:
    """A SIGHUP in progress: the old workers still to replace."""

    old: deque[int] = field(default_factory=deque)
    waiting_for: int | None = None  # pid of the new worker not yet ready


class Supervisor:
    """Keep ``workers`` processes running ``worker_main(channel)``; see the module doc."""

    def __init__(
        self,
        worker_main: Callable[[WorkerChannel], int],
        *,
        workers: int,
        worker_timeout: float | None = 30.0,
        shutdown_timeout: float | None = 25.0,
        on_exit: Callable[[], None] | None = None,
        reports: ReportSink | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, not {workers}")
        self._worker_main = worker_main
        self.target = workers
        self.worker_timeout = worker_timeout
        self.shutdown_timeout = shutdown_timeout
        self._on_exit = on_exit
        self._reports = reports
        #: systemd's notifications: READY once every worker first serves, RELOADING
        #: and READY around a SIGHUP's roll, STOPPING, and the watchdog from the loop.
        self._notifier = notifier or Notifier(None)
        self._announced = False
        self._restarts = 0
        self._boot_failures = 0
        self._workers: dict[int, _Worker] = {}
        self._spawned = 0
        self._failures = 0
        self._next_spawn = 0.0
        self._signals: deque[int] = deque()
        self._stopping: float | None = None  # when the stop started
        self._roll: _Roll | None = None
        self._boot_failed = False
        self._killed_all = False
        self._ever_ready = False  # a worker has served: a failing one is a bad deploy
        # Workers that served max_requests, to replace one at a time, and the
        # replacement under way: (old pid, new pid).
        self._replace_queue: deque[int] = deque()
        self._replacing: tuple[int, int] | None = None
        self._life_w: int | None = None  # held by the supervisor only; see _watch_supervisor
        self._life_r: int | None = None
        #: Why the first worker could not start the application, when run() returns 2.
        self.boot_error: str | None = None

    def counts(self) -> WorkerCounts:
        """The workers' numbers now (from any thread: plain reads of ints)."""
        return WorkerCounts(
            alive=len(self._workers), target=self.target, started=self._spawned,
            restarts=self._restarts, boot_failures=self._boot_failures,
        )  # fmt: skip

    # -- the supervisor's loop ----------------------------------------------

    def run(self) -> int:
        """Supervise until stopped; return the exit status for the process."""
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in _SUPERVISOR_SIGNALS}
        old_wakeup = signal.set_wakeup_fd(wake_w.fileno())
        self._life_r, self._life_w = os.pipe()
        logger.info("supervisor %d: starting %d worker(s)", os.getpid(), self.target)
        try:
            status = self._loop(wake_r)
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            wake_r.close()
            wake_w.close()
            os.close(self._life_r)
            os.close(self._life_w)
            self._life_r = self._life_w = None
            if self._on_exit is not None:
                self._on_exit()
        logger.info("supervisor %d: stopped", os.getpid())
        return status

    def _on_signal(self, signum: int, frame: object) -> None:
        self._signals.append(signum)

    def _loop(self, wake: socket.socket) -> int:
        while True:
            # Signals first: a SIGTERM to the whole process group reaches the
            # workers too, and their exits must not be taken for crashes.
            status = self._handle_signals()
            if status is not None:
                return status
            self._notifier.beat()
            self._reap()
            if self._boot_failed:
                self._kill_all(signal.SIGKILL)
                self._reap(block=True)
                return 2
            if self._stopping is not None:
                if not self._workers:
                    return 0
                self._check_stop_deadline()
            else:
                self._check_heartbeats()
                self._advance_roll()
                self._advance_replacement()
                self._keep_count()
            self._wait(wake)

    def _wait(self, wake: socket.socket) -> None:
        """Sleep until a signal, a worker's message, or the next thing to check."""
        fds = [wake.fileno(), *(w.pipe for w in self._workers.values())]
        readable, _, _ = select.select(fds, [], [], 0.1 if self._workers else 0.5)
        for fd in readable:
            if fd == wake.fileno():
                try:
                    while wake.recv(64):
                        pass
                except BlockingIOError:
                    pass
            else:
                self._read_pipe(fd)

    def _read_pipe(self, fd: int, worker: _Worker | None = None) -> None:
        if worker is None:
            worker = next((w for w in self._workers.values() if w.pipe == fd), None)
        if worker is None:
            return
        try:
            data = os.read(fd, 8192)
        except BlockingIOError:
            return
        # Reports come from a worker's own thread, not its serving loop: they are
        # no heartbeat, so a stuck loop is still found out.
        data = self._take_reports(worker, data)
        if data:
            worker.last_beat = time.monotonic()
            failed = data.find(_FAILED)
            if failed >= 0:
                worker.boot_error = data[failed + 1 :].decode("utf-8", "replace")
                data = data[:failed]
            if _REPLACE in data and worker.ready and not worker.replace_asked:
                worker.replace_asked = True
                self._replace_queue.append(worker.pid)
            if _READY in data and not worker.ready:
                worker.ready = True
                self._ever_ready = True
                self._failures = 0
                logger.info("worker %d (pid %d) is serving", worker.number, worker.pid)
                self._announce()

    def _announce(self) -> None:
        """READY=1 once, when as many workers serve as were asked for."""
        if self._announced or sum(w.ready for w in self._workers.values()) < self.target:
            return
        self._announced = True
        self._notifier.ready(f"serving: {self.target} worker(s)")

    def _take_reports(self, worker: _Worker, data: bytes) -> bytes:
        """Hand the reports in ``data`` to the sink; return the other messages."""
        failed = data.find(_FAILED)  # its text, to the end, is no report
        head, tail = (data, b"") if failed < 0 else (data[:failed], data[failed:])
        head = worker.report_part + head
        worker.report_part = b""
        rest = []
        while (start := head.find(_REPORT)) >= 0:
            rest.append(head[:start])
            end = head.find(_REPORT_END, start)
            if end < 0:
                worker.report_part = head[start : start + select.PIPE_BUF]
                head = b""
                break
            if self._reports is not None:
                try:
                    self._reports.received(
                        worker.number, bytes.fromhex(head[start + 1 : end].decode())
                    )
                except ValueError:
                    logger.debug("worker %d: a report that is not hex", worker.pid)
            head = head[end + 1 :]
        return b"".join(rest) + head + tail

    # -- workers ------------------------------------------------------------

    def _spawn(self) -> _Worker:
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        self._spawned += 1
        number = self._spawned
        # Block our signals across the fork: until the child has its own
        # handlers, a SIGTERM must wait, not run the supervisor's handler there.
        signal.pthread_sigmask(signal.SIG_BLOCK, _SUPERVISOR_SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:  # the worker
                os.close(read_fd)
                self._become_worker(write_fd)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SUPERVISOR_SIGNALS)
        os.close(write_fd)
        now = time.monotonic()
        worker = _Worker(pid=pid, pipe=read_fd, number=number, started=now, last_beat=now)
        self._workers[pid] = worker
        logger.info("worker %d started (pid %d)", number, pid)
        return worker

    def _become_worker(self, channel_fd: int) -> None:
        """In the child: drop the supervisor's state, run worker_main, never return."""
        status = 1
        try:
            signal.set_wakeup_fd(-1)
            # The supervisor's signals; a hangup of the terminal is its business too.
            for sig in (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR1,
                        signal.SIGUSR2):  # fmt: skip
                signal.signal(sig, signal.SIG_IGN)  # until worker_main installs its own
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SUPERVISOR_SIGNALS)
            for other in self._workers.values():
                os.close(other.pipe)
            _watch_supervisor(self._life_r, self._life_w)
            os.set_blocking(channel_fd, False)
            interval = 1.0 if self.worker_timeout is None else min(1.0, self.worker_timeout / 4)
            status = self._worker_main(WorkerChannel(channel_fd, interval))
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            logger.exception("worker %d crashed", os.getpid())
        finally:
            logging.shutdown()
            os._exit(status)

    def _keep_count(self) -> None:
        serving = [w for w in self._workers.values() if not w.retiring]
        if not self._ever_ready and serving:
            return  # the first worker starts alone: see "Starting and deploying"
        if len(serving) < self.target and time.monotonic() >= self._next_spawn:
            self._spawn()
        elif len(serving) > self.target and self._roll is None and self._replacing is None:
            # (a roll, and a replacement, run one extra)
            newest = max(serving, key=lambda w: w.started)
            self._retire(newest, "fewer workers asked for")

    def _retire(self, worker: _Worker, why: str) -> None:
        worker.retiring = True
        logger.info("worker %d (pid %d): stopping (%s)", worker.number, worker.pid, why)
        _kill(worker.pid, signal.SIGTERM)

    def _reap(self, *, block: bool = False) -> None:
        while self._workers:
            try:
                pid, status = os.waitpid(-1, 0 if block else os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self._workers.pop(pid, None)
            if worker is not None:
                self._read_pipe(worker.pipe, worker)  # what it said before it exited
                os.close(worker.pipe)
                if self._reports is not None:
                    self._reports.gone(worker.number)
                self._worker_exited(worker, status)

    def _worker_exited(self, worker: _Worker, status: int) -> None:
        code = os.waitstatus_to_exitcode(status)
        how = (
            f"exited with status {code}" if code >= 0 else f"killed by {signal.Signals(-code).name}"
        )
        if worker.killed_for:
            how += f" ({worker.killed_for})"
        # A serving worker that exits 0 on its own asked to be replaced (max_requests).
        planned = worker.retiring or self._stopping is not None or (worker.ready and code == 0)
        level = logging.INFO if planned and code == 0 else logging.WARNING
        if code == WORKER_BOOT_FAILED and not worker.ready:
            level = logging.DEBUG  # _worker_could_not_start() says it, once
        logger.log(level, "worker %d (pid %d) %s", worker.number, worker.pid, how)
        if worker.retiring or self._stopping is not None:
            return
        if code == WORKER_BOOT_FAILED and not worker.ready:
            self._boot_failures += 1
            self._worker_could_not_start(worker)
            return
        self._restarts += 1
        if worker.ready:
            self._failures = 0
            self._next_spawn = 0.0  # it was serving: replace it at once
        else:
            self._failures += 1
            delay = min(RESTART_DELAY_FIRST * 2 ** (self._failures - 1), RESTART_DELAY_MAX)
            self._next_spawn = time.monotonic() + delay
            logger.warning("worker died before it was ready; next start in %.1fs", delay)

    def _worker_could_not_start(self, worker: _Worker) -> None:
        """At the start, stop with its error; later, keep the workers that serve."""
        error = worker.boot_error or "the application could not start"
        if not self._ever_ready:
            self.boot_error = error
            self._boot_failed = True
            return
        if self._replacing is not None and self._replacing[1] == worker.pid:
            old = self._workers.get(self._replacing[0])
            self._replacing = None
            logger.error(
                "the replacement for worker %s (it served max_requests) cannot start the "
                "application (%s); the worker serves on. Fix it and send SIGHUP.",
                old.number if old is not None else "?", error,
            )  # fmt: skip
            return
        roll = self._roll
        if roll is not None and roll.waiting_for == worker.pid:
            kept = sum(1 for w in self._workers.values() if not w.retiring)
            logger.error(
                "SIGHUP: a new worker cannot start the application (%s); the roll stops "
                "and %d worker(s) keep serving the code they started with. Fix it and send "
                "SIGHUP again.",
                error, kept,
            )  # fmt: skip
            self._roll = None
            self._notifier.ready(f"reload failed: {kept} worker(s) serve the old code")
            return
        # A replacement for a worker that died: the others serve on, and it is
        # tried again after a growing delay, in case the code is fixed meanwhile.
        self._failures += 1
        delay = min(RESTART_DELAY_FIRST * 2 ** (self._failures - 1), RESTART_DELAY_MAX)
        self._next_spawn = time.monotonic() + delay
        logger.error(
            "worker %d cannot start the application (%s); trying again in %.1fs",
            worker.number, error, delay,
        )  # fmt: skip

    def _check_heartbeats(self) -> None:
        if self.worker_timeout is None:
            return
        now = time.monotonic()
        for worker in list(self._workers.values()):
            silent = now - worker.last_beat
            if silent > self.worker_timeout and not worker.killed_for:
                worker.killed_for = f"no heartbeat for {silent:.1f}s > worker_timeout"
                logger.error(
                    "worker %d (pid %d): no heartbeat for %.1fs (worker_timeout=%ss); killing it",
                    worker.number, worker.pid, silent, self.worker_timeout,
                )  # fmt: skip
                _kill(worker.pid, signal.SIGKILL)

    # -- signals --------------------------------------------------------------

    def _handle_signals(self) -> int | None:
        while self._signals:
            signum = self._signals.popleft()
            name = signal.Signals(signum).name
            if signum in (signal.SIGTERM, signal.SIGINT):
                if self._stopping is not None:
                    logger.warning("%s again: killing the workers now", name)
                    self._kill_all(signal.SIGKILL)
                    self._reap(block=True)
                    return 1
                logger.info("%s: stopping the workers gracefully (again to stop at once)", name)
                self._notifier.stopping()
                self._stopping = time.monotonic()
                self._roll = None
                self._kill_all(signal.SIGTERM)
            elif self._stopping is not None:
                continue
            elif signum == signal.SIGHUP:
                # A roll under way starts over, every worker to replace (the one it was
                # starting may have imported the code before this SIGHUP's), but waits
                # for that one first: a new worker each SIGHUP of a burst, each an extra
                # until its roll ended, made a storm of them.
                pending = self._roll.waiting_for if self._roll is not None else None
                old = deque(w.pid for w in self._workers.values() if not w.retiring)
                logger.info("SIGHUP: replacing %d worker(s) one by one", len(old))
                self._notifier.reloading()
                self._replace_queue.clear()  # the roll replaces them all
                self._replacing = None
                self._roll = _Roll(old=old, waiting_for=pending)
            elif signum == signal.SIGUSR1:
                self._kill_all(signal.SIGUSR1)  # each worker logs its own statistics
            elif signum == signal.SIGUSR2:
                logger.info("SIGUSR2: reopened %d log file(s)", _logsetup.reopen())
                self._kill_all(signal.SIGUSR2)  # each worker reopens its own copies
            elif signum == signal.SIGTTIN:
                self.target += 1
                logger.info("SIGTTIN: %d worker(s) now", self.target)
            elif signum == signal.SIGTTOU and self.target > 1:
                self.target -= 1
                logger.info("SIGTTOU: %d worker(s) now", self.target)
        return None

    def _advance_replacement(self) -> None:
        """Replace a worker that served max_requests: start a new one; once it
        serves, retire the old one. If the new one cannot start, the old one
        serves on (until the next SIGHUP)."""
        if self._roll is not None:
            return
        if self._replacing is not None:
            old_pid, new_pid = self._replacing
            new = self._workers.get(new_pid)
            if new is None:  # it died before it served: again, after the restart delay
                self._replacing = None
                self._replace_queue.appendleft(old_pid)
                return
            if not new.ready:
                return
            self._replacing = None
            old = self._workers.get(old_pid)
            if old is not None and not old.retiring:
                self._retire(old, "served max_requests; replaced")
            return
        while self._replace_queue and time.monotonic() >= self._next_spawn:
            old = self._workers.get(self._replace_queue.popleft())
            if old is not None and not old.retiring:
                self._replacing = (old.pid, self._spawn().pid)
                return

    def _advance_roll(self) -> None:
        """One step of a SIGHUP: start a new worker; once it serves, retire an old one."""
        roll = self._roll
        if roll is None:
            return
        if roll.waiting_for is not None:
            new = self._workers.get(roll.waiting_for)
            if new is not None and not new.ready:
                return  # not serving yet: the old ones keep serving
            roll.waiting_for = None
            if new is not None:
                self._retire_next_old(roll)
        if not roll.old:
            self._roll = None
            logger.info("SIGHUP: all workers replaced")
            self._notifier.ready(f"reloaded: {self.target} worker(s)")
        elif time.monotonic() >= self._next_spawn:
            roll.waiting_for = self._spawn().pid

    def _retire_next_old(self, roll: _Roll) -> None:
        while roll.old:
            old = self._workers.get(roll.old.popleft())
            if old is not None and not old.retiring:
                self._retire(old, "replaced by a new worker")
                return

    def _check_stop_deadline(self) -> None:
        if self._stopping is None or self.shutdown_timeout is None or self._killed_all:
            return
        # Workers cut their own connections at shutdown_timeout and need a
        # moment more to exit (STOP_GRACE); past that, they are stuck.
        if time.monotonic() - self._stopping > self.shutdown_timeout + STOP_GRACE:
            logger.error("workers still running after shutdown_timeout; killing them")
            self._kill_all(signal.SIGKILL)
            self._killed_all = True

    def _kill_all(self, sig: int) -> None:
        for pid in list(self._workers):
            _kill(pid, sig)


def _watch_supervisor(life_r: int | None, life_w: int | None) -> None:
    """In a worker: stop gracefully (SIGTERM to ourselves) when the supervisor dies."""
    supervisor = os.getppid()
    if life_w is not None:
        os.close(life_w)  # only the supervisor may hold it, or its end never comes
    _ask_for_death_signal()
    if os.getppid() != supervisor:  # it died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)
    if life_r is None:
        return
    main = threading.main_thread().ident
    assert main is not None

    def watch() -> None:
        # The stop signal must reach the main thread, which minds signals: a
        # thread that does not block it may be handed it and wake nobody.
        signal.pthread_sigmask(signal.SIG_BLOCK, _SUPERVISOR_SIGNALS)
        try:
            while os.read(life_r, 1):
                pass
        except OSError:
            return
        logger.warning("worker %d: the supervisor is gone; stopping", os.getpid())
        signal.pthread_kill(main, signal.SIGTERM)

    threading.Thread(target=watch, name="supervisor watch", daemon=True).start()


_PR_SET_PDEATHSIG = 1


def _ask_for_death_signal() -> None:
    """Linux: have the kernel send SIGTERM when the supervisor dies (prctl(2))."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        pass  # the pipe watch covers it


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except OSError as exc:
        if exc.errno != errno.ESRCH:
            raise
