"""``servekit queue URL init|enqueue|stats|dead|retry|purge``: the queue from the shell.

``add_parser(commands)`` adds the ``queue`` command to ``servekit``'s
subcommands; ``run(args)`` runs it and returns the exit status:

- 0: done;
- 1: the operation failed (the database cannot be reached, the tables are
  missing or at another version, psycopg is missing, a payload is not JSON,
  ``retry`` left a given id alone), with one line on stderr;
- 2: a mistake in the arguments (``servekit: error: ...``, as every command).

Output for people is a line or an aligned table; ``stats --json`` and
``dead --json`` print one JSON document whose shape is documented in
docs/cli.md and kept stable.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import logging
import math
import os
import re
import sqlite3
import sys
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import parse_qsl

from servekit.sql._errors import QueueError, SchemaError
from servekit.sql._job import STATES, PayloadError
from servekit.sql._schema import SCHEMA_VERSION
from servekit.sql._url import check_queue_name, parse_url

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence

    from servekit.sql._job import DeadJob
    from servekit.sql._postgres import PostgresBackend
    from servekit.sql._sqlite import SQLiteBackend
    from servekit.sql._url import QueueURL

    AnyBackend = SQLiteBackend | PostgresBackend

__all__ = ["add_parser", "parse_duration", "run"]

#: The range of the ``integer`` columns (``priority``, ``max_attempts``).
_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1
#: The longest duration taken (100 years): past it, datetime arithmetic overflows.
_LONGEST = 100 * 365.25 * 86400
_UNITS = {"w": 604800.0, "d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
#: The line of a traceback that names the exception: ``module.Error: message``.
_EXCEPTION_LINE = re.compile(r"[A-Za-z_][\w.]*(?::\s|$)")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([wdhms])")
#: What ``SchemaError`` adds for Python callers; on the command line, noise.
_PYTHON_HINTS = (" (or the backend's init())", " (or init())")


class _Failure(Exception):
    """The command failed: one line on stderr, exit status 1."""


# -- argument types ---------------------------------------------------------------------


def _type(name: str, parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = name  # argparse names the type in "invalid <name> value"
    return convert


def parse_duration(text: str) -> float:
    """Seconds from ``90``, ``90s``, ``30m``, ``12h``, ``7d``, ``2w`` or a sum of
    them (``1h30m``); ValueError if ``text`` is none of these."""
    spec = text.strip().lower()
    seconds: float | None = None
    with contextlib.suppress(ValueError):
        seconds = float(spec)
    if seconds is None and spec and _DURATION_PART.sub("", spec) == "":
        seconds = sum(float(n) * _UNITS[unit] for n, unit in _DURATION_PART.findall(spec))
    if seconds is None or not math.isfinite(seconds) or not 0 <= seconds <= _LONGEST:
        raise ValueError(
            f"{text!r} is not a duration: seconds, or a number with s, m, h, d or w "
            "(90, 90s, 30m, 12h, 7d, 1h30m), up to 100 years"
        )
    return seconds


def _int_in(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise ValueError(f"{text!r} is not a whole number from {low} to {high}")
        return value

    return parse


def _run_at(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is not an ISO 8601 time (2030-01-31T09:00:00+01:00, ...Z, "
            "or without an offset for local time)"
        ) from None
    return when if when.utcoffset() is not None else when.astimezone()


def _dedupe_key(text: str) -> str:
    if not text:
        raise ValueError("a de-duplication key is not empty")
    return text


# -- the parser -------------------------------------------------------------------------


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Add ``queue`` to ``commands`` (the ``add_subparsers()`` of ``servekit``)."""
    queue = commands.add_parser(
        "queue",
        help="the SQL work queue: init, enqueue, stats, dead, retry, purge",
        description="Operate the work queue of servekit.sql at URL: sqlite:jobs.db, "
        "sqlite:///abs/jobs.db or postgresql://user@host/db; ?queue=NAME is the default "
        "of --queue. Exit status: 0 done, 1 failed (one line on stderr), 2 bad arguments.",
    )
    queue.add_argument("url", metavar="URL", help="the queue's database")
    queue.set_defaults(queue_parser=queue)
    actions = queue.add_subparsers(dest="queue_action", metavar="ACTION", required=True)
    queue_name = _type("queue name", check_queue_name)

    actions.add_parser(
        "init",
        help="create the tables, or migrate them to this servekit's schema version",
        description="Create the queue's tables, or migrate them to schema version "
        f"{SCHEMA_VERSION}; says which. Safe to run again.",
    )

    enqueue = actions.add_parser(
        "enqueue",
        help="add a row; prints its id",
        description="Add a row; print its id (the live row's id when --dedupe-key matches "
        "one). PAYLOAD is JSON text (a string is quoted: '\"hello\"'); '-' reads it from stdin.",
    )
    enqueue.add_argument("payload", metavar="PAYLOAD", help="JSON text, or '-' for stdin")
    enqueue.add_argument(
        "--queue", type=queue_name, metavar="Q", help="default: the URL's ?queue=, else default"
    )
    enqueue.add_argument("--priority", type=_type("priority", _int_in(_INT_MIN, _INT_MAX)),
                         metavar="N", default=0, help="higher first (default: 0)")  # fmt: skip
    when = enqueue.add_mutually_exclusive_group()
    when.add_argument("--run-at", type=_type("time", _run_at), metavar="ISO8601",
                      help="not claimed before this time (no offset: local time)")  # fmt: skip
    when.add_argument("--delay", type=_type("duration", parse_duration), metavar="SECONDS",
                      help="not claimed before this long from now (90, 30m, 2h...)")  # fmt: skip
    enqueue.add_argument("--dedupe-key", type=_type("key", _dedupe_key), metavar="KEY",
                         help="at most one pending or running row of the queue has it")  # fmt: skip
    enqueue.add_argument("--max-attempts", type=_type("count", _int_in(1, _INT_MAX)), metavar="N",
                         help="attempts before the dead state (default: the worker's)")  # fmt: skip
    enqueue.add_argument("--bytes", action="store_true", dest="raw",
                         help="PAYLOAD is raw bytes, not JSON")  # fmt: skip

    stats = actions.add_parser(
        "stats",
        help="row counts by queue and state",
        description="Row counts of every queue in the table (and the URL's queues) by state: "
        "pending, running, done, dead.",
    )
    stats.add_argument("--json", action="store_true", help="one JSON object (see docs/cli.md)")

    dead = actions.add_parser(
        "dead",
        help="rows in the dead state, with their errors",
        description="Dead rows, newest first: id, queue, attempts, when they failed and the "
        "error (its last line for a traceback; all of it with --json).",
    )
    dead.add_argument(
        "--queue", type=queue_name, metavar="Q", help="default: the URL's ?queue=, else all"
    )
    dead.add_argument("--limit", type=_type("count", _int_in(1, _INT_MAX)), default=100,
                      metavar="N", help="at most N rows (default: 100)")  # fmt: skip
    dead.add_argument("--json", action="store_true", help="a JSON array (see docs/cli.md)")

    retry = actions.add_parser(
        "retry",
        help="bring dead rows back to pending",
        description="Bring dead rows back: pending, due now, attempts from 0. Exit status 1 "
        "if a given ID was not retried (each is named on stderr).",
    )
    retry.add_argument("ids", nargs="*", type=_type("id", _int_in(1, 2**63 - 1)), metavar="ID")
    retry.add_argument("--all", action="store_true", help="every dead row (of --queue)")
    retry.add_argument("--queue", type=queue_name, metavar="Q",
                       help="with --all: default: the URL's ?queue=, else all")  # fmt: skip

    purge = actions.add_parser(
        "purge",
        help="delete done rows older than a given age",
        description="Delete the done rows finished more than DURATION ago: of --queue, or "
        "of the queues the URL names (?queue=), else of every queue.",
    )
    purge.add_argument("--older-than", type=_type("duration", parse_duration), required=True,
                       metavar="DURATION", help="7d, 12h, 30m, 90s or seconds")  # fmt: skip
    purge.add_argument(
        "--queue", type=queue_name, metavar="Q", help="default: the URL's ?queue=, else all"
    )
    return queue  # type: ignore[no-any-return]


