"""The SQL work queue's backends against real databases: every test runs on
SQLite (a file in a temporary folder) and on PostgreSQL (a server the tests
start, tests/_postgres.py; skipped with the reason when it is not installed).

No test sleeps in place of synchronisation: a test that waits for a lease
or a back-off to run out polls for the condition, bounded by WAIT.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import pytest

from servekit import sql
from servekit.sql import DeadJob, Job, SchemaError
from tests._postgres import shared_server
from tests.conftest import WAIT, until

BACKENDS = ["sqlite", "postgresql"]

Factory = Callable[..., Any]


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A queue URL on an empty database, its tables created."""
    if request.param == "sqlite":
        url = f"sqlite:{tmp_path / 'jobs.db'}"
    else:
        url = shared_server().new_database()
    with sql.open_backend(url) as backend:
        backend.init()
    return url


@pytest.fixture
def make(url: str) -> Iterator[Factory]:
    """Open backends on ``url`` (options as keywords); all closed at the end."""
    opened: list[Any] = []

    def make(query: str = "", **options: Any) -> Any:
        backend = sql.open_backend(url + query, **options)
        opened.append(backend)
        return backend

    yield make
    for backend in opened:
        backend.close()


@pytest.fixture
def backend(make: Factory) -> Any:
    return make()


def raw(url: str, statement: str, params: tuple[Any, ...] = ()) -> list[Any]:
    """Run SQL on the database behind ``url`` (the placeholders are ``?``)."""
    parsed = sql.parse_url(url)
    if parsed.scheme == "sqlite":
        with sqlite3.connect(parsed.path) as conn:
            return conn.execute(statement, params).fetchall()
    import psycopg

    with psycopg.connect(parsed.conninfo, autocommit=True) as pg:
        cursor = pg.execute(statement.replace("?", "%s"), params)  # type: ignore[arg-type]
        return cursor.fetchall() if cursor.description else []


def counts(backend: Any, queue: str = "default") -> dict[str, int]:
    return dict(backend.stats()[queue])


# -- the basic life of a row ----------------------------------------------------------------


def test_enqueue_claim_complete(backend: Any) -> None:
    row_id = backend.enqueue({"to": "a@example.com", "n": [1, 2]})
    assert counts(backend) == {"pending": 1, "running": 0, "done": 0, "dead": 0}
    (job,) = backend.claim(limit=5, lease=30)
    assert isinstance(job, Job)
    assert (job.id, job.queue, job.payload) == (
        row_id,
        "default",
        {"to": "a@example.com", "n": [1, 2]},
    )
    assert (job.attempt, job.max_attempts, job.priority, job.dedupe_key) == (1, 5, 0, None)
    assert job.run_at.tzinfo is UTC
    assert job.created_at <= job.run_at + timedelta(seconds=1)
    assert job.lease_until - datetime.now(UTC) > timedelta(seconds=20)
    assert counts(backend)["running"] == 1
    assert backend.claim(limit=5) == []
    assert backend.complete(job) is True
    assert backend.complete(job) is False  # acknowledged once
    assert counts(backend) == {"pending": 0, "running": 0, "done": 1, "dead": 0}
    assert backend.next_due() is None


def test_the_owner_token(backend: Any, make: Factory) -> None:
    _host, pid, token = backend.owner.split(":")
    assert pid == str(__import__("os").getpid())
    assert len(token) == 8
    assert make().owner != backend.owner


def test_priority_then_run_at_then_id(backend: Any) -> None:
    past = datetime.now(UTC) - timedelta(minutes=5)
    ids = {
        "low": backend.enqueue("low", priority=-1),
        "a": backend.enqueue("a"),
        "high": backend.enqueue("high", priority=10),
        "b": backend.enqueue("b"),
        "old": backend.enqueue("old", run_at=past),
    }
    jobs = backend.claim(limit=10)
    assert [job.payload for job in jobs] == ["high", "old", "a", "b", "low"]
    assert [job.id for job in jobs] == [ids[job.payload] for job in jobs]


def test_run_at_in_the_future_waits_until_due(backend: Any) -> None:
    backend.enqueue("later", run_at=timedelta(seconds=0.4))
    backend.enqueue("much later", run_at=datetime.now(UTC) + timedelta(hours=1))
    assert backend.claim() == []
    due = backend.next_due()
    assert due is not None
    assert 0 < due <= 0.4
    started = time.monotonic()
    assert backend.wait(WAIT) is True
    assert time.monotonic() - started < WAIT
    (job,) = until(backend.claim, "the row due in 0.4 s")
    assert job.payload == "later"
    assert backend.claim() == []
    assert backend.wait(0.05) is False  # the other is an hour away


