"""``servekit queue URL ...``: the real command, as subprocesses, against SQLite
in a temporary folder and the real PostgreSQL of tests/_postgres.py.

Every run of the command costs an interpreter start (about half a second), so
the cases are grouped, and the independent error cases run side by side."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from servekit import sql
from servekit.cli import main
from servekit.sql._cli import parse_duration
from tests._postgres import _free_port, shared_server
from tests.conftest import WAIT

ROOT = Path(__file__).parent.parent
SCRIPT = Path(sys.executable).parent / "servekit"
STATES = ("pending", "running", "done", "dead")


@dataclass
class Done:
    status: int
    out: str
    err: str


def cli(*args: str, cwd: Path = ROOT, stdin: bytes | None = None, module: bool = False) -> Done:
    """Run ``servekit queue ARGS`` (the console script; ``module``: ``python -m servekit``)."""
    command = [sys.executable, "-m", "servekit"] if module else [str(SCRIPT)]
    result = subprocess.run(
        [*command, "queue", *args], cwd=cwd, input=stdin or b"",
        capture_output=True, timeout=WAIT * 3, check=False,
    )  # fmt: skip
    return Done(result.returncode, result.stdout.decode(), result.stderr.decode())


def parallel(*runs: Callable[[], Done]) -> list[Done]:
    """Each of ``runs``, several at a time; their results in order."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda run: run(), runs))


def cli_many(cases: list[tuple[str, ...]], cwd: Path) -> list[Done]:
    """``cli(*case, cwd=cwd)`` for each case, several at a time."""
    return parallel(*(partial(cli, *case, cwd=cwd) for case in cases))


def error_line(done: Done) -> str:
    """The one line on stderr (and nothing on stdout, no traceback)."""
    assert done.out == ""
    assert "Traceback" not in done.err
    lines = done.err.splitlines()
    assert len(lines) == 1, done.err
    return lines[0]


def ok(done: Done) -> str:
    assert done.status == 0, done.err
    assert done.err == ""
    return done.out