# -- running ----------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """Run ``servekit queue``; the exit status."""
    try:
        url = parse_url(args.url)
    except ValueError as exc:
        return _usage(args, str(exc))
    action: Callable[[argparse.Namespace, QueueURL], int] = _ACTIONS[args.queue_action]
    try:
        with _warnings_to_stderr():
            return action(args, url)
    except _Failure as exc:
        return _fail(str(exc))
    except SchemaError as exc:
        message = str(exc)
        for hint in _PYTHON_HINTS:
            message = message.replace(hint, "")
        return _fail(message)
    except (QueueError, PayloadError) as exc:
        return _fail(str(exc))
    except sqlite3.Error as exc:
        return _fail(f"SQLite error on {url.path}: {exc}")
    except BrokenPipeError:
        # stdout closed early (| head): not an error of ours; quiet, as cat is.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as exc:  # never a traceback: what it was, in one line
        if type(exc).__module__.startswith("psycopg"):
            return _fail(f"PostgreSQL error: {exc}")
        return _fail(f"unexpected {type(exc).__name__}: {exc}")


def _usage(args: argparse.Namespace, message: str) -> NoReturn:
    """A mistake in the arguments: ``servekit: error: ...``, exit status 2 (the
    parser's ``error()``, as for every other command)."""
    parser: argparse.ArgumentParser = args.queue_parser
    parser.error(message)


