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

With ``ack_batch`` above one (the source's option, off by default), the rows of a claim
are grouped as the source groups them when they run one after another: every
``ack_batch`` rows ended are acknowledged in one transaction, and the rest with the last
row, in the next claim's (``ack_groups``).

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


def ack_groups(claimed: int, ack_batch: int) -> tuple[list[slice], slice]:
    """How the source acknowledges a claim of ``claimed`` rows run one after another: the
    groups acknowledged on their own (a transaction each), and the rows acknowledged with
    the next claim. ``ack_batch`` 1: each row alone, the last with the next claim."""
    full = (claimed - 1) // ack_batch * ack_batch if claimed else 0
    return [slice(k, k + ack_batch) for k in range(0, full, ack_batch)], slice(full, claimed)


def _sqlite_claim(conn: sqlite3.Connection, owner: str, batch: int, now: float) -> Claimed:
    """The reap and the claim, in the caller's transaction."""
    conn.execute(SQLITE_REAP, (MAX_ATTEMPTS, MAX_ATTEMPTS, now, now, QUEUE, now)).fetchall()
    rows = conn.execute(SQLITE_CLAIM, (owner, now + LEASE, now, QUEUE, now, batch)).fetchall()
    return [(row[0], row[4]) for row in rows]


def _sqlite_step(conn: sqlite3.Connection, owner: str, batch: int, acks: Claimed) -> Claimed:
    """One transaction: acknowledge ``acks``, then claim."""
    conn.execute("BEGIN IMMEDIATE")
    now = time.time()
    for row in acks:
        conn.execute(SQLITE_ACK, (now, now, *row, owner))
    claimed = _sqlite_claim(conn, owner, batch, now)
    conn.execute("COMMIT")
    return claimed


def _sqlite_ack(conn: sqlite3.Connection, owner: str, rows: Claimed) -> None:
    conn.execute("BEGIN IMMEDIATE")
    now = time.time()
    for row in rows:
        conn.execute(SQLITE_ACK, (now, now, *row, owner))
    conn.execute("COMMIT")


def sqlite_worker(
    path: str, batch: int, go: Barrier, results: Queue[tuple[float, float, int]],
    ack_batch: int = 1,
) -> None:  # fmt: skip
    """A process of the SQLite ceiling: once every process is connected (``go``), claim
    and acknowledge until the queue is empty; put (start, end, rows) in ``results``."""
    conn = sqlite_connect(path)
    owner = f"ceiling-{os.getpid()}"
    go.wait()
    start, rows = time.time(), 0
    claimed = _sqlite_step(conn, owner, batch, [])
    while claimed:
        groups, last = ack_groups(len(claimed), ack_batch)
        for group in groups:
            _sqlite_ack(conn, owner, claimed[group])
        rows += len(claimed)
        claimed = _sqlite_step(conn, owner, batch, claimed[last])
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


def _pg_rows(group: slice, ack_batch: int) -> tuple[str, str]:
    """The ids and attempts of the claim's rows ``group`` (0-based), as pgbench arrays."""
    if ack_batch == 1:  # one row: as the ceiling was written before ack_batch
        index = group.start + 1
        return f"ARRAY[(:ids::bigint[])[{index}]]", f"ARRAY[(:attempts::integer[])[{index}]]"
    bounds = f"[{group.start + 1}:{group.stop}]"
    return f"(:ids::bigint[]){bounds}", f"(:attempts::integer[]){bounds}"


def pgbench_script(batch: int, ack_batch: int = 1) -> str:
    """The pgbench script of one step: the source's step statement, which acknowledges the
    last rows of the previous claim (``ack_groups``: the last row, with ``ack_batch`` 1;
    elements of the arrays its ``\\gset`` left; none at first, ``-Dids={}``), reaps and
    claims ``:limit`` rows; then the acknowledgement of the claim's other rows, one
    statement a group. The step's sub-statements are the source's; its result, the claim's
    rows gathered into two arrays for ``\\gset`` (pgbench keeps one row), where the source
    reads every row."""
    statements = pg_statements()
    groups, last = ack_groups(batch, ack_batch)
    last_ids, last_attempts = _pg_rows(last, ack_batch)
    ctes = _pgbench(statements.ctes, ids=last_ids, attempts=last_attempts, lease=":lease::interval")
    step = (
        f"{ctes} SELECT COALESCE(array_agg(id), '{{}}') AS ids, "
        "COALESCE(array_agg(attempt), '{}') AS attempts, count(payload) AS n FROM claimed \\gset"
    )

    def ack(group: slice) -> str:
        ids, attempts = _pg_rows(group, ack_batch)
        return _pgbench(statements.ack, ids=ids, attempts=attempts) + ";"

    return "\n".join([step, *[ack(group) for group in groups]]) + "\n"


def pgbench_variables(batch: int) -> list[str]:
    """pgbench's ``-D`` options: the parameters PostgresBackend passes, and no claim yet."""
    values = {"queue": QUEUE, "max": MAX_ATTEMPTS, "limit": batch, "lease": f"{LEASE:.0f} s"}
    values |= {"owner": "pgbench", "ids": "{}", "attempts": "{}"}
    return [f"-D{name}={value}" for name, value in values.items()]


def psycopg_worker(
    url: str, batch: int, go: Barrier, results: Queue[tuple[float, float, int]],
    ack_batch: int = 1,
) -> None:  # fmt: skip
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

        def step(acks: list[Any]) -> list[Any]:
            params["ids"], params["attempts"] = [r[0] for r in acks], [r[4] for r in acks]
            rows = conn.execute(step_sql, params).fetchall()
            return [row[1:] for row in rows if row[0] == "claimed"]

        go.wait()
        start, rows = time.time(), 0
        claimed = step([])
        while claimed:
            groups, last = ack_groups(len(claimed), ack_batch)
            for group in groups:
                acked = claimed[group]
                ids, attempts = [r[0] for r in acked], [r[4] for r in acked]
                conn.execute(ack, {"ids": ids, "attempts": attempts, "owner": owner})
            rows += len(claimed)
            claimed = step(claimed[last])
        results.put((start, time.time(), rows))
