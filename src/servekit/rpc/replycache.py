"""The duplicate-request cache of datagram servers: a retransmitted call is answered
again from here, not run again.

Over UDP a client that hears nothing sends its call again; a call that is not
idempotent (append a record, move money) must not run twice. The cache keeps the
replies to recent calls by what libtirpc's ``svc_dg_enablecache`` keys them on:
xid, program, version, procedure and the caller's address. A retransmission that
arrives while its call still runs is dropped (the reply is on its way); one that
arrives after is answered with the reply that was sent.

It lives in the serving process: under ``concurrency="fork"`` each datagram's child
has its own, and under ``--workers`` a retransmission may reach another worker, so
neither model keeps this promise; the threads, the pool, sync and async do.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Final

__all__ = ["DEFAULT_SIZE", "IN_PROGRESS", "ReplyCache"]

#: Replies kept, the oldest forgotten first: enough for every call of the last
#: retransmission interval of a busy server (libtirpc's callers pick their own).
DEFAULT_SIZE: Final = 1024


class _InProgress:
    __slots__ = ()

    def __repr__(self) -> str:
        return "IN_PROGRESS"


#: What begin() says of a call whose first copy still runs.
IN_PROGRESS: Final = _InProgress()

Key = tuple[int, int, int, int, Any]


class ReplyCache:
    """Recent replies by (xid, prog, vers, proc, client address); thread-safe."""

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        if size < 1:
            raise ValueError(f"a reply cache holds at least one reply, not {size}")
        self.size = size
        self._lock = threading.Lock()
        self._entries: OrderedDict[Key, bytes | _InProgress] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def begin(self, key: Key) -> bytes | _InProgress | None:
        """None for a new call (now in progress); else the reply sent, or IN_PROGRESS."""
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                return found
            self._entries[key] = IN_PROGRESS
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
            return None

    def finish(self, key: Key, reply: bytes | None) -> None:
        """The call ``key`` was answered with ``reply`` (None: not answered; forget it)."""
        with self._lock:
            if key not in self._entries:
                return  # pushed out meanwhile
            if reply is None:
                del self._entries[key]
            else:
                self._entries[key] = reply
