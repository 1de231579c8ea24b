"""Taking connections on an event loop: one reader callback on the listening socket.

``await loop.sock_accept()`` per connection costs a future and a task step
each, and on uvloop a poll handle made and closed whenever no client is
waiting. Here one reader stays registered while the server takes
connections: each time the socket turns readable it accepts what is waiting,
through the server's own ``get_request()``, and hands each connection on. It
takes at most ``ACCEPT_BATCH`` per wake-up, so that a flood of new clients
cannot keep the loop from the clients it already has.

The reader comes off while the server may not take more (``max_connections``
reached, or accepting paused after a resource failure such as EMFILE), and
goes back on when ``room()`` says a connection closed, or when the pause ends.
"""

from __future__ import annotations

import logging
from time import monotonic
from typing import TYPE_CHECKING, Any

from servekit.sockets import ACCEPT_BACKOFF_MAX

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable

__all__ = ["ACCEPT_BATCH", "Acceptor"]

logger = logging.getLogger(__name__)

#: The most connections taken per wake-up of the listening socket (asyncio's
#: own servers take up to their backlog, 100 by default).
ACCEPT_BATCH = 64


class Acceptor:
    """Accepts for ``server`` on ``loop`` and calls ``take(conn, address)`` for each.

    Every method runs in the loop's thread.
    """

    __slots__ = ("_fd", "_loop", "_reading", "_server", "_stopped", "_take", "_timer")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        server: Any,
        take: Callable[[Any, Any], None],
    ) -> None:
        self._loop = loop
        self._server = server
        self._take = take
        self._fd: int = server.fileno()
        self._reading = False
        self._stopped = False
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._resume()

    def stop(self) -> None:
        """Take no more connections (the server is stopping)."""
        self._stopped = True
        self._pause()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def room(self) -> None:
        """A connection closed while the server was full: look again."""
        if self._timer is None:  # a resource pause runs its course first
            self._resume()

    def _resume(self) -> None:
        self._timer = None
        if not self._reading and not self._stopped:
            self._loop.add_reader(self._fd, self._readable)
            self._reading = True

    def _pause(self) -> None:
        if self._reading:
            self._loop.remove_reader(self._fd)
            self._reading = False

    def _pause_for(self, seconds: float) -> None:
        self._pause()
        self._timer = self._loop.call_later(seconds, self._resume)

    def _readable(self) -> None:
        server = self._server
        for _ in range(ACCEPT_BATCH):
            if not server.ready_for_request():
                self._pause()  # room() puts the reader back
                return
            try:
                conn, address = server.get_request()
            except (BlockingIOError, InterruptedError):
                return  # none waiting (or another process sharing the socket took it)
            except OSError as exc:
                server.get_request_failed(exc)
                paused = server._requests_resume_at - monotonic()
                if paused > 0:
                    self._pause_for(paused)
                    return
                continue
            except Exception:
                # A get_request() override with a bug. The sync loop would end with
                # it; a reader left on would call it again at once, for ever.
                logger.exception(
                    "%s: get_request() failed; taking no connection for %ss",
                    server, ACCEPT_BACKOFF_MAX,
                )  # fmt: skip
                self._pause_for(ACCEPT_BACKOFF_MAX)
                return
            if server._requests_resume_at:
                server.get_request_recovered()
            self._take(conn, address)