def stats_table(counts: dict[str, tuple[int, int, int, int]]) -> str:
    rows = [["queue", *STATES]] + [[q, *map(str, c)] for q, c in counts.items()]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    return "".join(
        "  ".join(
            [row[0].ljust(widths[0])]
            + [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        )
        + "\n"
        for row in rows
    )


def make_dead(url: str, count: int, queue: str = "default", **enqueue: Any) -> list[int]:
    """Enqueue ``count`` rows and send them to the dead state with a traceback."""
    with sql.open_backend(url, queues=[queue]) as backend:
        ids = [backend.enqueue({"n": n}, queue=queue, **enqueue) for n in range(count)]
        for job in backend.claim(limit=count):
            try:
                raise ValueError(f"bad row {job.id}\nsecond line of the message")
            except ValueError as exc:
                backend.fail(job, exc, permanent=True)
    return ids


# -- SQLite -----------------------------------------------------------------------------


def test_init_enqueue_and_stats_on_sqlite(tmp_path: Path) -> None:
    url = "sqlite:jobs.db"
    assert ok(cli(url, "init", cwd=tmp_path)) == (
        f"created the queue tables in sqlite:jobs.db (schema version {sql.SCHEMA_VERSION})\n"
    )
    assert ok(cli(f"sqlite://{tmp_path}/jobs.db", "init", module=True)) == (
        f"sqlite:{tmp_path}/jobs.db is already at schema version {sql.SCHEMA_VERSION}\n"
    )
    # Side by side: the ids are told apart by what was enqueued.
    runs = parallel(
        partial(cli, url, "enqueue", '{"to": "a@example.com"}', cwd=tmp_path),
        partial(cli, url, "enqueue", "raw\xe9", "--bytes", cwd=tmp_path),
        # ?queue= is the default queue; - reads stdin.
        partial(
            cli, "sqlite:jobs.db?queue=emails", "enqueue", "-", "--priority", "7", "--delay", "1h",
            "--max-attempts", "2", "--dedupe-key", "k1", cwd=tmp_path, stdin=b'["x", 1]\n',
        ),
        partial(cli, url, "enqueue", '"at"', "--run-at", "2030-01-02T03:04:05Z", "--queue",
                "later", cwd=tmp_path),
        partial(cli, url, "enqueue", "-", "--bytes", cwd=tmp_path, stdin=b"\x00\xff"),
    )  # fmt: skip
    ids = [int(ok(done)) for done in runs]
    assert sorted(ids) == [1, 2, 3, 4, 5]
    # The same dedupe key: the live row's id.
    assert ok(
        cli(url, "enqueue", "null", "--queue", "emails", "--dedupe-key", "k1", cwd=tmp_path)
    ) == f"{ids[2]}\n"  # fmt: skip

    with sql.open_backend(f"sqlite:{tmp_path}/jobs.db", queues=["default"]) as backend:
        jobs = backend.claim(limit=10)
    assert sorted((j.id, j.payload) for j in jobs) == sorted(
        [(ids[0], {"to": "a@example.com"}), (ids[1], "raw\xe9".encode()), (ids[4], b"\x00\xff")]
    )
    db = sqlite3.connect(tmp_path / "jobs.db")
    rows = db.execute(
        "SELECT id, queue, priority, run_at - created_at, max_attempts, dedupe_key, payload, "
        "run_at FROM servekit_jobs WHERE id IN (?, ?)",
        (ids[2], ids[3]),
    ).fetchall()
    db.close()
    delayed, later = sorted(rows, key=lambda row: ids.index(row[0]))
    assert delayed[:3] == (ids[2], "emails", 7)
    assert abs(delayed[3] - 3600) < 60
    assert delayed[4:7] == (2, "k1", b'["x",1]')
    assert later[:2] == (ids[3], "later")
    assert later[7] == datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()

    table, as_json = cli_many([(url, "stats"), (url, "stats", "--json")], tmp_path)
    assert ok(table) == stats_table(
        {"default": (0, 3, 0, 0), "emails": (1, 0, 0, 0), "later": (1, 0, 0, 0)}
    )
    assert json.loads(ok(as_json)) == {
        "queues": {
            "default": {"pending": 0, "running": 3, "done": 0, "dead": 0},
            "emails": {"pending": 1, "running": 0, "done": 0, "dead": 0},
            "later": {"pending": 1, "running": 0, "done": 0, "dead": 0},
        },
        "total": {"pending": 2, "running": 3, "done": 0, "dead": 0},
    }


def test_dead_retry_and_purge_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:{tmp_path}/jobs.db"
    with sql.open_backend(url) as backend:
        backend.init()
    ids = make_dead(url, 3)
    [keyed] = make_dead(url, 1, queue="mail", dedupe_key="k")
    with sql.open_backend(url) as backend:
        live = backend.enqueue("again", queue="mail", dedupe_key="k")
        # Done rows: two finished 8 days ago, one now.
        old = sql.open_backend(url, clock=lambda: time.time() - 8 * 86400)
        old.enqueue_many([1, 2])
        old.complete_many(old.claim(limit=2))
        old.close()
        backend.enqueue(3)
        backend.complete_many(backend.claim(limit=1))

    listed = cli_many(
        [(url, "dead"), (url, "dead", "--limit", "2"), (f"{url}?queue=nothing", "dead"),
         (f"{url}?queue=mail", "dead", "--json")],
        ROOT,
    )  # fmt: skip
    table = ok(listed[0])
    lines = table.splitlines()
    assert lines[0].split() == ["id", "queue", "attempts", "failed_at", "error"]
    assert [line.split()[:3] for line in lines[1:]] == [
        [str(keyed), "mail", "1"], *([str(i), "default", "1"] for i in reversed(ids)),
    ]  # fmt: skip
    for line, row in zip(lines[1:], [keyed, *reversed(ids)], strict=True):
        # The exception's line of the traceback, not "Traceback (most recent...".
        assert line.endswith(f"  ValueError: bad row {row}")
        failed_at = datetime.strptime(line.split()[3], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        assert abs(failed_at - datetime.now(UTC)) < timedelta(minutes=1)
    assert (
        len({line.index("error" if n == 0 else "ValueError") for n, line in enumerate(lines)}) == 1
    )

    limited = listed[1]
    assert limited.status == 0
    assert len(limited.out.splitlines()) == 3
    assert limited.err == "(2 of 4 dead rows shown: --limit N for more)\n"
    assert ok(listed[2]) == "no dead rows in nothing\n"

    [dead] = json.loads(ok(listed[3]))
    assert dead.keys() == {
        "id", "queue", "attempts", "max_attempts", "priority", "created_at", "failed_at",
        "error", "encoding", "payload", "payload_base64", "dedupe_key",
    }  # fmt: skip
    assert dead["error"].startswith("Traceback (most recent call last):\n")
    assert dead["error"].endswith(f"ValueError: bad row {keyed}\nsecond line of the message")
    assert {k: dead[k] for k in ("id", "queue", "attempts", "max_attempts", "encoding")} == {
        "id": keyed, "queue": "mail", "attempts": 1, "max_attempts": None, "encoding": "json",
    }  # fmt: skip
    assert (dead["payload"], dead["payload_base64"], dead["dedupe_key"]) == ({"n": 0}, None, "k")
    assert datetime.fromisoformat(dead["failed_at"]).utcoffset() == timedelta(0)

    # Named ids: one dead, one pending, one missing, one whose key a live row holds.
    retry = cli(url, "retry", str(ids[0]), str(live), "999", str(keyed))
    assert retry.status == 1
    assert retry.out == "retried 1 row\n"
    assert retry.err.splitlines() == [
        f"servekit: row {live} not retried: it is pending, not dead",
        "servekit: row 999 not retried: no such row",
        (
            f"servekit: row {keyed} not retried: a pending or running row of its queue holds "
            "its dedupe key"
        ),
    ]
    assert ok(cli(url, "retry", str(ids[1]))) == "retried 1 row\n"
    assert ok(cli(url, "retry", "--all", "--queue", "mail")) == "retried 0 rows\n"
    assert ok(cli(url, "retry", "--all")) == "retried 1 row\n"  # ids[2]
    assert ok(cli(url, "purge", "--older-than", "7d", "--queue", "mail")) == (
        "purged 0 done rows of mail\n"
    )
    assert ok(cli(url, "purge", "--older-than", "7d")) == "purged 2 done rows\n"
    assert json.loads(ok(cli(url, "stats", "--json")))["queues"] == {
        "default": {"pending": 3, "running": 0, "done": 1, "dead": 0},
        "mail": {"pending": 1, "running": 0, "done": 0, "dead": 1},
    }


def test_errors_are_one_line_with_the_right_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty.db").touch()
    (tmp_path / "junk.db").write_bytes(b"this is not a database, really not" * 100)
    url = "sqlite:jobs.db"
    with sql.open_backend(f"sqlite:{tmp_path}/jobs.db") as backend:
        backend.init()
    with sql.open_backend(f"sqlite:{tmp_path}/newer.db") as backend:
        backend.init()
    db = sqlite3.connect(tmp_path / "newer.db")
    db.execute("UPDATE servekit_meta SET value = '99' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    need = "servekit: error: "
    cases: list[tuple[tuple[str, ...], int, str]] = [
        # The database
        (("sqlite:missing.db", "stats"), 1,
         ("no SQLite database at 'missing.db': create it with `servekit queue sqlite:missing.db "
         "init`")),
        (("sqlite:/no/such/folder/jobs.db", "init"), 1,
         "cannot open the SQLite database '/no/such/folder/jobs.db': its folder does not exist"),
        (("sqlite:empty.db", "dead"), 1,
         ("sqlite:empty.db has no servekit queue tables: create them with "
         "`servekit queue sqlite:empty.db init`")),
        (("sqlite:newer.db", "init"), 1,
         ("sqlite:newer.db holds queue schema version 99, newer than this servekit's "
         f"{sql.SCHEMA_VERSION}: upgrade servekit to use it")),
        (("sqlite:junk.db", "stats"), 1, "SQLite error on junk.db: file is not a database"),
        # Payloads
        ((url, "enqueue", "hello"), 1,
         ("the payload is not JSON (Expecting value: line 1 column 1 (char 0)): 'hello'; quote a "
         """string as JSON ('"hello"'), or give --bytes to enqueue it as raw bytes""")),
        ((url, "enqueue", "[1, NaN]"), 1,
         ("the payload is not JSON (NaN is not a JSON number): '[1, NaN]'; quote a string as JSON "
         """('"hello"'), or give --bytes to enqueue it as raw bytes""")),
        # Arguments
        (("nowhere:jobs", "stats"), 2,
         "bad queue URL 'nowhere:jobs': it starts with sqlite: or postgresql:// (or postgres://)"),
        (("sqlite:jobs.db?queue=a,b", "enqueue", "1"), 2,
         "the URL names several queues (a, b): say which with --queue"),
        ((url, "enqueue", "1", "--queue", "bad name"), 2,
         ("argument --queue: bad queue name 'bad name': use 1 to 100 letters, digits, '_', '-' "
         "and '.'")),
        ((url, "enqueue", "1", "--priority", "2147483648"), 2,
         ("argument --priority: '2147483648' is not a whole number from -2147483648 to "
         "2147483647")),
        ((url, "enqueue", "1", "--max-attempts", "0"), 2,
         "argument --max-attempts: '0' is not a whole number from 1 to 2147483647"),
        ((url, "enqueue", "1", "--delay", "5", "--run-at", "2030-01-01"), 2,
         "argument --run-at: not allowed with argument --delay"),
        ((url, "enqueue", "1", "--run-at", "tomorrow"), 2,
         ("argument --run-at: 'tomorrow' is not an ISO 8601 time (2030-01-31T09:00:00+01:00, "
         "...Z, or without an offset for local time)")),
        ((url, "enqueue", "1", "--dedupe-key", ""), 2,
         "argument --dedupe-key: a de-duplication key is not empty"),
        ((url, "retry"), 2, "give the IDs of dead rows to retry, or --all"),
        ((url, "retry", "1", "--all"), 2, "give IDs or --all, not both"),
        ((url, "retry", "1", "--queue", "q"), 2, "--queue goes with --all (IDs name their rows)"),
        ((url, "retry", "x1"), 2, "argument ID: 'x1' is not a whole number"),
        ((url, "dead", "--limit", "0"), 2,
         "argument --limit: '0' is not a whole number from 1 to 2147483647"),
        ((url, "purge"), 2, "the following arguments are required: --older-than"),
        ((url, "purge", "--older-than", "7x"), 2,
         ("argument --older-than: '7x' is not a duration: seconds, or a number with s, m, h, d "
         "or w (90, 90s, 30m, 12h, 7d, 1h30m), up to 100 years")),
        ((url, "frobnicate"), 2,
         ("argument ACTION: invalid choice: 'frobnicate' (choose from 'init', 'enqueue', "
         "'stats', 'dead', 'retry', 'purge')")),
    ]  # fmt: skip
    # Six cases as the real command, side by side; the others through main() in this
    # process (the same code from argv to exit status, 40 times faster).
    real_ones = {
        ("sqlite:missing.db", "stats"), ("sqlite:empty.db", "dead"), ("sqlite:newer.db", "init"),
        ("sqlite:junk.db", "stats"), (url, "enqueue", "hello"), ("nowhere:jobs", "stats"),
    }  # fmt: skip
    real = [case for case in cases if case[0] in real_ones]
    assert len(real) == len(real_ones)
    results = cli_many([args for args, _, _ in real], cwd=tmp_path)
    for (args, status, message), done in zip(real, results, strict=True):
        assert (args, done.status, error_line(done)) == (args, status, need + message)
    for args, status, message in cases:
        if args not in real_ones:
            with pytest.raises(SystemExit) as exited:
                main(["queue", *args])
            out, err = capsys.readouterr()
            assert (args, exited.value.code, out, err) == (args, status, "", f"{need}{message}\n")
    assert not (tmp_path / "missing.db").exists()  # no empty database left by a typo
    assert logging.getLogger("servekit.sql").propagate  # as it was before main()
    # Nothing was enqueued by the failed commands.
    with sql.open_backend(f"sqlite:{tmp_path}/jobs.db") as backend:
        assert backend.stats()["default"]["pending"] == 0


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("90s", 90), ("30m", 1800), ("12h", 43200), ("7d", 604800), ("2w", 1209600),
     ("1h30m", 5400), ("0.5", 0.5), ("1.5h", 5400), ("0", 0)],
)  # fmt: skip
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text", ["", "-1", "7x", "h", "1h 30m", "nan", "inf", "1e400", "d7", "5300w", "1e12"]
)
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


