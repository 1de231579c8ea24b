"""Hold Python's signal handlers off while a request changes hands.

Python runs a signal handler in the main thread between any two bytecodes, so
a Ctrl-C (KeyboardInterrupt) can land inside ``socket.accept()`` after the
kernel returned the descriptor and before a socket object holds it (the
connection leaks), or inside ``Thread.start()`` after the thread took the
request (the loop then closed it under the thread, out of the set a stop
cuts, and the stop hung). While a guard is held, the handlers of the signals
that arrive are recorded, and run when it is released: a few microseconds
later, at a point where every accepted request is either tracked or handed off.

Only the handlers set with ``signal.signal()`` to a Python callable are
deferred (``default_int_handler`` for SIGINT among them); the signals stay
unblocked, so nothing changes for the kernel, other threads, or children.
"""

from __future__ import annotations

import signal
import threading
from typing import TYPE_CHECKING, Any, Final

try:
    # The C functions under signal's: without its enum conversions, a look at
    # every signal's handler is a few microseconds, not hundreds.
    import _signal as _csignal  # type: ignore[import-not-found,unused-ignore]
except ImportError:  # pragma: no cover - an interpreter without CPython's _signal
    _csignal = signal
_getsignal: Any = _csignal.getsignal
_setsignal: Any = _csignal.signal

_SIGNALS = tuple(int(signum) for signum in signal.valid_signals())

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import FrameType

__all__ = ["SIGNAL_LOOK", "SignalGuard"]

#: How often a wait in the main thread looks for a signal. CPython runs a signal's
#: Python handler between bytecodes of the main thread: a signal that lands just
#: before a lock wait blocks (or in a thread that does not block it) interrupts no
#: wait, and is seen only when the wait ends. A wait that must notice signals
#: (a stop's drain, the command line's main thread) waits in slices this long.
SIGNAL_LOOK: Final = 0.2


class SignalGuard:
    """Defers the Python signal handlers while held; use from the main thread only."""

    def __init__(self) -> None:
        self._held = False
        self._pending: list[tuple[Callable[[int, FrameType | None], Any], int]] = []
        self._wrapped: dict[int, tuple[Any, Callable[[int, FrameType | None], Any]]] = {}

    @classmethod
    def for_this_thread(cls) -> SignalGuard | None:
        """A guard with its handlers installed, in the main thread; None elsewhere
        (no signal handler runs in another thread)."""
        if threading.current_thread() is not threading.main_thread():
            return None
        guard = cls()
        guard._install()
        return guard

    def _install(self) -> None:
        for signum in _SIGNALS:
            try:
                handler = _getsignal(signum)
            except (OSError, ValueError):
                continue
            if callable(handler):
                deferring = self._deferring(handler)
                _setsignal(signum, deferring)
                self._wrapped[signum] = (handler, deferring)

    def uninstall(self) -> None:
        """Put the handlers back (those nobody replaced meanwhile) and run what waits."""
        self._restore()
        self.release()

    def abandon(self) -> None:
        """In a child forked while the guard was held: put the handlers back, and
        drop what waits (the parent runs it); the child gets its signals at once."""
        self._restore()
        self._pending.clear()
        self._held = False

    def _restore(self) -> None:
        for signum, (handler, deferring) in self._wrapped.items():
            if _getsignal(signum) is deferring:
                _setsignal(signum, handler)
        self._wrapped.clear()

    def _deferring(
        self, handler: Callable[[int, FrameType | None], Any]
    ) -> Callable[[int, FrameType | None], Any]:
        def deferring(signum: int, frame: FrameType | None) -> Any:
            if self._held:
                self._pending.append((handler, signum))
                return None
            return handler(signum, frame)

        return deferring

    def hold(self) -> None:
        self._held = True

    def release(self) -> None:
        """Stop deferring; run the handlers of the signals that came meanwhile
        (a KeyboardInterrupt one raises comes out of here)."""
        self._held = False
        while self._pending:
            handler, signum = self._pending.pop(0)
            handler(signum, None)
