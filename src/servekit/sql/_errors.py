"""The errors of the SQL work queue: one small hierarchy under ``QueueError``."""

from __future__ import annotations

__all__ = ["DriverMissing", "QueueError", "QueueUnavailable", "SchemaError"]


class QueueError(Exception):
    """Base class of every error the SQL work queue raises on purpose."""


class QueueUnavailable(QueueError, ConnectionError):
    """The database cannot be reached, or stayed locked too long.

    An ``OSError`` (through ``ConnectionError``), so a request source's
    ``get_request()`` may let it through to ``get_request_failed()``. The
    operation did not happen (or its outcome is unknown: a row claimed or
    acknowledged when the connection dropped is settled by its lease). The next
    call reconnects, with back-off.
    """


class SchemaError(QueueError):
    """The queue's tables are missing, or at a schema version this servekit
    does not read (older: run ``init()`` to migrate; newer: upgrade servekit)."""


class DriverMissing(QueueError, ImportError):
    """The database driver for a URL is not installed (``servekit[postgres]``)."""