# -- PostgreSQL -------------------------------------------------------------------------


def test_every_subcommand_on_postgresql() -> None:
    server = shared_server()
    url = server.new_database()
    assert ok(cli(url, "init")) == (
        f"created the queue tables in {url} (schema version {sql.SCHEMA_VERSION})\n"
    )
    assert ok(cli(url, "init")) == f"{url} is already at schema version {sql.SCHEMA_VERSION}\n"
    first, second = cli_many(
        [(f"{url}?queue=emails", "enqueue", '{"to": "b@example.com"}', "--priority", "-3",
          "--run-at", "2000-01-01T00:00:00+00:00"),
         (url, "enqueue", "blob", "--bytes", "--queue", "blobs")],
        ROOT,
    )  # fmt: skip
    assert {ok(first), ok(second)} == {"1\n", "2\n"}
    blob = int(second.out)
    with sql.open_backend(f"{url}?queue=emails") as backend:
        [job] = backend.claim()
        assert (job.id, job.payload, job.priority) == (3 - blob, {"to": "b@example.com"}, -3)
        assert job.run_at == datetime(2000, 1, 1, tzinfo=UTC)
        backend.complete(job)
    dead = make_dead(url, 2)  # ids 3 and 4; 2 stays pending
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE servekit_jobs SET finished_at = now() - interval '2 hours' "
                     "WHERE state = 'done'")  # fmt: skip

    table, listed = cli_many([(url, "stats"), (url, "dead", "--json")], ROOT)
    assert ok(table) == stats_table(
        {"blobs": (1, 0, 0, 0), "default": (0, 0, 0, 2), "emails": (0, 0, 1, 0)}
    )
    rows = json.loads(ok(listed))
    assert [(r["id"], r["queue"], r["payload"]) for r in rows] == [
        (dead[1], "default", {"n": 1}), (dead[0], "default", {"n": 0}),
    ]  # fmt: skip
    assert rows[0]["error"].endswith("ValueError: bad row 4\nsecond line of the message")
    retry = cli(url, "retry", "3", str(blob))
    assert (retry.status, retry.out) == (1, "retried 1 row\n")
    assert retry.err == f"servekit: row {blob} not retried: it is pending, not dead\n"
    retried, purged = cli_many(
        [(url, "retry", "--all"), (url, "purge", "--older-than", "1h")], ROOT
    )
    assert ok(retried) == "retried 1 row\n"
    assert ok(purged) == "purged 1 done row\n"
    with sql.open_backend(url) as backend:
        assert backend.stats() == {
            "blobs": {"pending": 1, "running": 0, "done": 0, "dead": 0},
            "default": {"pending": 2, "running": 0, "done": 0, "dead": 0},
        }  # emails has no row left: a queue is listed while it has rows (or the URL names it)


