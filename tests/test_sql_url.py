"""servekit.sql without a database: URLs, queue names, payloads, back-off, arguments."""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta

import pytest

from servekit.sql import (
    DEFAULT_QUEUE,
    STATES,
    DeadJob,
    Job,
    PayloadError,
    QueueURL,
    backoff_delay,
    check_queue_name,
    parse_url,
)
from servekit.sql._backend import error_text, new_job
from servekit.sql._job import decode_payload, encode_payload


@pytest.mark.parametrize(
    ("url", "path", "queues"),
    [
        ("sqlite:jobs.db", "jobs.db", ("default",)),
        ("sqlite:data/jobs.db?queue=a,b", "data/jobs.db", ("a", "b")),
        ("sqlite:/abs/path.db", "/abs/path.db", ("default",)),
        ("sqlite:///abs/path.db?queue=a&queue=b&queue=a", "/abs/path.db", ("a", "b")),
        ("sqlite://localhost/abs/path.db", "/abs/path.db", ("default",)),
        ("SQLITE:my%20jobs.db", "my jobs.db", ("default",)),
    ],
)
def test_sqlite_urls(url: str, path: str, queues: tuple[str, ...]) -> None:
    parsed = parse_url(url)
    assert parsed == QueueURL("sqlite", queues, path=path)
    assert parse_url(parsed) is parsed


@pytest.mark.parametrize(
    ("url", "conninfo", "queues"),
    [
        ("postgresql://u@h:5433/db?queue=emails", "postgresql://u@h:5433/db", ("emails",)),
        ("postgres://u@h/db", "postgresql://u@h/db", ("default",)),
        (
            "postgresql://u:secret@h/db?sslmode=require&queue=a,b&queue=c",
            "postgresql://u:secret@h/db?sslmode=require",
            ("a", "b", "c"),
        ),
        ("postgresql:///db", "postgresql:///db", ("default",)),
    ],
)
def test_postgres_urls(url: str, conninfo: str, queues: tuple[str, ...]) -> None:
    parsed = parse_url(url)
    assert parsed.scheme == "postgresql"
    assert parsed.conninfo == conninfo
    assert parsed.queues == queues


def test_a_password_never_shows() -> None:
    parsed = parse_url("postgresql://user:hunter2@db.example:5432/jobs?queue=a")
    assert "hunter2" not in str(parsed)
    assert "hunter2" not in repr(parsed.redacted())
    assert str(parsed) == "postgresql://user:***@db.example:5432/jobs?queue=a"
    with pytest.raises(ValueError) as info:
        parse_url("postgresql://user:hunter2@h:99999/db")
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("jobs.db", "starts with sqlite: or postgresql://"),
        ("mysql://h/db", "starts with sqlite: or postgresql://"),
        ("sqlite:", "no database file"),
        ("sqlite:///", "no database file"),
        ("sqlite://host/x.db", "names no host"),
        ("sqlite:jobs.db?mode=ro", "unknown parameter 'mode'"),
        ("sqlite:jobs.db?queue=", "bad queue name ''"),
        ("sqlite:jobs.db?queue=a,,b", "bad queue name ''"),
        ("sqlite:jobs.db?queue=em%20ails", "bad queue name 'em ails'"),
        ("postgresql://h:port/db", "Port could not be cast"),
        ("postgresql:db", "postgresql://[user@]host"),
        ("postgresql://h/db?queue=a;drop", "bad queue name 'a;drop'"),
        ("postgresql://h/db#x", "fragment"),
    ],
)
def test_bad_urls_say_what_is_wrong(url: str, says: str) -> None:
    with pytest.raises(ValueError, match="bad queue URL") as info:
        parse_url(url)
    assert says in str(info.value)


def test_queue_names() -> None:
    for name in ("default", "emails", "a.b-c_d", "Q1", "x" * 100):
        assert check_queue_name(name) == name
    for bad in ("", "a b", "a/b", "é", "x" * 101, 3, None):
        with pytest.raises(ValueError, match="bad queue name"):
            check_queue_name(bad)


@pytest.mark.parametrize(
    "payload",
    [None, True, 0, -3, 2.5, "text ünïcode", [1, [2]], {"a": {"b": [None]}}, b"", b"\x00\xff"],
)
def test_payloads_round_trip(payload: object) -> None:
    encoding, data = encode_payload(payload)
    assert isinstance(data, bytes)
    assert decode_payload(encoding, data) == payload
    assert type(decode_payload(encoding, data)) is type(payload)


