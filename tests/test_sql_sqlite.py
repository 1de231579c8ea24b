"""The SQLite backend's own settings: WAL, synchronous, the busy timeout, and a
writer that holds the lock longer than it (retried, never "database is locked")."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from servekit import sql
from servekit.sql import QueueUnavailable


@pytest.fixture
def path(tmp_path: Path) -> Path:
    path = tmp_path / "jobs.db"
    with sql.open_backend(f"sqlite:{path}") as backend:
        backend.init()
    return path


def test_wal_synchronous_and_busy_timeout(path: Path) -> None:
    with sql.open_backend(f"sqlite:{path}", busy_timeout=2.5) as backend:
        conn = backend._connection()
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 2500
    with sql.open_backend(f"sqlite:{path}", synchronous="FULL") as backend:
        assert backend._connection().execute("PRAGMA synchronous").fetchone()[0] == 2
    with pytest.raises(ValueError, match="synchronous must be"):
        sql.open_backend(f"sqlite:{path}", synchronous="SOMETIMES")


def test_a_relative_path_and_a_clock(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(path.parent)
    now = [1_000_000.0]
    with sql.open_backend("sqlite:jobs.db", clock=lambda: now[0]) as backend:
        backend.enqueue("x")
        (job,) = backend.claim(lease=10)
        assert job.run_at.timestamp() == 1_000_000.0
        assert job.lease_until.timestamp() == 1_000_010.0
        assert backend.claim() == []
        now[0] += 11  # the lease ran out, by the clock the backend was given
        (again,) = backend.claim()
        assert again.attempt == 2


def _hold_the_write_lock(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("BEGIN IMMEDIATE")
    return conn


def test_a_long_writer_is_waited_for_with_a_log_line(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    backend = sql.open_backend(f"sqlite:{path}", busy_timeout=0.1, busy_retries=50)
    holder = _hold_the_write_lock(path)
    released = threading.Event()

    def release() -> None:
        holder.execute("COMMIT")
        released.set()

    timer = threading.Timer(0.35, release)  # longer than busy_timeout: retried, logged
    timer.start()
    try:
        assert backend.enqueue("waited") > 0
    finally:
        timer.join()
        holder.close()
        backend.close()
    assert released.is_set()
    warnings = [r.getMessage() for r in caplog.records if r.name == "servekit.sql"]
    assert warnings
    assert "still locked by another writer after 0.1 s; trying again" in warnings[0]


def test_a_lock_held_for_ever_is_queue_unavailable(path: Path) -> None:
    backend = sql.open_backend(f"sqlite:{path}", busy_timeout=0.05, busy_retries=1)
    holder = _hold_the_write_lock(path)
    try:
        with pytest.raises(QueueUnavailable, match="stayed locked by another writer") as info:
            backend.claim()
        assert "database is locked" not in str(info.value)
        assert info.value.__cause__ is None
        # Readers are not blocked by the writer (WAL).
        assert backend.stats()["default"]["pending"] == 0
    finally:
        holder.close()
        backend.close()


def test_only_init_creates_the_file(tmp_path: Path) -> None:
    """A producer or a command with a mistyped path gets the error that says to run
    init, and leaves no empty database behind; init() makes the file."""
    path = tmp_path / "typo.db"
    url = f"sqlite:{path}"
    with pytest.raises(sql.SchemaError, match=r"no servekit queue tables.*init"):
        sql.enqueue(url, {"n": 1})
    with sql.open_backend(url) as backend, pytest.raises(sql.SchemaError):
        backend.stats()
    assert not path.exists()
    with sql.open_backend(url) as backend:
        backend.init()
        backend.enqueue({"n": 1})
        assert backend.stats()["default"]["pending"] == 1
