"""Draining at a stop: let the requests in flight finish, then cut them.

One policy for every model: wait up to ``shutdown_timeout`` for the requests
in flight, cut what is still running (``server._cut_late_requests()``, which
closes their connections and logs how many), give the handlers ``CUT_GRACE``
to notice, and then say what is left. It is written as a generator, in the
manner of a sans-IO protocol: it yields how long to wait, and is sent whether
everything finished in that time; each engine drives it with its own way of
waiting (joining threads, reaping children, awaiting tasks).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator
from time import monotonic
from typing import Any

from servekit import _handoff
from servekit._signalguard import SIGNAL_LOOK, SignalGuard

__all__ = ["CUT_GRACE", "Plan", "drain", "plan"]

logger = logging.getLogger(__name__)

#: After shutdown_timeout, connections are cut; their handlers then get this
#: long to notice (a read returns EOF, a write fails) and return.
CUT_GRACE = 5.0

#: Yields the seconds to wait (None: for ever); is sent True when all finished.
Plan = Generator[float | None, bool, bool]


def plan(server: Any, *, cut: Callable[[], object] | None = None) -> Plan:
    """The steps of draining ``server``; returns (as StopIteration's value) whether
    every request ended. ``cut`` replaces ``server._cut_late_requests`` (the async
    engine's, after a second Ctrl-C has cut them already)."""
    if (yield server.shutdown_timeout):
        return True
    (cut or server._cut_late_requests)()
    if (yield CUT_GRACE):
        return True
    logger.error("%s: requests still running %ss after their connections were cut",
                 server, CUT_GRACE)  # fmt: skip
    return False


def drain(server: Any, wait: Callable[[float | None], bool]) -> bool:
    """Drive plan() with a blocking ``wait(timeout)``, which returns True once every
    request has finished, False if ``timeout`` passed first. The children of
    handlers' fork() (servekit._handoff) are waited for within the same time, cut
    with the connections (cut_requests), and killed if they outlive the grace.

    In the main thread, where Python runs signal handlers, the handlers are held
    off for the whole drain and run at its own points, between two waits of at
    most SIGNAL_LOOK: a KeyboardInterrupt raised anywhere else (inside a
    Condition's bookkeeping, a thread's join, the cut's log line) could leave a
    lock taken or a running thread marked stopped; and a signal that woke no wait
    (it landed just before the wait blocked) is still seen within SIGNAL_LOOK."""
    steps = plan(server)
    wait = _with_forked_children(server, wait)
    guard = SignalGuard.for_this_thread()  # None outside the main thread
    try:
        if guard is not None:
            guard.hold()
            wait = _looking_between(wait, guard)
        timeout = next(steps)
        while True:
            timeout = steps.send(wait(timeout))
    except StopIteration as done:
        _handoff.kill_children(server)
        return bool(done.value)
    finally:
        if guard is not None:
            guard.uninstall()  # a signal since the last look: its handler runs here


def _with_forked_children(
    server: Any, wait: Callable[[float | None], bool]
) -> Callable[[float | None], bool]:
    def both(timeout: float | None) -> bool:
        deadline = None if timeout is None else monotonic() + timeout
        done = wait(timeout)
        left = None if deadline is None else max(0.0, deadline - monotonic())
        return _handoff.wait_children(server, left) and done

    return both


def _looking_between(
    wait: Callable[[float | None], bool], guard: SignalGuard
) -> Callable[[float | None], bool]:
    """``wait`` in slices of SIGNAL_LOOK, running the signal handlers ``guard``
    held off (a second Ctrl-C's KeyboardInterrupt) between two."""

    def sliced(timeout: float | None) -> bool:
        deadline = None if timeout is None else monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - monotonic())
            last = left is not None and left <= SIGNAL_LOOK
            done = wait(left if last else SIGNAL_LOOK)
            guard.release()  # the look
            guard.hold()
            if done or last:
                return done

    return sliced