def test_batch_claim(backend: Any) -> None:
    ids = backend.enqueue_many(range(25))
    assert len(ids) == 25
    assert ids == sorted(ids)
    batches = [backend.claim(limit=10) for _ in range(4)]
    assert [len(batch) for batch in batches] == [10, 10, 5, 0]
    claimed = [job.id for batch in batches for job in batch]
    assert claimed == ids
    assert [job.payload for job in batches[0]] == list(range(10))
    done = backend.complete_many(batches[0] + batches[1])
    assert len(done) == 20
    assert counts(backend) == {"pending": 0, "running": 5, "done": 20, "dead": 0}


def test_enqueue_many_gives_each_payload_its_own_id(url: str, backend: Any) -> None:
    """Ids in the payloads' order, each id the row of its payload, across PostgreSQL's
    statements of 10,000 rows; JSON and bytes mixed; the options on every row."""
    payloads: list[Any] = [i if i % 3 else f"b{i}".encode() for i in range(20_005)]
    ids = backend.enqueue_many(payloads, priority=7, max_attempts=2, queue="bulk")
    assert len(ids) == len(payloads)
    assert ids == sorted(ids)
    columns = "id, payload, encoding, priority, max_attempts, queue"
    found = raw(url, f"SELECT {columns} FROM servekit_jobs")
    rows = {row[0]: row[1:] for row in found}
    for row_id, payload in zip(ids, payloads, strict=True):
        data, encoding, priority, max_attempts, queue = rows[row_id]
        if isinstance(payload, bytes):
            assert (bytes(data), encoding) == (payload, "bytes")
        else:
            assert (json.loads(bytes(data)), encoding) == (payload, "json")
        assert (priority, max_attempts, queue) == (7, 2, "bulk")


def test_dedupe_key(backend: Any) -> None:
    first = backend.enqueue("one", dedupe_key="user-7")
    assert backend.enqueue("two", dedupe_key="user-7") == first
    other_queue = backend.enqueue("three", queue="other", dedupe_key="user-7")
    assert other_queue != first
    assert counts(backend)["pending"] == 1
    (job,) = backend.claim()
    assert job.dedupe_key == "user-7"
    assert backend.enqueue("four", dedupe_key="user-7") == first  # running still counts
    backend.complete(job)
    again = backend.enqueue("five", dedupe_key="user-7")  # done: no longer a duplicate
    assert again not in (first, other_queue)


def test_bytes_payloads_round_trip(backend: Any) -> None:
    data = bytes(range(256)) * 3
    backend.enqueue(data)
    backend.enqueue(bytearray(b"\x00"))
    backend.enqueue("text")
    jobs = backend.claim(limit=3)
    assert [job.payload for job in jobs] == [data, b"\x00", "text"]
    assert type(jobs[0].payload) is bytes


def test_queues_are_separate(make: Factory) -> None:
    producer = make()
    producer.enqueue(1, queue="emails")
    producer.enqueue(2, queue="sms")
    producer.enqueue(3)
    emails = make("?queue=emails")
    assert [job.payload for job in emails.claim(limit=10)] == [1]
    both = make(queues=["sms", "default"])
    assert sorted(job.payload for job in both.claim(limit=10)) == [2, 3]
    stats = producer.stats()
    assert stats["emails"]["running"] == stats["sms"]["running"] == stats["default"]["running"] == 1
    # A queue with no rows is there when it is the backend's own; every state is counted.
    assert make("?queue=empty").stats()["empty"] == {
        "pending": 0,
        "running": 0,
        "done": 0,
        "dead": 0,
    }


def test_a_claim_over_several_queues_keeps_the_order(make: Factory) -> None:
    producer = make()
    for payload, queue, priority in [
        ("a0", "a", 0),
        ("b9", "b", 9),
        ("a5", "a", 5),
        ("b0", "b", 0),
    ]:
        producer.enqueue(payload, queue=queue, priority=priority)
    worker = make("?queue=a,b")
    assert [job.payload for job in worker.claim(limit=3)] == ["b9", "a5", "a0"]
    assert [job.payload for job in worker.claim(limit=3)] == ["b0"]


