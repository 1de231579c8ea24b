"""A self-pipe that lets another thread interrupt a blocking ``select``.

The stdlib's ``serve_forever`` polls a flag every ``poll_interval`` seconds, so
``shutdown()`` can take that long to be noticed. Registering one end of a socket
pair next to the request source lets ``shutdown()`` wake the loop at once.
A socket pair, not ``os.pipe``, because it works with ``select`` everywhere.
"""

from __future__ import annotations

import select
import socket
from typing import Self


class Waker:
    """One end is watched by the loop; ``wake()`` writes to the other."""

    __slots__ = ("_reader", "_writer", "fd")

    def __init__(self) -> None:
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)
        self.fd = self._reader.fileno()  # an attribute: the loop reads it on every pass

    def fileno(self) -> int:
        return self.fd

    def wake(self) -> None:
        try:
            self._writer.send(b"\0")
        except (BlockingIOError, InterruptedError):
            pass  # the buffer is full of wake-ups already: the loop will see one
        except OSError:
            pass  # closed by the loop in the meantime: it is not waiting any more

    def drain(self) -> None:
        try:
            while self._reader.recv(512):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def wait(self, timeout: float | None) -> bool:
        """Block until woken or ``timeout`` seconds pass (None: no limit); True if woken."""
        # poll(), not select(): select() fails on descriptors above 1023.
        poller = select.poll()
        poller.register(self._reader, select.POLLIN)
        delay = None if timeout is None else max(timeout, 0.0) * 1000
        readable = poller.poll(delay)
        if readable:
            self.drain()
        return bool(readable)

    def close(self) -> None:
        self._reader.close()
        self._writer.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
