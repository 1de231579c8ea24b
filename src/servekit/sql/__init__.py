"""A work queue in a SQL table: the storage side of the SQL request source.

Rows are jobs; workers claim them for a lease, acknowledge them when done,
and a row whose worker died is claimed again when its lease runs out
(at-least-once delivery). Failed rows are retried with exponential back-off
and jitter up to ``max_attempts``, then kept in the ``dead`` state with their
last error. Row states: ``pending``, ``running``, ``done``, ``dead``.

Two backends behind one API (``Backend``):

- SQLite (``sqlite:jobs.db``): the embedded default, the standard library's
  ``sqlite3``, several processes on one file (``SQLiteBackend``).
- PostgreSQL (``postgresql://user@host/db``): many machines on one queue,
  through psycopg 3 (``pip install 'servekit[postgres]'``), with ``FOR UPDATE
  SKIP LOCKED`` claims and LISTEN/NOTIFY wake-ups (``PostgresBackend``).

A worker::

    backend = open_backend("sqlite:jobs.db?queue=emails")
    backend.init()                       # create (or migrate) the tables
    while True:
        for job in backend.claim(limit=10, lease=30):
            try:
                send(job.payload)
            except Exception as exc:
                backend.fail(job, exc)
            else:
                backend.complete(job)
        backend.wait(timeout=5)

A producer: ``enqueue("sqlite:jobs.db", {"to": "a@example.com"}, queue="emails")``,
or ``enqueue(None, payload, connection=conn)`` in the caller's own transaction.

Errors derive from ``QueueError``; logs go to the ``servekit.sql`` logger.
"""

from __future__ import annotations

from typing import Any

from servekit.sql._backend import Backend, BackendBase, Stats
from servekit.sql._backoff import backoff_delay
from servekit.sql._enqueue import enqueue, enqueue_async
from servekit.sql._errors import DriverMissing, QueueError, QueueUnavailable, SchemaError
from servekit.sql._job import STATES, DeadJob, Job, JobState, PayloadError
from servekit.sql._postgres import PostgresBackend
from servekit.sql._schema import SCHEMA_VERSION
from servekit.sql._sqlite import SQLiteBackend
from servekit.sql._url import DEFAULT_QUEUE, QueueURL, check_queue_name, parse_url
from servekit.sql.source import AsyncQueueServer, QueueServer, is_queue_address

__all__ = [
    "DEFAULT_QUEUE",
    "SCHEMA_VERSION",
    "STATES",
    "AsyncQueueServer",
    "Backend",
    "BackendBase",
    "DeadJob",
    "DriverMissing",
    "Job",
    "JobState",
    "PayloadError",
    "PostgresBackend",
    "QueueError",
    "QueueServer",
    "QueueURL",
    "QueueUnavailable",
    "SQLiteBackend",
    "SchemaError",
    "Stats",
    "backoff_delay",
    "check_queue_name",
    "enqueue",
    "enqueue_async",
    "is_queue_address",
    "open_backend",
    "parse_url",
]


def open_backend(url: str | QueueURL, **options: Any) -> SQLiteBackend | PostgresBackend:
    """The backend for ``url``: ``SQLiteBackend`` or ``PostgresBackend``.

    ``options`` go to its constructor: ``queues``, ``max_attempts``,
    ``retry_backoff``, ``retry_backoff_cap``, ``on_dead``, ``owner`` for both, and each
    backend's own (SQLite: ``busy_timeout``, ``synchronous``, ``poll_interval``,
    ``clock``...; PostgreSQL: ``connect_timeout``, ``poll_interval``...).
    ValueError for a bad URL, ``QueueUnavailable`` if the database cannot be
    opened, ``DriverMissing`` if psycopg is needed and missing.
    """
    parsed = parse_url(url)
    if parsed.scheme == "sqlite":
        return SQLiteBackend(parsed, **options)
    return PostgresBackend(parsed, **options)