def test_postgresql_errors_are_one_line() -> None:
    server = shared_server()
    empty = server.new_database()
    nowhere = f"postgresql://postgres:secret@127.0.0.1:{_free_port()}/jobs"
    shown = nowhere.replace(":secret@", ":***@")
    code = "import sys; sys.modules['psycopg'] = None; from servekit.cli import main; main()"
    without = partial(
        subprocess.run,
        [sys.executable, "-c", code, "queue", "postgresql://127.0.0.1/db", "stats"],
        capture_output=True, text=True, timeout=WAIT, check=False,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )  # fmt: skip
    with ThreadPoolExecutor(max_workers=1) as pool:
        missing = pool.submit(without)
        results = cli_many([(nowhere, "stats"), (empty, "stats"), (empty, "enqueue", "1")], ROOT)
        result = missing.result()
    assert results[0].status == 1
    assert error_line(results[0]).startswith(
        f"servekit: error: cannot connect to PostgreSQL at {shown}: "
    )
    assert "secret" not in results[0].err
    for done in results[1:]:
        assert done.status == 1
        assert error_line(done) == (
            f"servekit: error: {empty} has no servekit queue tables: create them with "
            f"`servekit queue {empty} init`"
        )
    # psycopg missing: the extra to install, in one line.
    assert result.returncode == 1
    line = error_line(Done(result.returncode, result.stdout, result.stderr))
    assert line.startswith("servekit: error: ")
    assert "pip install 'servekit[postgres]'" in line
