"""A handler's ``self.fork()``: finish the rest of a request in a child process.

The stdlib advises forking in ``handle()`` to finish a slow request outside the
loop; done by hand, the child keeps the listening socket (a restart cannot
bind), returns into the server's loop or runs the parent's ``finish()`` and
``shutdown_request()`` (the connection is shut under the child), is never
reaped, and escapes ``max_children``. This module does it once, for every sync
model (docs/handoff.md):

- before forking: wait (up to ``child_slot_timeout``) while the server's
  children number ``max_children``, and flush the handler's ``wfile`` and the
  standard streams, whose buffers the child would otherwise write again;
- in the child: the server's listening socket, its other connections, the
  loop's wake-up and any other listening socket of the process are given up;
  SIGTERM ends it (the parent's stop sends it), Ctrl-C is the parent's to act
  on; when ``handle()`` returns, the handler's ``finish()`` runs, the
  connection is shut down and closed, and the child exits; if it raises, the
  server's ``handle_error()`` logs it first (ForkingMixIn's children end alike);
- in the parent: its copy of the connection is closed without a shutdown (the
  child still writes to it), a thread waits for the child (by its pid: another
  model's children are not its to reap), and the stop waits for the children
  within ``shutdown_timeout``, then sends SIGTERM, then SIGKILL.

Under ForkingMixIn, and in a child ``fork()`` made, the request already runs in
a process of its own outside the loop: ``fork()`` returns 0 at once.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import stat
import sys
import threading
from typing import TYPE_CHECKING, Any, Final, NoReturn

from servekit.errors import LimitExceeded
from servekit.limits import report
from servekit.stats import Stats

if TYPE_CHECKING:
    from servekit.handlers import BaseRequestHandler

__all__ = [
    "CHILD_SLOT_TIMEOUT",
    "DEFAULT_MAX_CHILDREN",
    "TERM_GRACE",
    "TooManyChildren",
    "end_forked_child",
    "fork",
    "kill_children",
    "stop_children",
    "terminate_children",
    "wait_children",
]

logger = logging.getLogger(__name__)

#: A server without its own ``max_children`` (every model but fork) allows this
#: many forked children at once: ForkingMixIn's default.
DEFAULT_MAX_CHILDREN: Final = 40
#: How long fork() waits for a child to end when ``max_children`` run, unless the
#: server sets ``child_slot_timeout``: a handler blocked longer than a client
#: waits for a first byte is of no use to anyone.
CHILD_SLOT_TIMEOUT: Final = 30.0
#: After SIGTERM, children get this long to exit before SIGKILL (the drain's
#: CUT_GRACE, for the sync model, whose stop the drain does not run).
TERM_GRACE: Final = 5.0


class TooManyChildren(LimitExceeded):
    """``max_children`` forked children still ran after ``child_slot_timeout``."""

    limit = "max_children"


class _Children:
    """The children a server's handlers forked, as the parent sees them.

    One thread per child waits for it by pid: no event tells a parent that a
    child exited without a SIGCHLD handler it may not own, and waitpid(-1)
    would reap another model's children.
    """

    def __init__(self, counters: Stats) -> None:
        self._changed = threading.Condition()
        self._pids: set[int] = set()
        self._reserved = 0  # slots taken by forks under way
        self._counters = counters

    def __len__(self) -> int:
        return len(self._pids)

    def reserve(self, limit: int, timeout: float | None) -> bool:
        """Take a slot for a fork, waiting while ``limit`` are taken; False on timeout."""
        with self._changed:
            if not self._changed.wait_for(
                lambda: len(self._pids) + self._reserved < limit, timeout
            ):
                return False
            self._reserved += 1
            return True

    def release(self) -> None:
        """The fork that reserved a slot failed."""
        with self._changed:
            self._reserved -= 1
            self._changed.notify_all()

    def add(self, pid: int) -> None:
        """The reserved slot is child ``pid``'s: wait for it on a thread of its own."""
        with self._changed:
            self._reserved -= 1
            self._pids.add(pid)
        threading.Thread(
            target=self._reap, args=(pid,), name=f"servekit child {pid}", daemon=True
        ).start()

    def _reap(self, pid: int) -> None:
        try:
            _, status = os.waitpid(pid, 0)
            code = os.waitstatus_to_exitcode(status)
        except ChildProcessError:
            code = 0  # reaped by someone else (SIGCHLD ignored, a waitpid(-1))
        with self._changed:
            self._pids.discard(pid)
            self._changed.notify_all()
        if code != 0:
            self._counters.error()  # the child's handle_error ran there

    def wait_empty(self, timeout: float | None) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: not self._pids, timeout)

    def send(self, signum: int) -> int:
        """Send ``signum`` to every child still running; how many there were."""
        with self._changed:
            pids = list(self._pids)
        for pid in pids:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass
        return len(pids)