def test_enqueue_into_the_urls_queue(make: Factory) -> None:
    emails = make("?queue=emails")
    emails.enqueue("x")
    assert emails.stats()["emails"]["pending"] == 1
    with pytest.raises(ValueError, match="several queues"):
        make("?queue=a,b").enqueue("x")
    with pytest.raises(ValueError, match="bad queue name"):
        emails.enqueue("x", queue="no/such")


# -- leases ---------------------------------------------------------------------------------


def test_an_expired_lease_is_claimed_again(make: Factory) -> None:
    first, second = make(), make()
    first.enqueue("work")
    (lost,) = first.claim(lease=0.2)
    (job,) = until(lambda: second.claim(lease=30), "the row again after its lease")
    assert (job.id, job.attempt) == (lost.id, 2)
    # The first worker lost it: it can neither extend, acknowledge, fail nor release it.
    assert first.extend([lost], 30) == []
    assert first.complete(lost) is False
    assert first.fail(lost, "late") is None
    assert first.release(lost) is False
    assert second.complete(job) is True
    assert counts(second) == {"pending": 0, "running": 0, "done": 1, "dead": 0}


def test_the_same_worker_cannot_ack_an_older_claim(backend: Any) -> None:
    backend.enqueue("work")
    (stale,) = backend.claim(lease=0.2)
    (fresh,) = until(backend.claim, "the row again")
    assert fresh.attempt == 2
    assert backend.complete(stale) is False  # same owner, older attempt
    assert backend.complete(fresh) is True


def test_a_late_acknowledgement_beats_the_reap_of_its_own_row(backend: Any) -> None:
    """The row's lease ran out and no one claimed it again yet: the acknowledgement
    that comes with the next claim (one statement on PostgreSQL, with the reap)
    records it done, and the reap in the same step does not make it pending."""
    backend.enqueue("late")
    (late,) = backend.claim(lease=0.2)
    until(lambda: backend.next_due() == 0, "the lease of the row to run out")
    backend.enqueue("next")
    done, claimed = backend.complete_and_claim([late], 1)
    assert done == [late]
    assert [job.payload for job in claimed] == ["next"]
    assert counts(backend) == {"pending": 0, "running": 1, "done": 1, "dead": 0}


def test_extend_keeps_the_row(make: Factory) -> None:
    worker, other = make(), make()
    worker.enqueue("a")
    worker.enqueue("b")
    jobs = worker.claim(limit=2, lease=0.3)
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:  # extended well past the first lease
        assert worker.extend(jobs, 0.3) == jobs
        assert other.claim() == []
        time.sleep(0.05)
    assert worker.complete_many(jobs) == jobs


def test_lease_expired_on_the_last_attempt_is_dead(make: Factory) -> None:
    reported: list[DeadJob] = []
    worker = make(max_attempts=2, on_dead=reported.append)
    worker.enqueue({"x": 1})
    worker.claim(lease=0.2)
    (job,) = until(lambda: worker.claim(lease=0.2), "attempt 2")
    assert job.attempt == 2
    assert job.last_attempt
    until(lambda: worker.claim() == [] and reported, "the row dead after its last lease")
    (dead,) = reported
    assert dead.id == job.id
    assert dead.attempt == 2
    assert dead.last_error.startswith("lease expired on attempt 2 (worker ")
    assert dead.payload() == {"x": 1}
    assert counts(worker) == {"pending": 0, "running": 0, "done": 0, "dead": 1}
    assert worker.dead()[0].last_error == dead.last_error


# -- failures, retries, the dead state ------------------------------------------------------


def test_fail_backs_off_then_goes_dead(make: Factory) -> None:
    worker = make(retry_backoff=0.05, max_attempts=3)
    row_id = worker.enqueue("flaky")
    for attempt in (1, 2, 3):
        (job,) = until(worker.claim, f"attempt {attempt}")
        assert (job.id, job.attempt) == (row_id, attempt)
        try:
            raise ValueError(f"boom {attempt}")
        except ValueError as exc:
            state = worker.fail(job, exc)
        if attempt < 3:
            assert state == "pending"
            due = worker.next_due()
            # Back-off: 0.05 s doubling, less up to 25 % of jitter (and the time spent).
            assert due is not None
            assert due <= 0.05 * 2 ** (attempt - 1)
            assert due > 0.75 * 0.05 * 2 ** (attempt - 1) - 0.03
    assert state == "dead"
    assert counts(worker) == {"pending": 0, "running": 0, "done": 0, "dead": 1}
    (dead,) = worker.dead()
    assert (dead.id, dead.attempt, dead.max_attempts) == (row_id, 3, None)
    assert dead.last_error.startswith("Traceback")
    assert dead.last_error.endswith("ValueError: boom 3")
    assert dead.failed_at >= dead.created_at