def _fail(message: str) -> int:
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    print(f"servekit: error: {'; '.join(lines)}", file=sys.stderr)  # noqa: T201
    return 1


class _StderrHandler(logging.Handler):
    """The storage layer's warnings (SQLite still locked, trying again...) as
    ``servekit: warning: ...``; not those that repeat the error about to be printed."""

    _REPEATS = ("cannot connect to PostgreSQL", "lost the connection to PostgreSQL")

    def emit(self, record: logging.LogRecord) -> None:
        if str(record.msg).startswith(self._REPEATS):
            return
        with contextlib.suppress(Exception):
            print(f"servekit: warning: {record.getMessage()}", file=sys.stderr)  # noqa: T201


@contextlib.contextmanager
def _warnings_to_stderr() -> Iterator[None]:
    """While the command runs, the storage layer's warnings go to stderr, once."""
    logger = logging.getLogger("servekit.sql")
    handler = _StderrHandler(logging.WARNING)
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False  # one line per warning, whatever the root logger does
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _open(url: QueueURL, *, create: bool = False) -> AnyBackend:
    """The backend of ``url``; a SQLite file that does not exist is an error
    unless ``create`` (init): a typo must not leave an empty database behind."""
    from servekit.sql import open_backend

    if url.scheme == "sqlite" and not create:
        path = os.path.expanduser(url.path)
        if not os.path.exists(path):
            raise _Failure(
                f"no SQLite database at {path!r}: create it with `servekit queue {url} init`"
            )
    return open_backend(url)


def _explicit_queues(text: str, url: QueueURL) -> tuple[str, ...]:
    """The URL's queues if it names any (``?queue=``), else ()."""
    query = text.partition("?")[2]
    if any(key == "queue" for key, _ in parse_qsl(query, keep_blank_values=True)):
        return url.queues
    return ()


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


# -- init -------------------------------------------------------------------------------


def _init(args: argparse.Namespace, url: QueueURL) -> int:
    with _open(url, create=True) as backend:
        before = _schema_version(backend)
        backend.init()
    if before is None:
        print(f"created the queue tables in {url} (schema version {SCHEMA_VERSION})")  # noqa: T201
    elif before == SCHEMA_VERSION:
        print(f"{url} is already at schema version {SCHEMA_VERSION}")  # noqa: T201
    else:
        print(f"migrated {url} from schema version {before} to {SCHEMA_VERSION}")  # noqa: T201
    return 0


def _schema_version(backend: AnyBackend) -> int | None:
    """The version of the tables (None: none), read as ``init()`` reads it."""
    from servekit.sql._sqlite import SQLiteBackend

    # The backends read it for init(); no public method says it, hence their own.
    if isinstance(backend, SQLiteBackend):
        with backend._lock:
            return backend._version(backend._connection(check=False))
    return backend._run(backend._version, check=False)


# -- enqueue ----------------------------------------------------------------------------