_CREATING = threading.Lock()


def _children(server: Any, *, create: bool = False) -> _Children | None:
    children: _Children | None = getattr(server, "_handoff_children", None)
    if children is None and create:
        with _CREATING:  # two handlers forking first at once share one
            children = getattr(server, "_handoff_children", None)
            if children is None:
                children = _Children(server._counters)
                server._handoff_children = children
    return children


# -- the handler's side ---------------------------------------------------------


def fork(handler: BaseRequestHandler) -> int:
    """``handler.fork()``: the child's pid in the parent, 0 in the child."""
    server: Any = handler.server
    request = _connection(handler)
    if getattr(server, "_request_in_child", False):
        return 0  # ForkingMixIn's child, or fork()'s: already outside the loop
    if getattr(handler, "_forked_pid", None) is not None:
        raise RuntimeError("fork() was called already: the rest of this request is the child's")
    children = _children(server, create=True)
    assert children is not None
    limit = getattr(server, "max_children", DEFAULT_MAX_CHILDREN)
    wait = getattr(server, "child_slot_timeout", CHILD_SLOT_TIMEOUT)
    _flush(handler)  # before any wait: what was written goes out at once
    if not children.reserve(limit, wait):
        raise report(server, handler.client_address, TooManyChildren(
            f"max_children={limit} forked children still running after {wait}s"
        ))  # fmt: skip
    try:
        _flush_standard_streams()
        pid = os.fork()
    except BaseException:
        children.release()
        raise
    if pid == 0:
        _become_child(handler, request)
        return 0
    children.add(pid)
    handler._forked_pid = pid  # type: ignore[attr-defined]
    _give_up(server, request)
    return pid


def _connection(handler: BaseRequestHandler) -> socket.socket:
    """The handler's connection, or an error that says why fork() cannot work here."""
    if not hasattr(os, "fork"):
        raise RuntimeError("fork() needs os.fork(), which this platform lacks")
    request = handler.request
    name = type(handler).__name__
    if isinstance(request, tuple):
        raise TypeError(
            f"{name}.fork(): a datagram's reply leaves through the server's own socket, "
            "which a child must not keep; answer it in handle(), or serve with "
            "concurrency='threads' or 'pool'"
        )
    if not isinstance(request, socket.socket) or request.type != socket.SOCK_STREAM:
        raise TypeError(
            f"{name}.fork() hands a stream connection to a child process; "
            f"{type(handler.server).__name__}'s requests are {type(request).__name__}, "
            "not connections"
        )
    return request


def _flush(handler: BaseRequestHandler) -> None:
    """What is buffered now would otherwise go out twice, from each process."""
    wfile = getattr(handler, "wfile", None)
    if wfile is not None and not wfile.closed:
        wfile.flush()


def _flush_standard_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass  # closed or gone: nothing of it to write twice


def _give_up(server: Any, request: socket.socket) -> None:
    """The parent's copy of a connection its child now serves."""
    access = getattr(server, "_access", None)
    if access is not None:
        access.forget(request)  # the child writes its line
    server.close_request(request)  # forgotten: max_connections, stats
    # close() waits for makefile()'s files; detaching closes now, so that the
    # model's shutdown_request() after handle() finds nothing to shut (a
    # shutdown() would end the connection under the child).
    fd = request.detach()
    if fd >= 0:
        os.close(fd)