def test_the_rows_own_max_attempts(backend: Any) -> None:
    backend.enqueue("once", max_attempts=1)
    (job,) = backend.claim()
    assert job.max_attempts == 1
    assert backend.fail(job, "no") == "dead"
    assert backend.dead()[0].max_attempts == 1


def test_a_permanent_failure_is_dead_at_once(backend: Any) -> None:
    backend.enqueue("bad input")
    (job,) = backend.claim()
    assert backend.fail(job, "cannot ever work", permanent=True) == "dead"
    assert backend.dead()[0].last_error == "cannot ever work"


def test_retry_brings_dead_rows_back(backend: Any, make: Factory) -> None:
    ids = [backend.enqueue(n, queue=q) for n, q in [(1, "a"), (2, "a"), (3, "b")]]
    worker = make(queues=["a", "b"])
    for job in worker.claim(limit=10):
        worker.fail(job, f"failed {job.payload}", permanent=True)
    assert {job.id for job in backend.dead(limit=10)} == set(ids)
    assert [job.id for job in backend.dead(queue="a")] == [ids[1], ids[0]]  # newest first
    assert len(backend.dead(limit=1)) == 1
    assert backend.retry([ids[0], 999_999]) == 1
    assert backend.retry([ids[0]]) == 0  # not dead any more
    assert backend.retry_all("b") == 1
    assert backend.retry_all() == 1
    stats = backend.stats()
    assert stats["a"]["pending"] == 2
    assert stats["b"]["pending"] == 1
    jobs = worker.claim(limit=10)
    assert sorted(job.payload for job in jobs) == [1, 2, 3]
    assert {job.attempt for job in jobs} == {1}  # attempts count from 0 again


def test_retry_leaves_a_row_whose_dedupe_key_is_live_again(backend: Any) -> None:
    dead_id = backend.enqueue("old", dedupe_key="k")
    (job,) = backend.claim()
    backend.fail(job, "x", permanent=True)
    live_id = backend.enqueue("new", dedupe_key="k")
    assert backend.retry([dead_id]) == 0
    (job,) = backend.claim()
    assert job.id == live_id
    backend.complete(job)
    assert backend.retry([dead_id]) == 1


def test_release_gives_back_without_an_attempt(make: Factory) -> None:
    worker, other = make(), make()
    worker.enqueue("a")
    (job,) = worker.claim()
    assert worker.release(job) is True
    assert worker.release(job) is False
    (again,) = other.claim()
    assert (again.id, again.attempt) == (job.id, 1)
    assert other.release_many([again]) == [again]


def test_purge_removes_old_done_rows(backend: Any) -> None:
    backend.enqueue_many(range(5))
    jobs = backend.claim(limit=4)
    backend.complete_many(jobs[:3])
    backend.fail(jobs[3], "x", permanent=True)
    assert backend.purge(3600) == 0
    until(lambda: backend.purge(0.001) == 3, "the done rows purged", timeout=2)
    assert counts(backend) == {"pending": 1, "running": 0, "done": 0, "dead": 1}
    with pytest.raises(ValueError, match="older_than"):
        backend.purge(-1)


def test_purge_of_one_queue_leaves_the_others(backend: Any, make: Factory) -> None:
    backend.enqueue_many(range(2), queue="mail")
    backend.enqueue_many(range(3))
    worker = make(queues=["mail", "default"])
    worker.complete_many(worker.claim(limit=5))
    until(lambda: backend.purge(0.001, queue="mail") == 2, "mail's done rows purged", timeout=2)
    assert backend.stats()["default"]["done"] == 3
    assert backend.purge(0.001, queue="default") == 3
    with pytest.raises(ValueError, match="queue"):
        backend.purge(0.001, queue="")


# -- payloads that cannot be read -----------------------------------------------------------