def _enqueue(args: argparse.Namespace, url: QueueURL) -> int:
    queue = args.queue
    if queue is None:
        named = _explicit_queues(args.url, url)
        if len(named) > 1:
            _usage(
                args, f"the URL names several queues ({', '.join(named)}): say which with --queue"
            )
    payload = _payload(args.payload, raw=args.raw)
    run_at: datetime | timedelta | None = args.run_at
    if args.delay is not None:
        run_at = timedelta(seconds=args.delay)
    with _open(url) as backend:
        row = backend.enqueue(
            payload,
            queue=queue,
            priority=args.priority,
            run_at=run_at,
            dedupe_key=args.dedupe_key,
            max_attempts=args.max_attempts,
        )
    print(row)  # noqa: T201
    return 0


def _payload(text: str, *, raw: bool) -> object:
    """PAYLOAD: raw bytes (``--bytes``) or parsed JSON; ``-`` is stdin."""
    if raw:
        return sys.stdin.buffer.read() if text == "-" else os.fsencode(text)
    where = "the payload"
    if text == "-":
        where = "the payload on stdin"
        data = sys.stdin.buffer.read()
        try:
            text = data.decode()
        except UnicodeDecodeError:
            raise _Failure(
                f"{where} is not UTF-8 text: give --bytes to enqueue raw bytes"
            ) from None

    def no_constant(name: str) -> object:
        raise ValueError(f"{name} is not a JSON number")

    try:
        return json.loads(text, parse_constant=no_constant)
    except ValueError as exc:
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise _Failure(
            f"{where} is not JSON ({exc}): {shown!r}; quote a string as JSON "
            """('"hello"'), or give --bytes to enqueue it as raw bytes"""
        ) from None
    except RecursionError:
        raise _Failure(f"{where} is JSON nested too deeply") from None


# -- stats ------------------------------------------------------------------------------


def _stats(args: argparse.Namespace, url: QueueURL) -> int:
    with _open(url) as backend:
        stats = backend.stats()
    queues = {name: {state: stats[name][state] for state in STATES} for name in sorted(stats)}
    total = {state: sum(counts[state] for counts in queues.values()) for state in STATES}
    if args.json:
        print(json.dumps({"queues": queues, "total": total}, indent=2))  # noqa: T201
        return 0
    rows = [[name, *(str(counts[state]) for state in STATES)] for name, counts in queues.items()]
    _table(["queue", *STATES], rows, numeric=range(1, 1 + len(STATES)))
    return 0


