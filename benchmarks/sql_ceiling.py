"""The ceiling of sql_bench.py: servekit.sql's own claim-and-acknowledge SQL, run by a
minimal loop, with the same settings.

The statements are those ``src/servekit/sql/_sqlite.py`` and ``_postgres.py`` run for
one queue, grouped into transactions as the source groups them (as of commit ee52fad,
``complete_and_claim``): a claim of up to ``batch`` rows is one transaction that first
gives back the rows whose lease ran out (the reap); each row of a claim but the last is
acknowledged in a transaction of its own; the last is acknowledged in the transaction
that claims the next rows (ack, reap, claim). With ``batch`` 1, that is one transaction
a row. On PostgreSQL that transaction is one statement, the source's step (ack, reap and
claim as sub-statements of one ``WITH``), which the ceiling imports from the servekit
measured. What the loop leaves out is everything around the SQL: decoding rows into
``Job`` objects, the handler, the server's loop and threads.

- SQLite: a Python loop over ``sqlite3``, one connection per process, WAL,
  ``synchronous=NORMAL``, ``busy_timeout`` 5 s, ``BEGIN IMMEDIATE`` for every write,
  times from ``time.time()``: what ``SQLiteBackend`` does.
- PostgreSQL: ``pgbench`` with ``pgbench_script(batch)`` (``-M prepared``, as psycopg
  prepares a statement from its fifth run, the parameters as pgbench variables), and
  ``psycopg_worker``, the same statements through psycopg from a minimal Python loop.
"""

from __future__ import annotations

import os
import re
import sqlite3
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from multiprocessing.queues import Queue
    from multiprocessing.synchronize import Barrier

QUEUE: Final = "default"
LEASE: Final = 30.0
MAX_ATTEMPTS: Final = 5
JOBS: Final = "servekit_jobs"
CLAIMED: Final = (
    "id, queue, payload, encoding, attempt, max_attempts, priority, run_at, created_at, "
    "lease_until, dedupe_key"
)
DEAD_COLUMNS: Final = (
    "id, queue, attempt, max_attempts, priority, created_at, "
    "COALESCE(finished_at, updated_at), COALESCE(last_error, ''), encoding, payload, dedupe_key"
)

# -- SQLite ----------------------------------------------------------------------------------

SQLITE_REAP: Final = (
    f"UPDATE {JOBS} SET state = CASE WHEN attempt >= COALESCE(max_attempts, ?) THEN 'dead' "
    "ELSE 'pending' END, finished_at = CASE WHEN attempt >= COALESCE(max_attempts, ?) THEN ? "
    "END, last_error = 'lease expired on attempt ' || attempt || ' (worker ' || "
    "COALESCE(owner, '?') || ' stopped extending it)', lease_until = NULL, updated_at = ? "
    f"WHERE state = 'running' AND queue IN (?) AND lease_until <= ? RETURNING state, "
    f"{DEAD_COLUMNS}"
)
SQLITE_CLAIM: Final = (
    f"UPDATE {JOBS} SET state = 'running', attempt = attempt + 1, owner = ?, "
    "lease_until = ?, updated_at = ? WHERE id IN (SELECT id FROM (SELECT * FROM (SELECT id, "
    f"priority, run_at FROM {JOBS} INDEXED BY {JOBS}_claim WHERE state = 'pending' AND "
    "queue = ? AND run_at <= ? ORDER BY priority DESC, run_at, id LIMIT ?))) "
    f"RETURNING {CLAIMED}"
)
SQLITE_ACK: Final = (
    f"UPDATE {JOBS} SET state = 'done', lease_until = NULL, finished_at = ?, "
    "updated_at = ? WHERE id = ? AND attempt = ? AND owner = ? AND state = 'running'"
)