def test_an_undecodable_payload_is_dead_and_the_claim_goes_on(url: str, make: Factory) -> None:
    reported: list[DeadJob] = []
    worker = make(on_dead=reported.append)
    now = time.time()
    bad = [(b"\xff\xfe", "json"), (b"{not json", "json"), (b"x", "pickle")]
    for data, encoding in bad:
        if url.startswith("sqlite"):
            raw(url, "INSERT INTO servekit_jobs (queue, payload, encoding, priority, run_at, "
                "created_at, updated_at) VALUES ('default', ?, ?, 5, ?, ?, ?)",
                (data, encoding, now, now, now))  # fmt: skip
        else:
            raw(url, "INSERT INTO servekit_jobs (queue, payload, encoding, priority) "
                "VALUES ('default', ?, ?, 5)", (data, encoding))  # fmt: skip
    good = worker.enqueue("fine")
    # limit=1: the first claims find only bad rows (higher priority); the claim goes on.
    (job,) = worker.claim(limit=1)
    assert job.id == good
    assert [dead.last_error.split(":")[0] for dead in reported] == ["undecodable payload"] * 3
    reasons = " ".join(dead.last_error for dead in reported)
    assert "not UTF-8" in reasons
    assert "not JSON" in reasons
    assert "unknown payload encoding 'pickle'" in reasons
    assert counts(worker) == {"pending": 0, "running": 1, "done": 0, "dead": 3}
    assert {dead.raw_payload for dead in worker.dead()} == {data for data, _ in bad}


def test_an_undecodable_row_another_worker_took_meanwhile_is_left_to_it(
    url: str, make: Factory
) -> None:
    """An undecodable row is buried after the claim's commit: if by then its lease had run
    out and another worker had claimed it (forced here, inside the bury), the bury leaves
    that worker's claim alone and reports nothing."""
    reported: list[DeadJob] = []
    worker = make(on_dead=reported.append)
    if url.startswith("sqlite"):
        now = time.time()
        raw(url, "INSERT INTO servekit_jobs (queue, payload, encoding, priority, run_at, "
            "created_at, updated_at) VALUES ('default', ?, 'json', 0, ?, ?, ?)",
            (b"{not json", now, now, now))  # fmt: skip
    else:
        raw(url, "INSERT INTO servekit_jobs (queue, payload, encoding) "
            "VALUES ('default', ?, 'json')", (b"{not json",))  # fmt: skip
    ((row,),) = raw(url, "SELECT id FROM servekit_jobs")
    bury = worker._bury

    def taken_first(conn: Any, *args: Any) -> Any:
        conn.execute(
            f"UPDATE servekit_jobs SET owner = 'another', attempt = attempt + 1 WHERE id = {row}"
        )
        return bury(conn, *args)

    worker._bury = taken_first
    assert worker.claim(limit=1) == []
    assert reported == []
    assert raw(url, "SELECT state, owner, attempt FROM servekit_jobs") == [
        ("running", "another", 2)
    ]


# -- schema ---------------------------------------------------------------------------------


