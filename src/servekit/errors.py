"""The errors a limit raises: in a module of their own, with no I/O, so that
``core`` (which knows nothing of sockets) can tell a limit from a handler's bug.

``servekit.limits`` enforces them and re-exports them; ``servekit`` exports
them too.
"""

from __future__ import annotations

__all__ = ["IdleTimeout", "LimitExceeded", "LineTooLong", "ReadTimeout", "WriteBufferFull"]


class LimitExceeded(OSError):
    """A client went past a limit of the server; its connection is closed.

    ``limit`` is the name of the limit (``"idle_timeout"``, ...).
    """

    limit = "limit"

    def __init__(self, message: str) -> None:
        super().__init__(message)


class IdleTimeout(LimitExceeded, TimeoutError):
    """Nothing was received or sent for ``idle_timeout`` seconds."""

    limit = "idle_timeout"


class ReadTimeout(LimitExceeded, TimeoutError):
    """A request started to arrive but was not complete within ``read_timeout`` seconds."""

    limit = "read_timeout"


class LineTooLong(LimitExceeded):
    """A line was longer than ``max_line_length`` bytes."""

    limit = "max_line_length"


class WriteBufferFull(LimitExceeded):
    """More than ``max_write_buffer`` bytes written and not sent: the client does not read."""

    limit = "max_write_buffer"