# -- the child's side -----------------------------------------------------------


def _become_child(handler: BaseRequestHandler, request: socket.socket) -> None:
    """First thing in the child: let go of all the parent serves with."""
    server: Any = handler.server
    handler._forked_child = True
    server._in_forked_child()  # signals, the loop's wake-up; fork() forks no further
    server._handoff_children = None  # the parent's, its lock maybe held by a thread gone
    server._counters = Stats()  # likewise; the parent counts this child by its exit
    listener = getattr(server, "socket", None)
    if isinstance(listener, socket.socket):
        listener.close()
    connections = getattr(server, "_connections", None)
    if connections is not None:
        for conn in connections.keep_only(request):
            _close_descriptor(conn)
    _release_other_listeners()


def _close_descriptor(conn: Any) -> None:
    """Close a connection's descriptor, not through the socket's (maybe overridden) close()."""
    try:
        fd = conn.detach()
    except (AttributeError, OSError, ValueError):
        return
    if fd >= 0:
        os.close(fd)


def _release_other_listeners() -> None:
    """Any listening socket the process still holds (another server's in the same
    process, a prefork worker's other addresses) is replaced by /dev/null: the
    child drops its hold, and no socket object of the parent's is left owning a
    descriptor number the child might reuse."""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return  # not Linux: the server's own listener was closed, which is what matters
    devnull = -1
    try:
        for name in names:
            fd = int(name)
            if _is_listening(fd):
                if devnull < 0:
                    devnull = os.open(os.devnull, os.O_RDWR)
                os.dup2(devnull, fd)
    finally:
        if devnull >= 0:
            os.close(devnull)


def _is_listening(fd: int) -> bool:
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            return False
        sock = socket.socket(fileno=fd)
    except OSError:
        return False
    try:
        return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
    except OSError:
        return False
    finally:
        sock.detach()


def end_forked_child(handler: BaseRequestHandler, error: BaseException | None) -> NoReturn:
    """handle() returned (``error`` None) or raised in a child fork() made: the
    handler's finish(), handle_error() if it raised, the connection shut down and
    closed, and the exit. It never returns into the server's loop."""
    status = 1
    try:
        status = _finish(handler, error)
    finally:
        try:
            handler.server.shutdown_request(handler.request)
        finally:
            _flush_standard_streams()
            os._exit(status)


def _finish(handler: BaseRequestHandler, error: BaseException | None) -> int:
    """The exit status: 1 if handle() or finish() raised, as ForkingMixIn's children."""
    try:
        try:
            handler.finish()
        finally:
            if error is not None:
                raise error
    except Exception:
        handler.server._report_error(handler.request, handler.client_address)
        return 0 if isinstance(sys.exception(), LimitExceeded) else 1
    return 0


# -- the server's stop ------------------------------------------------------------


def wait_children(server: Any, timeout: float | None) -> bool:
    """Wait until no child of ``server``'s handlers runs (True) or ``timeout`` passes."""
    children = _children(server)
    return children is None or children.wait_empty(timeout)


def terminate_children(server: Any) -> int:
    """SIGTERM to the children still running (a stop's cut); how many."""
    children = _children(server)
    return 0 if children is None else children.send(signal.SIGTERM)


def kill_children(server: Any) -> None:
    """SIGKILL to the children that outlived SIGTERM (a handler may catch it), and
    wait for them: a stop leaves none behind."""
    children = _children(server)
    if children is None or not len(children):
        return
    logger.error("%s: killing %d forked child(ren) still running after SIGTERM",
                 server, children.send(signal.SIGKILL))  # fmt: skip
    children.wait_empty(TERM_GRACE)


def stop_children(server: Any) -> None:
    """The stop of a server whose model drains nothing itself (sync): the children
    get shutdown_timeout, then SIGTERM (logged as a cut), then SIGKILL."""
    children = _children(server)
    if children is None or children.wait_empty(server.shutdown_timeout):
        return
    server._cut_late_requests()
    if not children.wait_empty(TERM_GRACE):
        kill_children(server)