def test_schema_versions(url: str, make: Factory) -> None:
    backend = make()
    backend.init()  # again: nothing to do
    raw(url, "UPDATE servekit_meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(SchemaError, match="version 99, newer than this servekit's 1"):
        make().claim()
    with pytest.raises(SchemaError, match="newer"):
        make().init()
    raw(url, "UPDATE servekit_meta SET value = '0' WHERE key = 'schema_version'")
    with pytest.raises(SchemaError, match="version 0, older than this servekit's 1: migrate"):
        make().stats()
    raw(url, "DROP TABLE servekit_meta")
    raw(url, "DROP TABLE servekit_jobs")
    fresh = make()
    with pytest.raises(SchemaError, match="has no servekit queue tables"):
        fresh.enqueue("x")
    with pytest.raises(SchemaError, match="has no servekit queue tables"):
        sql.enqueue(url, "x")
    fresh.init()
    assert fresh.enqueue("x") > 0


# -- waiting --------------------------------------------------------------------------------


def test_wait_wakes_for_a_row_from_another_connection(url: str, make: Factory) -> None:
    # PostgreSQL: a poll far away, so that only the NOTIFY can wake it in time.
    worker = make(poll_interval=0.05 if url.startswith("sqlite") else 30)
    producer = make()
    assert worker.wait(0.05) in (True, False)  # settles what is pending (PostgreSQL: LISTEN)
    assert worker.wait(0.05) is False
    started = time.monotonic()
    loop = asyncio.new_event_loop()
    try:
        loop.call_later(0.2, producer.enqueue, "hello")
        result = loop.run_until_complete(asyncio.to_thread(worker.wait, WAIT))
    finally:
        loop.close()
    elapsed = time.monotonic() - started
    assert result is True
    assert 0.15 < elapsed < WAIT / 2
    (job,) = worker.claim()
    assert job.payload == "hello"


def test_wake_ends_a_wait_at_once(backend: Any) -> None:
    backend.wait(0)
    loop = asyncio.new_event_loop()
    try:
        loop.call_later(0.1, backend.wake)
        started = time.monotonic()
        assert loop.run_until_complete(asyncio.to_thread(backend.wait, WAIT)) is True
    finally:
        loop.close()
    assert time.monotonic() - started < WAIT / 2


def test_next_due_sees_leases(backend: Any) -> None:
    assert backend.next_due() is None
    backend.enqueue("x")
    assert backend.next_due() == 0
    backend.claim(lease=60)
    due = backend.next_due()
    assert due is not None
    assert 50 < due <= 60


# -- the producer API -----------------------------------------------------------------------


def test_enqueue_with_a_url(url: str, backend: Any) -> None:
    row_id = sql.enqueue(url, {"a": 1}, priority=3, max_attempts=2, dedupe_key="d")
    assert sql.enqueue(url, {"a": 2}, dedupe_key="d") == row_id
    assert asyncio.run(sql.enqueue_async(url, "async")) > row_id
    jobs = backend.claim(limit=5)
    assert [(job.payload, job.priority, job.max_attempts) for job in jobs] == [
        ({"a": 1}, 3, 2), ("async", 0, 5),
    ]  # fmt: skip


def test_enqueue_in_the_callers_transaction(url: str, backend: Any) -> None:
    parsed = sql.parse_url(url)
    if parsed.scheme == "sqlite":
        conn = sqlite3.connect(parsed.path)
        try:
            sql.enqueue(None, "rolled back", connection=conn)
            conn.rollback()
            kept = sql.enqueue(None, "committed", connection=conn)
            conn.commit()
            async_kept = asyncio.run(sql.enqueue_async(None, "async", connection=conn))
            conn.commit()
        finally:
            conn.close()
    else:
        import psycopg

        with psycopg.connect(parsed.conninfo) as pg:
            sql.enqueue(url, "rolled back", connection=pg)
            pg.rollback()
            kept = sql.enqueue(url, "committed", connection=pg)
            pg.commit()

        async def in_async_transaction() -> int:
            async with await psycopg.AsyncConnection.connect(parsed.conninfo) as apg:
                await sql.enqueue_async(None, "rolled back too", connection=apg)
                await apg.rollback()
                row_id = await sql.enqueue_async(None, "async", connection=apg)
                await apg.commit()
                return row_id

        async_kept = asyncio.run(in_async_transaction())
    jobs = backend.claim(limit=10)
    assert [(job.id, job.payload) for job in jobs] == [(kept, "committed"), (async_kept, "async")]
    with pytest.raises(TypeError, match="connection must be"):
        sql.enqueue(None, "x", connection=object())
    with pytest.raises(ValueError, match="needs a URL"):
        sql.enqueue(None, "x")


# -- several processes ----------------------------------------------------------------------

ROWS_PER_PROCESS = 150


def _drain(url: str, batch: int) -> list[int]:
    """A worker process: claim and acknowledge until a claim finds nothing."""
    done: list[int] = []
    backend = sql.open_backend(url)
    try:
        while jobs := backend.claim(limit=batch, lease=60):
            acknowledged = backend.complete_many(jobs)
            assert acknowledged == jobs
            done += [job.id for job in jobs]
    finally:
        backend.close()
    return done


@pytest.mark.timeout(120)
def test_several_processes_claim_each_row_once(backend: Any) -> None:
    processes = 4
    ids = backend.enqueue_many(range(processes * ROWS_PER_PROCESS))
    with ProcessPoolExecutor(processes, mp_context=get_context("spawn")) as pool:
        results = list(pool.map(_drain, [str(backend.url.redacted())] * processes, [1, 2, 3, 5]))
    claimed = [row_id for result in results for row_id in result]
    assert sorted(claimed) == ids  # every row, none twice
    assert counts(backend)["done"] == len(ids)
