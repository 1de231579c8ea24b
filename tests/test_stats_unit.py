"""Stats on its own, beside tests/test_stats.py (which runs it through servers): the
counters, the snapshot, and the cache of open connections' bytes on a fake clock
(``servekit.stats.monotonic`` is replaced, so "a second later" takes no time)."""

from __future__ import annotations

import dataclasses
import threading

import pytest

import servekit.stats
from servekit.stats import LIVE_BYTES_MAX_AGE, Stats, StatsSnapshot
from tests.conftest import WAIT


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


class OpenBytes:
    """open_bytes(): returns ``value`` and counts its calls."""

    def __init__(self, received: int = 0, sent: int = 0) -> None:
        self.value = (received, sent)
        self.calls = 0

    def __call__(self) -> tuple[int, int]:
        self.calls += 1
        return self.value


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(servekit.stats, "monotonic", fake)
    return fake


def test_a_snapshot_copies_every_counter() -> None:
    stats = Stats()
    for _ in range(3):
        stats.connection()
        stats.request()
    stats.not_a_request()  # a failed preface: counted by the loop, taken back
    stats.error()
    stats.transferred(100, 200)
    stats.datagram(7)
    stats.sent(5)
    stats.limit("idle_timeout")
    stats.limit("idle_timeout")
    stats.limit("max_connections")
    snapshot = stats.snapshot(connections_open=2)
    assert snapshot == StatsSnapshot(
        connections_open=2,
        connections_total=3,
        requests=2,
        errors=1,
        bytes_in=107,
        bytes_out=205,
        limits={"idle_timeout": 2, "max_connections": 1},
    )
    assert snapshot.summary() == (
        "open=2 total=3 requests=2 errors=1 in=107B out=205B idle_timeout=2 max_connections=1"
    )