def _table(header: list[str], rows: list[list[str]], *, numeric: Iterable[int] = ()) -> None:
    """Print ``rows`` under ``header``, columns aligned (``numeric`` ones to the right);
    the last column is not padded."""
    right = set(numeric)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        cells = [
            cell.rjust(width) if i in right else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        if len(header) - 1 not in right:
            cells[-1] = row[-1]
        print("  ".join(cells).rstrip())  # noqa: T201


# -- dead -------------------------------------------------------------------------------


def _dead(args: argparse.Namespace, url: QueueURL) -> int:
    queues: Sequence[str | None] = (
        (args.queue,) if args.queue is not None else _explicit_queues(args.url, url) or (None,)
    )
    with _open(url) as backend:
        rows = [row for queue in queues for row in backend.dead(queue, args.limit)]
        rows = sorted(rows, key=lambda row: row.id, reverse=True)[: args.limit]
        total = None
        if len(rows) == args.limit and not args.json:
            stats = backend.stats()
            total = sum(
                counts["dead"]
                for name, counts in stats.items()
                if queues == (None,) or name in queues
            )
    if args.json:
        print(json.dumps([_dead_json(row) for row in rows], indent=2))  # noqa: T201
        return 0
    where = "" if queues == (None,) else f" in {', '.join(str(q) for q in queues)}"
    if not rows:
        print(f"no dead rows{where}")  # noqa: T201
        return 0
    _table(
        ["id", "queue", "attempts", "failed_at", "error"],
        [
            [str(row.id), row.queue, str(row.attempt), _when(row.failed_at), _headline(row)]
            for row in rows
        ],
        numeric=(0, 2),
    )
    if total is not None and total > len(rows):
        print(  # noqa: T201
            f"({len(rows)} of {total} dead rows{where} shown: --limit N for more)",
            file=sys.stderr,
        )
    return 0


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _headline(row: DeadJob) -> str:
    """The error in one line: for a traceback, its exception's line (``ValueError:
    bad input``, the last of a chain), else the error's first line."""
    lines = [line.rstrip() for line in row.last_error.splitlines() if line.strip()]
    if not lines:
        return "-"
    if lines[0].startswith("Traceback (most recent call last):"):
        raised = [line for line in lines if _EXCEPTION_LINE.match(line)]
        if raised:
            return raised[-1]
    return lines[0].strip()


def _dead_json(row: DeadJob) -> dict[str, Any]:
    payload: Any = None
    raw: str | None = None
    try:
        if row.encoding != "json":
            raise PayloadError("not JSON")
        payload = row.payload()
    except PayloadError:
        raw = base64.b64encode(row.raw_payload).decode()
    return {
        "id": row.id,
        "queue": row.queue,
        "attempts": row.attempt,
        "max_attempts": row.max_attempts,
        "priority": row.priority,
        "created_at": row.created_at.astimezone(UTC).isoformat(),
        "failed_at": row.failed_at.astimezone(UTC).isoformat(),
        "error": row.last_error,
        "encoding": row.encoding,
        "payload": payload,
        "payload_base64": raw,
        "dedupe_key": row.dedupe_key,
    }


# -- retry ------------------------------------------------------------------------------


def _retry(args: argparse.Namespace, url: QueueURL) -> int:
    if args.all and args.ids:
        _usage(args, "give IDs or --all, not both")
    if not args.all and not args.ids:
        _usage(args, "give the IDs of dead rows to retry, or --all")
    if args.queue is not None and not args.all:
        _usage(args, "--queue goes with --all (IDs name their rows)")
    with _open(url) as backend:
        if args.all:
            queues: Sequence[str | None] = (
                (args.queue,) if args.queue is not None else _explicit_queues(args.url, url)
            ) or (None,)
            count = sum(backend.retry_all(queue) for queue in queues)
            print(f"retried {_plural(count, 'row')}")  # noqa: T201
            return 0
        ids = list(dict.fromkeys(args.ids))
        before = _states(backend, ids)
        dead = [i for i in ids if before.get(i) == "dead"]
        count = backend.retry(dead) if dead else 0
        after = _states(backend, dead) if count < len(dead) else {}
    print(f"retried {_plural(count, 'row')}")  # noqa: T201
    left = 0
    for i in ids:
        state = before.get(i)
        if state is None:
            reason = "no such row"
        elif state != "dead":
            reason = f"it is {state}, not dead"
        elif after.get(i) == "dead":
            reason = "a pending or running row of its queue holds its dedupe key"
        else:
            continue
        left += 1
        print(f"servekit: row {i} not retried: {reason}", file=sys.stderr)  # noqa: T201
    return 1 if left else 0


def _states(backend: AnyBackend, ids: list[int]) -> dict[int, str]:
    """The state of each row of ``ids`` that exists."""
    from servekit.sql._schema import JOBS
    from servekit.sql._sqlite import SQLiteBackend

    # No public method reads a row's state: the backends' own read path.
    found: dict[int, str] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        if isinstance(backend, SQLiteBackend):
            sql = f"SELECT id, state FROM {JOBS} WHERE id IN ({', '.join('?' * len(chunk))})"
            rows = backend._read(partial(_fetch, sql, chunk))
        else:
            sql = f"SELECT id, state FROM {JOBS} WHERE id = ANY(%s)"
            rows = backend._run(partial(_fetch, sql, (chunk,)))
        found.update((int(i), str(state)) for i, state in rows)
    return found


def _fetch(sql: str, params: Sequence[object], conn: Any, *_: object) -> list[Any]:
    return list(conn.execute(sql, params).fetchall())


# -- purge ------------------------------------------------------------------------------


def _purge(args: argparse.Namespace, url: QueueURL) -> int:
    queues: Sequence[str | None] = (
        (args.queue,) if args.queue is not None else _explicit_queues(args.url, url) or (None,)
    )
    with _open(url) as backend:
        count = sum(backend.purge(args.older_than, queue) for queue in queues)
    where = "" if queues == (None,) else f" of {', '.join(str(q) for q in queues)}"
    print(f"purged {_plural(count, 'done row')}{where}")  # noqa: T201
    return 0


_ACTIONS: dict[str, Callable[[argparse.Namespace, QueueURL], int]] = {
    "init": _init,
    "enqueue": _enqueue,
    "stats": _stats,
    "dead": _dead,
    "retry": _retry,
    "purge": _purge,
}
