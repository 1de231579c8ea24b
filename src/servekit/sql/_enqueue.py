"""The producer's API: ``enqueue`` and ``enqueue_async``, with a URL, or inside
the caller's own transaction on the caller's connection."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from typing import TYPE_CHECKING, Any

from servekit.sql._backend import new_job
from servekit.sql._postgres import (
    PostgresBackend,
    import_psycopg,
    postgres_insert,
    postgres_insert_async,
)
from servekit.sql._sqlite import SQLiteBackend, sqlite_insert
from servekit.sql._url import QueueURL, parse_url

if TYPE_CHECKING:
    from datetime import datetime, timedelta

__all__ = ["enqueue", "enqueue_async"]


def _open(url: QueueURL) -> SQLiteBackend | PostgresBackend:
    if url.scheme == "sqlite":
        return SQLiteBackend(url)
    return PostgresBackend(url)


def enqueue(
    url: str | QueueURL | None,
    payload: object,
    *,
    queue: str | None = None,
    priority: int = 0,
    run_at: datetime | timedelta | None = None,
    dedupe_key: str | None = None,
    max_attempts: int | None = None,
    connection: Any = None,
) -> int:
    """Add a row to a queue; return its id.

    ``payload`` is ``bytes`` (given to the handler as they are) or any JSON
    value. ``queue``: the URL's queue if it names one, else ``"default"``.
    ``priority``: higher rows are claimed first. ``run_at``: not before this
    aware datetime, or this timedelta from now. ``dedupe_key``: if a pending or
    running row of the queue has it, nothing is inserted and that row's id is
    returned. ``max_attempts``: the row's own limit (None: the worker's).

    With ``connection`` (a ``sqlite3.Connection``, or a psycopg ``Connection``),
    the row is inserted in the caller's transaction: it is not committed here,
    and a rollback takes it back (on PostgreSQL, the NOTIFY too). ``url`` may
    then be None. Without it, ``url`` is opened, the row inserted and committed,
    and the connection closed.

    Errors: TypeError/ValueError (``PayloadError``) for bad arguments,
    ``SchemaError`` if the tables are missing, ``QueueUnavailable`` if the
    database cannot be reached.
    """
    parsed = None if url is None else parse_url(url)
    job = new_job(
        parsed, payload, queue=queue, priority=priority, run_at=run_at,
        dedupe_key=dedupe_key, max_attempts=max_attempts,
    )  # fmt: skip
    if connection is not None:
        if isinstance(connection, sqlite3.Connection):
            return sqlite_insert(connection, job, time.time())
        psycopg = import_psycopg()
        if isinstance(connection, psycopg.Connection):
            return postgres_insert(connection, job)
        raise TypeError(
            "connection must be a sqlite3.Connection or a psycopg Connection "
            f"(enqueue_async takes an AsyncConnection), not {type(connection).__name__}"
        )
    if parsed is None:
        raise ValueError("enqueue needs a URL, or a connection to insert through")
    backend = _open(parsed)
    try:
        return backend.enqueue(
            payload, queue=job.queue, priority=priority, run_at=run_at,
            dedupe_key=dedupe_key, max_attempts=max_attempts,
        )  # fmt: skip
    finally:
        backend.close()


async def enqueue_async(
    url: str | QueueURL | None,
    payload: object,
    *,
    queue: str | None = None,
    priority: int = 0,
    run_at: datetime | timedelta | None = None,
    dedupe_key: str | None = None,
    max_attempts: int | None = None,
    connection: Any = None,
) -> int:
    """``enqueue`` for asyncio: the same arguments, the same result.

    ``connection`` may be a psycopg ``AsyncConnection`` (the insert runs in its
    transaction, awaited), a ``sqlite3.Connection`` (run inline: SQLite is
    local, and its connection belongs to its thread) or a psycopg
    ``Connection`` (run in a worker thread). Without one, the whole
    ``enqueue`` runs in a worker thread.
    """
    arguments: dict[str, Any] = {
        "queue": queue, "priority": priority, "run_at": run_at,
        "dedupe_key": dedupe_key, "max_attempts": max_attempts,
    }  # fmt: skip
    if connection is None:
        return await asyncio.to_thread(enqueue, url, payload, **arguments)
    if isinstance(connection, sqlite3.Connection):
        return enqueue(url, payload, connection=connection, **arguments)
    psycopg = import_psycopg()
    if isinstance(connection, psycopg.AsyncConnection):
        job = new_job(None if url is None else parse_url(url), payload, **arguments)
        return await postgres_insert_async(connection, job)
    if isinstance(connection, psycopg.Connection):
        return await asyncio.to_thread(enqueue, url, payload, connection=connection, **arguments)
    raise TypeError(
        "connection must be a psycopg AsyncConnection or Connection, or a sqlite3.Connection, "
        f"not {type(connection).__name__}"
    )