def sqlite_connect(path: str) -> sqlite3.Connection:
    """A connection as SQLiteBackend opens one."""
    conn = sqlite3.connect(path, timeout=5.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


Claimed = list[tuple[int, int]]  # (id, attempt) of each row claimed


def _sqlite_claim(conn: sqlite3.Connection, owner: str, batch: int, now: float) -> Claimed:
    """The reap and the claim, in the caller's transaction."""
    conn.execute(SQLITE_REAP, (MAX_ATTEMPTS, MAX_ATTEMPTS, now, now, QUEUE, now)).fetchall()
    rows = conn.execute(SQLITE_CLAIM, (owner, now + LEASE, now, QUEUE, now, batch)).fetchall()
    return [(row[0], row[4]) for row in rows]


def _sqlite_step(
    conn: sqlite3.Connection, owner: str, batch: int, last: tuple[int, int] | None
) -> Claimed:
    """One transaction: acknowledge ``last`` (if any), then claim."""
    conn.execute("BEGIN IMMEDIATE")
    now = time.time()
    if last is not None:
        conn.execute(SQLITE_ACK, (now, now, *last, owner))
    claimed = _sqlite_claim(conn, owner, batch, now)
    conn.execute("COMMIT")
    return claimed


def _sqlite_ack(conn: sqlite3.Connection, owner: str, row: tuple[int, int]) -> None:
    conn.execute("BEGIN IMMEDIATE")
    now = time.time()
    conn.execute(SQLITE_ACK, (now, now, *row, owner))
    conn.execute("COMMIT")


def sqlite_worker(
    path: str, batch: int, go: Barrier, results: Queue[tuple[float, float, int]]
) -> None:
    """A process of the SQLite ceiling: once every process is connected (``go``), claim
    and acknowledge until the queue is empty; put (start, end, rows) in ``results``."""
    conn = sqlite_connect(path)
    owner = f"ceiling-{os.getpid()}"
    go.wait()
    start, rows = time.time(), 0
    claimed = _sqlite_step(conn, owner, batch, None)
    while claimed:
        for row in claimed[:-1]:
            _sqlite_ack(conn, owner, row)
        rows += len(claimed)
        claimed = _sqlite_step(conn, owner, batch, claimed[-1])
    end = time.time()
    conn.close()
    results.put((start, end, rows))


# -- PostgreSQL -------------------------------------------------------------------------------


def pg_statements() -> Any:
    """PostgresBackend's statements for the one queue, from the servekit measured (imported
    here, once sql_bench.py has put ``--src`` first on the path): the ceiling runs the
    source's own step, whatever the commit."""
    from servekit.sql._postgres import _Statements

    return _Statements(("queue = %(queue)s", {"queue": QUEUE}))


def _pgbench(sql: str, **replaced: str) -> str:
    """psycopg's ``%(name)s`` parameters as pgbench variables (``-M prepared`` sends each
    as a parameter of the prepared statement, as psycopg does), or as ``replaced`` says."""
    return re.sub(r"%\((\w+)\)s", lambda m: replaced.get(m[1], f":{m[1]}"), sql)


def pgbench_script(batch: int) -> str:
    """The pgbench script of one step: the source's step statement, which acknowledges the
    last row of the previous claim (element ``batch`` of the arrays its ``\\gset`` left;
    none at first, ``-Dids={}``), reaps and claims ``:limit`` rows; then the
    acknowledgement of rows 1 to ``batch - 1`` of the claim, one statement each. The step's
    sub-statements are the source's; its result, the claim's rows gathered into two arrays
    for ``\\gset`` (pgbench keeps one row), where the source reads every row."""
    statements = pg_statements()
    last_id, last_attempt = f"(:ids::bigint[])[{batch}]", f"(:attempts::integer[])[{batch}]"
    ctes = _pgbench(
        statements.ctes, ids=f"ARRAY[{last_id}]", attempts=f"ARRAY[{last_attempt}]",
        lease=":lease::interval",
    )  # fmt: skip
    step = (
        f"{ctes} SELECT COALESCE(array_agg(id), '{{}}') AS ids, "
        "COALESCE(array_agg(attempt), '{}') AS attempts, count(payload) AS n FROM claimed \\gset"
    )

    def ack(index: int) -> str:
        ids, attempts = f"(:ids::bigint[])[{index}]", f"(:attempts::integer[])[{index}]"
        return _pgbench(statements.ack, ids=f"ARRAY[{ids}]", attempts=f"ARRAY[{attempts}]") + ";"

    return "\n".join([step, *[ack(index) for index in range(1, batch)]]) + "\n"


def pgbench_variables(batch: int) -> list[str]:
    """pgbench's ``-D`` options: the parameters PostgresBackend passes, and no claim yet."""
    values = {"queue": QUEUE, "max": MAX_ATTEMPTS, "limit": batch, "lease": f"{LEASE:.0f} s"}
    values |= {"owner": "pgbench", "ids": "{}", "attempts": "{}"}
    return [f"-D{name}={value}" for name, value in values.items()]


def psycopg_worker(
    url: str, batch: int, go: Barrier, results: Queue[tuple[float, float, int]]
) -> None:
    """A process of the Python floor on PostgreSQL: PostgresBackend's statements and
    parameters through psycopg (autocommit: the step, and each other acknowledgement,
    is a transaction of its own), nothing else; like ``sqlite_worker``."""
    import psycopg

    owner = f"floor-{os.getpid()}"
    params: dict[str, Any] = {"queue": QUEUE, "max": MAX_ATTEMPTS, "limit": batch}
    params |= {"owner": owner, "lease": timedelta(seconds=LEASE), "ids": [], "attempts": []}
    statements = pg_statements()
    step_sql, ack = statements.step, statements.ack
    with psycopg.connect(url, autocommit=True) as conn:

        def step(last: Any) -> list[Any]:
            if last is not None:
                params["ids"], params["attempts"] = [last[0]], [last[4]]
            rows = conn.execute(step_sql, params).fetchall()
            return [row[1:] for row in rows if row[0] == "claimed"]

        go.wait()
        start, rows = time.time(), 0
        claimed = step(None)
        while claimed:
            for row in claimed[:-1]:
                conn.execute(ack, {"ids": [row[0]], "attempts": [row[4]], "owner": owner})
            rows += len(claimed)
            claimed = step(claimed[-1])
        results.put((start, time.time(), rows))