def test_a_snapshot_does_not_change_with_the_counters() -> None:
    stats = Stats()
    stats.limit("read_timeout")
    snapshot = stats.snapshot(0)
    stats.limit("read_timeout")
    stats.limit("max_line_length")
    stats.error()
    stats.transferred(1, 1)
    assert snapshot.limits == {"read_timeout": 1}  # a copy, not the live Counter
    assert (snapshot.errors, snapshot.bytes_in) == (0, 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        snapshot.errors = 5  # type: ignore[misc]
    assert type(snapshot.limits) is dict


def test_the_empty_summary() -> None:
    assert Stats().snapshot(0).summary() == "open=0 total=0 requests=0 errors=0 in=0B out=0B"


def test_counters_changed_from_many_threads_lose_nothing() -> None:
    stats = Stats()
    threads_count, rounds = 8, 5000
    start = threading.Barrier(threads_count)

    def work() -> None:
        start.wait(WAIT)
        for _ in range(rounds):
            stats.error()
            stats.transferred(1, 2)
            stats.limit("x")
            stats.not_a_request()

    threads = [threading.Thread(target=work) for _ in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
        assert not thread.is_alive()
    snapshot = stats.snapshot(0)
    total = threads_count * rounds
    assert (snapshot.errors, snapshot.bytes_in, snapshot.bytes_out) == (total, total, 2 * total)
    assert snapshot.limits == {"x": total}
    assert snapshot.requests == -total  # taken back from requests the loop never counted here


def test_a_snapshot_is_taken_at_one_moment() -> None:
    """transferred() moves both byte counts under one lock; a snapshot taken while
    threads call it always shows bytes_out == 2 * bytes_in, and never goes back. (Read
    field by field without the lock, a snapshot lands between the two additions; with
    the GIL's switches that is likely, not certain, in a run: the test can miss such a
    bug, it cannot fail on correct code.)"""
    stats = Stats()
    stop = threading.Event()

    def work() -> None:
        while not stop.is_set():
            stats.transferred(1, 2)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        last = 0
        for _ in range(20000):
            snapshot = stats.snapshot(0)
            assert snapshot.bytes_out == 2 * snapshot.bytes_in
            assert snapshot.bytes_in >= last
            last = snapshot.bytes_in
    finally:
        stop.set()
        for thread in threads:
            thread.join(WAIT)
    assert last > 0  # the threads did run beside the snapshots


# -- the open connections' bytes, cached ------------------------------------------------------


def test_without_open_bytes_the_closed_totals_are_shown(clock: Clock) -> None:
    stats = Stats()
    stats.transferred(10, 20)
    snapshot = stats.snapshot(0)
    assert (snapshot.bytes_in, snapshot.bytes_out) == (10, 20)


def test_open_bytes_are_read_at_most_once_a_max_age(clock: Clock) -> None:
    stats = Stats()
    open_bytes = OpenBytes(100, 50)
    for _ in range(1000):
        snapshot = stats.snapshot(1, open_bytes)
        assert (snapshot.bytes_in, snapshot.bytes_out) == (100, 50)
    assert open_bytes.calls == 1
    open_bytes.value = (300, 150)
    clock.now += LIVE_BYTES_MAX_AGE * 0.99
    assert stats.snapshot(1, open_bytes).bytes_in == 100  # still the cached figure
    assert open_bytes.calls == 1
    clock.now += LIVE_BYTES_MAX_AGE * 0.01
    assert stats.snapshot(1, open_bytes).bytes_in == 300  # a max age later: read again
    assert open_bytes.calls == 2
    assert stats.snapshot(1, open_bytes).bytes_in == 300
    assert open_bytes.calls == 2


def test_the_cache_follows_the_module_setting(
    clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(servekit.stats, "LIVE_BYTES_MAX_AGE", 60.0)
    stats = Stats()
    open_bytes = OpenBytes(1, 1)
    stats.snapshot(1, open_bytes)
    clock.now += 59
    stats.snapshot(1, open_bytes)
    assert open_bytes.calls == 1
    clock.now += 1
    stats.snapshot(1, open_bytes)
    assert open_bytes.calls == 2


def test_each_stats_has_its_own_cache(clock: Clock) -> None:
    first, second = Stats(), Stats()
    first_bytes, second_bytes = OpenBytes(1, 2), OpenBytes(3, 4)
    first.snapshot(1, first_bytes)
    snapshot = second.snapshot(1, second_bytes)
    assert (snapshot.bytes_in, snapshot.bytes_out) == (3, 4)
    assert (first_bytes.calls, second_bytes.calls) == (1, 1)


def test_closed_and_open_bytes_add_up(clock: Clock) -> None:
    stats = Stats()
    stats.transferred(1000, 2000)  # connections closed before
    snapshot = stats.snapshot(1, OpenBytes(10, 20))
    assert (snapshot.bytes_in, snapshot.bytes_out) == (1010, 2020)


def test_a_connection_read_open_then_closed_is_not_counted_twice(clock: Clock) -> None:
    """Its bytes are in the cached sum, then join the closed totals: shown once."""
    stats = Stats()
    open_bytes = OpenBytes(100, 50)
    assert stats.snapshot(1, open_bytes).bytes_in == 100
    stats.transferred(100, 50)  # it closes; open_bytes() would now say (0, 0)
    open_bytes.value = (0, 0)
    snapshot = stats.snapshot(0, open_bytes)  # still cached
    assert (snapshot.bytes_in, snapshot.bytes_out) == (100, 50)
    clock.now += LIVE_BYTES_MAX_AGE
    snapshot = stats.snapshot(0, open_bytes)  # read again: closed 100 + open 0
    assert (snapshot.bytes_in, snapshot.bytes_out) == (100, 50)
    assert open_bytes.calls == 2


def test_closed_totals_past_the_cached_sum_are_shown_at_once(clock: Clock) -> None:
    """While the cache holds, a connection that was not in it closes: the closed totals
    (read at every snapshot) are the larger lower bound, and are shown without waiting."""
    stats = Stats()
    open_bytes = OpenBytes(100, 100)
    stats.snapshot(1, open_bytes)
    stats.transferred(500, 700)
    snapshot = stats.snapshot(1, open_bytes)
    assert (snapshot.bytes_in, snapshot.bytes_out) == (500, 700)
    assert open_bytes.calls == 1


def test_the_figure_never_goes_back(clock: Clock) -> None:
    """A connection closing while the open ones are read can be missing from both parts
    for that read: the sum then drops, and the larger figure seen before is kept."""
    stats = Stats()
    stats.snapshot(2, OpenBytes(300, 300))
    clock.now += LIVE_BYTES_MAX_AGE
    stats.transferred(100, 100)  # one of the two closed with 100 moved...
    snapshot = stats.snapshot(1, OpenBytes(50, 50))  # ...and the other reads lower than it was
    assert (snapshot.bytes_in, snapshot.bytes_out) == (300, 300)


def test_open_bytes_are_read_once_however_many_threads_ask(clock: Clock) -> None:
    """Snapshots from many threads at once within one max age: a single read."""
    stats = Stats()
    open_bytes = OpenBytes(7, 7)
    start = threading.Barrier(8)
    results: list[int] = []

    def read() -> None:
        start.wait(WAIT)
        for _ in range(200):
            results.append(stats.snapshot(1, open_bytes).bytes_in)

    threads = [threading.Thread(target=read) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
        assert not thread.is_alive()
    assert open_bytes.calls == 1
    assert set(results) == {7}