@pytest.mark.parametrize(
    "text",
    ['{"a":1}', ' {"a": 1} ', '\n[1,2]\t', "1 2", "[1] x", "", " ", "NaN", '"\\ud800"', "[1,",
     '{"a":1}}', "3.5e2", "-0", "nul"],
)  # fmt: skip
def test_a_payload_decodes_as_json_loads_decodes_it(text: str) -> None:
    """decode_payload calls json's scanner itself for compact text: what it returns, or
    refuses, is what json.loads would (rows written by hand may have anything)."""
    try:
        expected = json.loads(text)
    except json.JSONDecodeError:
        with pytest.raises(PayloadError, match="not JSON"):
            decode_payload("json", text.encode())
    else:
        got = decode_payload("json", text.encode())
        assert got == expected or (got != got and expected != expected)  # NaN
        assert type(got) is type(expected)


def test_bytes_like_payloads_are_bytes() -> None:
    assert encode_payload(bytearray(b"ab")) == ("bytes", b"ab")
    assert encode_payload(memoryview(b"ab")) == ("bytes", b"ab")


@pytest.mark.parametrize(
    ("payload", "says"),
    [(object(), "not JSON serializable"), (float("nan"), "Out of range"), ("\ud800", "UTF-8")],
)
def test_payloads_that_cannot_be_stored(payload: object, says: str) -> None:
    with pytest.raises(PayloadError, match=says):
        encode_payload(payload)


@pytest.mark.parametrize(
    ("encoding", "data", "says"),
    [
        ("json", b"\xff", "not UTF-8"),
        ("json", b"{", "not JSON"),
        ("json", b"[" * 100_000, "nested too deeply"),
        ("pickle", b"x", "unknown payload encoding 'pickle'"),
    ],
)
def test_payloads_that_cannot_be_read(encoding: str, data: bytes, says: str) -> None:
    with pytest.raises(PayloadError, match=says):
        decode_payload(encoding, data)


def test_backoff_doubles_is_capped_and_jittered() -> None:
    rng = random.Random(7)
    for attempt, full in [(1, 1.0), (2, 2.0), (3, 4.0), (10, 512.0), (11, 600.0), (500, 600.0)]:
        for _ in range(50):
            delay = backoff_delay(attempt, 1.0, 600.0, rng=rng)
            assert 0.75 * full <= delay <= full
    assert backoff_delay(3, 1.0, 600.0, jitter=0) == 4.0
    delays = {backoff_delay(1, 1.0, 600.0, rng=rng) for _ in range(20)}
    assert len(delays) > 1  # jitter: not all the same
    with pytest.raises(ValueError, match="attempt counts from 1"):
        backoff_delay(0, 1.0, 600.0)


def test_new_job_checks_its_arguments() -> None:
    url = parse_url("sqlite:x.db?queue=emails")
    job = new_job(
        url, {"a": 1}, queue=None, priority=0, run_at=None, dedupe_key=None, max_attempts=None
    )
    assert job.queue == "emails"
    assert new_job(
        None, 1, queue=None, priority=0, run_at=None, dedupe_key=None, max_attempts=None
    ).queue == DEFAULT_QUEUE  # fmt: skip
    cases: list[tuple[dict[str, object], type[Exception], str]] = [
        ({"queue": "no way"}, ValueError, "bad queue name"),
        ({"priority": 1.5}, TypeError, "priority must be an int"),
        ({"priority": True}, TypeError, "priority must be an int"),
        ({"priority": 2**31}, ValueError, "32 bits"),
        ({"run_at": datetime(2030, 1, 1)}, ValueError, "aware datetime"),
        ({"run_at": 5}, TypeError, "run_at must be"),
        ({"dedupe_key": ""}, ValueError, "dedupe_key"),
        ({"dedupe_key": "a\0b"}, ValueError, "dedupe_key"),
        ({"max_attempts": 0}, ValueError, "max_attempts"),
    ]
    for change, error, says in cases:
        arguments: dict[str, object] = {
            "queue": "q", "priority": 0, "run_at": timedelta(0), "dedupe_key": None,
            "max_attempts": None, **change,
        }  # fmt: skip
        with pytest.raises(error, match=says):
            new_job(url, 1, **arguments)  # type: ignore[arg-type]
    several = parse_url("sqlite:x.db?queue=a,b")
    with pytest.raises(ValueError, match="several queues"):
        new_job(several, 1, queue=None, priority=0, run_at=None, dedupe_key=None, max_attempts=None)


def test_error_text() -> None:
    try:
        raise ValueError("boom")
    except ValueError as exc:
        text = error_text(exc)
    assert text.startswith("Traceback")
    assert text.endswith("ValueError: boom")
    assert error_text("a\0b") == "a\\0b"
    assert len(error_text("x" * 100_000)) <= 16_000


def test_the_public_types() -> None:
    assert STATES == ("pending", "running", "done", "dead")
    for cls in (Job, DeadJob, QueueURL):
        assert cls.__dataclass_params__.frozen  # type: ignore[attr-defined]
        assert hasattr(cls, "__slots__")
