"""The queue's tables, for SQLite and PostgreSQL, and their version.

One table holds the rows of every queue (``servekit_jobs``); a small one
(``servekit_meta``) records the schema version, so that a later release can
migrate a table made by this one, and so that a release that does not know a
version refuses it instead of misreading it. ``init()`` of a backend runs
``ddl(dialect)`` (every statement is idempotent) and then the migrations from
the version found up to ``SCHEMA_VERSION``.

Columns of ``servekit_jobs``:

- ``id``: increasing integer key.
- ``queue``: the queue's name (several queues share the table).
- ``payload``: the payload's bytes (BLOB / bytea); ``encoding`` says how to read
  them: ``json`` (UTF-8 JSON text) or ``bytes`` (given to the handler as they are).
- ``priority``: higher is claimed first; then ``run_at``, then ``id``.
- ``run_at``: not claimed before this time.
- ``attempt``: claims so far (0 until the first claim).
- ``max_attempts``: the row's own limit, NULL for the worker's default.
- ``dedupe_key``: optional; unique per queue among rows pending or running.
- ``state``: ``pending``, ``running``, ``done`` or ``dead``.
- ``lease_until``: a running row's lease; past it, the row is claimed again.
- ``owner``: the token of the worker that claimed the row last.
- ``last_error``: why the last attempt failed (kept in the dead state).
- ``created_at``, ``updated_at``, ``finished_at`` (done or dead).

Times are ``timestamptz`` on PostgreSQL and Unix seconds (REAL) on SQLite.
"""

from __future__ import annotations

from typing import Final, Literal

from servekit.sql._errors import SchemaError

__all__ = [
    "CLAIMED",
    "DEAD_COLUMNS",
    "DEDUPE_TARGET",
    "JOBS",
    "META",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "Dialect",
    "check_version",
    "ddl",
]

Dialect = Literal["sqlite", "postgresql"]

#: The version of the tables this servekit writes and reads.
SCHEMA_VERSION: Final = 1
JOBS: Final = "servekit_jobs"
META: Final = "servekit_meta"

#: SQL run to go from version N to N + 1, per dialect: MIGRATIONS[N][dialect].
#: Empty while there is only version 1.
MIGRATIONS: Final[dict[int, dict[Dialect, tuple[str, ...]]]] = {}

_STATE_CHECK = "CHECK (state IN ('pending', 'running', 'done', 'dead'))"

_SQLITE: Final = (
    f"""CREATE TABLE IF NOT EXISTS {META} (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )""",
    f"""CREATE TABLE IF NOT EXISTS {JOBS} (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        queue TEXT NOT NULL,
        payload BLOB NOT NULL,
        encoding TEXT NOT NULL DEFAULT 'json',
        priority INTEGER NOT NULL DEFAULT 0,
        run_at REAL NOT NULL,
        attempt INTEGER NOT NULL DEFAULT 0,
        max_attempts INTEGER CHECK (max_attempts IS NULL OR max_attempts >= 1),
        dedupe_key TEXT,
        state TEXT NOT NULL DEFAULT 'pending' {_STATE_CHECK},
        lease_until REAL,
        owner TEXT,
        last_error TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        finished_at REAL
    )""",
)

_POSTGRES: Final = (
    f"""CREATE TABLE IF NOT EXISTS {META} (
        key text PRIMARY KEY,
        value text NOT NULL
    )""",
    f"""CREATE TABLE IF NOT EXISTS {JOBS} (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        queue text NOT NULL,
        payload bytea NOT NULL,
        encoding text NOT NULL DEFAULT 'json',
        priority integer NOT NULL DEFAULT 0,
        run_at timestamptz NOT NULL DEFAULT now(),
        attempt integer NOT NULL DEFAULT 0,
        max_attempts integer CHECK (max_attempts IS NULL OR max_attempts >= 1),
        dedupe_key text,
        state text NOT NULL DEFAULT 'pending' {_STATE_CHECK},
        lease_until timestamptz,
        owner text,
        last_error text,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now(),
        finished_at timestamptz
    )""",
)

# The same indexes on both: partial, so each stays as small as the rows it serves.
_INDEXES: Final = (
    # The claim: the due pending rows of a queue, in claim order.
    f"""CREATE INDEX IF NOT EXISTS {JOBS}_claim
        ON {JOBS} (queue, priority DESC, run_at, id) WHERE state = 'pending'""",
    # next_due(): the earliest run_at of a queue's pending rows, whatever their priority.
    f"""CREATE INDEX IF NOT EXISTS {JOBS}_due
        ON {JOBS} (queue, run_at) WHERE state = 'pending'""",
    # Leases that ran out, and the next one to run out (next_due()).
    f"""CREATE INDEX IF NOT EXISTS {JOBS}_lease
        ON {JOBS} (lease_until) WHERE state = 'running'""",
    # At most one live row per (queue, dedupe_key).
    f"""CREATE UNIQUE INDEX IF NOT EXISTS {JOBS}_dedupe
        ON {JOBS} (queue, dedupe_key)
        WHERE dedupe_key IS NOT NULL AND state IN ('pending', 'running')""",
    # purge(): done rows by age.
    f"""CREATE INDEX IF NOT EXISTS {JOBS}_done
        ON {JOBS} (finished_at) WHERE state = 'done'""",
    # dead(), retry_all(): the dead rows of a queue.
    f"""CREATE INDEX IF NOT EXISTS {JOBS}_dead
        ON {JOBS} (queue, id) WHERE state = 'dead'""",
)

#: The columns a claim returns (``job_from_row`` reads them in this order).
CLAIMED: Final = (
    "id, queue, payload, encoding, attempt, max_attempts, priority, run_at, created_at, "
    "lease_until, dedupe_key"
)
#: The columns a dead row is read with (``dead_from_row``).
DEAD_COLUMNS: Final = (
    "id, queue, attempt, max_attempts, priority, created_at, "
    "COALESCE(finished_at, updated_at), COALESCE(last_error, ''), encoding, payload, dedupe_key"
)

#: The conflict target that matches the dedupe index (ON CONFLICT ... DO NOTHING).
DEDUPE_TARGET: Final = (
    "(queue, dedupe_key) WHERE dedupe_key IS NOT NULL AND state IN ('pending', 'running')"
)


def ddl(dialect: Dialect) -> tuple[str, ...]:
    """The statements that create the tables and indexes (IF NOT EXISTS)."""
    return (_SQLITE if dialect == "sqlite" else _POSTGRES) + _INDEXES


def check_version(found: int | None, where: str) -> None:
    """Raise SchemaError unless ``found`` is ``SCHEMA_VERSION``.

    ``found`` is None when the tables are missing; ``where`` names the database
    (redacted URL) for the message.
    """
    if found == SCHEMA_VERSION:
        return
    if found is None:
        raise SchemaError(
            f"{where} has no servekit queue tables: create them with "
            f"`servekit queue {where} init` (or the backend's init())"
        )
    if found < SCHEMA_VERSION:
        raise SchemaError(
            f"{where} holds queue schema version {found}, older than this servekit's "
            f"{SCHEMA_VERSION}: migrate it with `servekit queue {where} init` (or init())"
        )
    raise SchemaError(
        f"{where} holds queue schema version {found}, newer than this servekit's "
        f"{SCHEMA_VERSION}: upgrade servekit to use it"
    )
