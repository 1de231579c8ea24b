"""The async engine's Stream (the protocol under each connection) and its Watchdog, alone.

Unit tests of the protocol object: the transport is a fake that records what the stream
asks of it, and the loop is a fake whose clock only moves when a test moves it, so an
idle timeout of 300 s is tested in no time and timers fire exactly when they are due.
Futures come from a real (never run) asyncio loop, and are checked with done(),
result() and exception(); a few tests that await run on a real loop, bounded.
The network tests (tests/test_aio.py) run the stream on real sockets.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from servekit.aio import stream as stream_module
from servekit.aio.stream import READ_HIGH_WATER, WATCH_INTERVAL, Stream, Watchdog
from tests.conftest import WAIT

START = 1000.0  # the fake clock's reading at the start of each test


class FakeTimer:
    """What FakeLoop.call_later returns: asyncio.TimerHandle's when() and cancel()."""

    def __init__(self, when: float, callback: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self._when = when
        self.callback = callback
        self.args = args
        self.cancelled = False
        self.fired = False

    def when(self) -> float:
        return self._when

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
    """time(), call_later() and create_future(): all Stream and Watchdog use of a loop.

    ``advance(seconds)`` moves the clock, running each timer that falls due on the
    way at its own time, in order, as a loop would (timers they schedule included).
    """

    def __init__(self) -> None:
        self.now = START
        self.timers: list[FakeTimer] = []
        self._real = asyncio.new_event_loop()  # makes the futures; never run

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> FakeTimer:
        assert delay >= 0, delay
        timer = FakeTimer(self.now + delay, callback, args)
        self.timers.append(timer)
        return timer

    def create_future(self) -> asyncio.Future[Any]:
        return self._real.create_future()

    def pending(self) -> list[FakeTimer]:
        return [t for t in self.timers if not t.cancelled and not t.fired]

    def advance(self, seconds: float) -> None:
        target = self.now + seconds
        while True:
            due = [t for t in self.pending() if t.when() <= target]
            if not due:
                break
            timer = min(due, key=FakeTimer.when)
            self.now = max(self.now, timer.when())
            timer.fired = True
            timer.callback(*timer.args)
        self.now = target

    def close(self) -> None:
        self._real.close()


class FakeTransport:
    """The transport calls the stream makes, recorded; reading starts unpaused."""

    def __init__(self, ssl_object: object = None) -> None:
        self.ssl_object = ssl_object
        self.reading = True
        self.pauses = 0
        self.resumes = 0
        self.closing = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.ssl_object if name == "ssl_object" else default

    def pause_reading(self) -> None:
        assert self.reading, "paused twice"
        self.reading = False
        self.pauses += 1

    def resume_reading(self) -> None:
        assert not self.reading, "resumed while reading"
        self.reading = True
        self.resumes += 1

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True


class Expired(Exception):
    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


@pytest.fixture
def loop() -> Iterator[FakeLoop]:
    fake = FakeLoop()
    yield fake
    fake.close()


def _stream(
    loop: FakeLoop,
    idle: float | None = None,
    watchdog: Watchdog | None = None,
    transport: FakeTransport | None = None,
) -> tuple[Stream, FakeTransport, list[str]]:
    """A stream with its connection made; the list collects the kinds that expired."""
    kinds: list[str] = []

    def expired(kind: str) -> Expired:
        kinds.append(kind)
        return Expired(kind)

    stream = Stream(loop, idle, watchdog)  # type: ignore[arg-type]
    stream.expired = expired
    transport = transport or FakeTransport()
    stream.connection_made(transport)  # type: ignore[arg-type]
    return stream, transport, kinds


def _waiting_drain(stream: Stream) -> asyncio.Future[None]:
    """drain() while paused: a future (when not paused it is a ready awaitable)."""
    waiter = stream.drain()
    assert isinstance(waiter, asyncio.Future)
    return waiter


def _failed_with(future: asyncio.Future[Any], kind: str) -> bool:
    """The future failed with what expired(kind) made (and its exception is retrieved)."""
    if not future.done():
        return False
    error = future.exception()
    return isinstance(error, Expired) and error.kind == kind


# -- the buffer, reads and EOF ----------------------------------------------------------


def test_take_gives_up_to_n_bytes_and_keeps_the_rest(loop: FakeLoop) -> None:
    stream, _, _ = _stream(loop)
    stream.data_received(b"hello ")
    stream.data_received(b"world")
    assert stream.buffer == b"hello world"
    assert stream.take(0) == b""
    assert stream.take(5) == b"hello"
    assert stream.buffer == b" world"
    assert stream.take(100) == b" world"  # more than there is: all of it
    assert stream.buffer == b""
    stream.data_received(b"abc")
    assert stream.take(-1) == b"abc"  # negative: all of it
    assert stream.take(-1) == b""
    assert isinstance(stream.take(-1), bytes)


def test_read_some_waits_then_takes_at_most_n_of_what_came(loop: FakeLoop) -> None:
    stream, _, _ = _stream(loop)
    future = stream.read_some(4)
    assert not future.done()
    stream.data_received(b"0123456789")
    assert future.result() == b"0123"
    assert stream.buffer == b"456789"  # the rest stays for the next read
    later = stream.read_some(100)  # a new wait: the old one is not woken twice
    stream.data_received(b"!")
    assert later.result() == b"456789!"


def test_wait_for_data_is_woken_and_leaves_the_bytes_in_the_buffer(loop: FakeLoop) -> None:
    stream, _, _ = _stream(loop)
    future = stream.wait_for_data()
    assert not future.done()
    stream.data_received(b"abc")
    assert future.result() is None
    assert stream.buffer == b"abc"


def test_data_with_no_read_waiting_is_buffered(loop: FakeLoop) -> None:
    stream, _, _ = _stream(loop)
    stream.data_received(b"abc")
    stream.data_received(b"def")
    assert stream.take(-1) == b"abcdef"


def test_a_cancelled_read_is_not_given_the_bytes(loop: FakeLoop) -> None:
    """A handler that gave up on a read (wait_for() cancels it) loses no bytes: they
    stay in the buffer for its next read."""
    stream, _, _ = _stream(loop)
    future = stream.read_some(10)
    future.cancel()
    stream.data_received(b"kept")
    assert stream.buffer == b"kept"


@pytest.mark.parametrize(("wait", "expected"), [("read_some", b""), ("wait_for_data", None)])
def test_eof_wakes_the_read_with_the_end(loop: FakeLoop, wait: str, expected: object) -> None:
    stream, _, _ = _stream(loop)
    future = stream.read_some(10) if wait == "read_some" else stream.wait_for_data()
    assert stream.eof_received() is True  # plain TCP: keep the half-open connection
    assert stream.eof
    assert future.result() == expected


def test_eof_under_tls_asks_the_transport_to_close(loop: FakeLoop) -> None:
    """Under TLS a half-closed connection cannot go on: eof_received() returns False."""
    stream, _, _ = _stream(loop, transport=FakeTransport(ssl_object=object()))
    assert stream.eof_received() is False
    assert stream.eof


def test_connection_lost_wakes_a_read_with_the_end_and_fails_a_drain(loop: FakeLoop) -> None:
    """A read waiting when the connection goes gets EOF (b""), as at a FIN, not an error;
    a drain waiting fails with ConnectionResetError, since what it waited to send is lost."""
    stream, _, _ = _stream(loop, idle=60)
    read = stream.read_some(10)
    stream.pause_writing()
    drain = _waiting_drain(stream)
    assert not drain.done()
    stream.connection_lost(ConnectionResetError("reset by peer"))
    assert read.result() == b""
    assert isinstance(drain.exception(), ConnectionResetError)
    assert stream.eof


def test_connection_lost_while_paused_makes_the_next_drain_fail(loop: FakeLoop) -> None:
    """Nothing would ever resume writing: drain() raises at once instead of waiting."""
    stream, _, _ = _stream(loop)
    stream.pause_writing()
    stream.connection_lost(None)
    with pytest.raises(ConnectionResetError):
        stream.drain()


def test_drain_after_eof_on_a_closing_transport_raises(loop: FakeLoop) -> None:
    stream, transport, _ = _stream(loop)
    stream.eof_received()
    stream.drain()  # EOF alone (half-closed): writing may go on
    transport.closing = True
    with pytest.raises(ConnectionResetError):
        stream.drain()


# -- writing: drain, pause and resume -----------------------------------------------------


def test_drain_is_ready_at_once_while_the_client_keeps_up(loop: FakeLoop) -> None:
    """drain() returns an awaitable that is done at once, and no future (none was made)."""
    stream, _, _ = _stream(loop)
    ready = stream.drain()
    assert not isinstance(ready, asyncio.Future)
    coroutine_like = ready.__await__()
    with pytest.raises(StopIteration):  # finishes without yielding to the loop
        next(coroutine_like)


def test_drain_waits_while_paused_until_resume_writing(loop: FakeLoop) -> None:
    stream, _, _ = _stream(loop)
    stream.pause_writing()
    assert stream.paused
    waiter = _waiting_drain(stream)
    assert not waiter.done()
    loop.advance(5)
    stream.resume_writing()
    assert not stream.paused
    assert waiter.done()
    assert waiter.result() is None
    assert stream.since == loop.time()  # the client took data: it is not idle
    assert not isinstance(stream.drain(), asyncio.Future)


def test_drain_and_closed_on_a_real_loop() -> None:
    """await works on what drain() returns, paused or not, and closed() returns once the
    connection is lost (and at once after)."""

    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        stream = Stream(loop, None)
        stream.connection_made(FakeTransport())  # type: ignore[arg-type]
        steps = []
        await stream.drain()
        steps.append("ready")
        stream.pause_writing()
        waiting = asyncio.ensure_future(stream.drain())
        closed = asyncio.ensure_future(stream.closed())
        await asyncio.sleep(0)  # let both start waiting (an ordering step, not a delay)
        assert not waiting.done()
        assert not closed.done()
        loop.call_soon(stream.resume_writing)
        await asyncio.wait_for(waiting, WAIT)
        steps.append("resumed")
        loop.call_soon(stream.connection_lost, None)
        await asyncio.wait_for(closed, WAIT)
        await asyncio.wait_for(stream.closed(), WAIT)
        steps.append("closed")
        return steps

    assert asyncio.run(main()) == ["ready", "resumed", "closed"]


# -- reading pauses past READ_HIGH_WATER --------------------------------------------------


def test_reading_pauses_past_the_high_water_mark_until_the_next_wait(loop: FakeLoop) -> None:
    stream, transport, _ = _stream(loop)
    stream.data_received(bytes(READ_HIGH_WATER))  # at the mark: not past it
    assert transport.reading
    stream.data_received(b"x")
    assert not transport.reading
    assert transport.pauses == 1
    stream.data_received(b"more")  # already paused: not paused twice
    assert transport.pauses == 1
    stream.take(-1)  # taking alone does not resume: the handler asks for more by waiting
    assert not transport.reading
    future = stream.read_some(10)
    assert transport.reading
    assert transport.resumes == 1
    stream.data_received(b"next")
    assert future.result() == b"next"
    assert transport.resumes == 1


def test_a_read_that_takes_little_of_a_full_buffer_still_resumes_at_its_wait(
    loop: FakeLoop,
) -> None:
    """The read woken by the data that crossed the mark takes part of it; reading stays
    paused until the handler waits again, and then resumes."""
    stream, transport, _ = _stream(loop)
    future = stream.read_some(10)
    stream.data_received(bytes(READ_HIGH_WATER + 100))
    assert future.result() == bytes(10)
    assert not transport.reading
    stream.wait_for_data()
    assert transport.reading


# -- idle and read timeouts through the watchdog -------------------------------------------


def test_a_read_idle_for_idle_timeout_fails_with_what_expired_makes(loop: FakeLoop) -> None:
    """idle=300 on the fake clock: not a moment before 300 s, and within WATCH_INTERVAL after."""
    stream, _, kinds = _stream(loop, idle=300)
    future = stream.read_some(10)
    loop.advance(299.9)
    assert not future.done()
    assert kinds == []
    loop.advance(0.1 + WATCH_INTERVAL)
    assert _failed_with(future, "idle")
    assert kinds == ["idle"]


def test_data_restarts_the_idle_clock(loop: FakeLoop) -> None:
    stream, _, kinds = _stream(loop, idle=300)
    first = stream.read_some(10)
    loop.advance(200)
    stream.data_received(b"x")
    assert first.result() == b"x"
    second = stream.read_some(10)
    loop.advance(299)  # 499 s since the connection began, 299 s since the last data
    assert not second.done()
    loop.advance(1 + WATCH_INTERVAL)
    assert _failed_with(second, "idle")
    assert kinds == ["idle"]


def test_no_wait_no_expiry(loop: FakeLoop) -> None:
    """A handler busy with its own work (not waiting on the stream) is not idle."""
    stream, _, kinds = _stream(loop, idle=10)
    stream.data_received(b"request")
    loop.advance(1000)
    assert kinds == []
    future = stream.wait_for_data()  # the idle clock starts with the wait
    loop.advance(9)
    assert not future.done()
    loop.advance(1 + WATCH_INTERVAL)
    assert _failed_with(future, "idle")


def test_a_drain_not_taken_for_idle_timeout_fails_as_drain(loop: FakeLoop) -> None:
    stream, _, kinds = _stream(loop, idle=30)
    stream.pause_writing()
    loop.advance(100)  # paused, but nobody waits yet: nothing expires
    waiter = _waiting_drain(stream)
    loop.advance(29)
    assert not waiter.done()
    loop.advance(1 + WATCH_INTERVAL)
    assert _failed_with(waiter, "drain")
    assert kinds == ["drain"]


def test_resume_writing_restarts_the_drain_idle_clock(loop: FakeLoop) -> None:
    stream, _, kinds = _stream(loop, idle=30)
    stream.pause_writing()
    first = _waiting_drain(stream)
    loop.advance(20)
    stream.resume_writing()
    stream.pause_writing()  # the client took some, then lagged again
    second = _waiting_drain(stream)
    loop.advance(20)  # 40 s since the first drain began, 20 s since it progressed
    assert first.done()
    assert not first.cancelled()
    assert first.exception() is None
    assert not second.done()
    loop.advance(10 + WATCH_INTERVAL)
    assert _failed_with(second, "drain")
    assert kinds == ["drain"]


def test_a_read_past_its_deadline_fails_as_read(loop: FakeLoop) -> None:
    """A deadline (a request begun, read_timeout) with no idle timeout: the read fails at
    the deadline, within an eighth of the time that was left."""
    stream, _, kinds = _stream(loop, idle=None)
    stream.deadline = loop.time() + 5
    future = stream.read_some(10)
    loop.advance(4.9)
    assert not future.done()
    loop.advance(0.1 + 5 / 8)
    assert _failed_with(future, "read")
    assert kinds == ["read"]


def test_the_deadline_holds_however_often_data_comes(loop: FakeLoop) -> None:
    """Data trickling in restarts the idle clock, not the deadline."""
    stream, _, kinds = _stream(loop, idle=3)
    stream.deadline = loop.time() + 10
    for _ in range(9):
        future = stream.wait_for_data()
        loop.advance(1)
        stream.data_received(b"x")
        assert future.result() is None
    future = stream.wait_for_data()
    loop.advance(1 + WATCH_INTERVAL)
    assert _failed_with(future, "read")
    assert kinds == ["read"]


def test_a_deadline_does_not_bound_a_drain(loop: FakeLoop) -> None:
    """The deadline is for the request being read; a drain is bounded by idle only."""
    stream, _, kinds = _stream(loop, idle=30)
    stream.deadline = loop.time() + 1
    stream.pause_writing()
    waiter = _waiting_drain(stream)
    loop.advance(20)
    assert not waiter.done()
    assert kinds == []
    loop.advance(10 + WATCH_INTERVAL)
    assert _failed_with(waiter, "drain")


def test_a_failed_wait_fails_once(loop: FakeLoop) -> None:
    """After expiry the stream has no wait left: later sweeps call expired() no more."""
    stream, _, kinds = _stream(loop, idle=5)
    future = stream.read_some(1)
    loop.advance(100)
    assert _failed_with(future, "idle")
    assert kinds == ["idle"]


def test_bytes_after_an_expired_read_stay_buffered(loop: FakeLoop) -> None:
    stream, _, _ = _stream(loop, idle=5)
    future = stream.read_some(1)
    loop.advance(5 + WATCH_INTERVAL)
    assert _failed_with(future, "idle")
    stream.data_received(b"late")
    assert stream.buffer == b"late"


def test_a_cancelled_read_does_not_expire(loop: FakeLoop) -> None:
    stream, _, kinds = _stream(loop, idle=10)
    future = stream.read_some(10)
    future.cancel()  # what asyncio.wait_for(handler.read(10), 1) does when it times out
    loop.advance(100)
    assert kinds == []


# -- the watchdog ---------------------------------------------------------------------------


def test_one_timer_for_every_stream_on_the_loop(loop: FakeLoop) -> None:
    watchdog = Watchdog(loop)  # type: ignore[arg-type]
    streams = [_stream(loop, idle=60, watchdog=watchdog)[0] for _ in range(50)]
    assert len(loop.pending()) == 1
    assert watchdog.streams == set(streams)
    loop.advance(10 * WATCH_INTERVAL)
    assert len(loop.pending()) == 1  # each sweep schedules the next, only one


def test_the_sweeps_run_each_interval_and_fail_every_stream_due(loop: FakeLoop) -> None:
    watchdog = Watchdog(loop)  # type: ignore[arg-type]
    short = [_stream(loop, idle=60, watchdog=watchdog) for _ in range(3)]
    long = _stream(loop, idle=600, watchdog=watchdog)
    reads = [s.read_some(1) for s, _, _ in short]
    long_read = long[0].read_some(1)
    loop.advance(60 + WATCH_INTERVAL)
    assert all(_failed_with(r, "idle") for r in reads)
    assert not long_read.done()
    assert (timer := loop.pending()[0]).when() - loop.time() <= WATCH_INTERVAL
    assert timer.callback == watchdog._sweep


def test_the_timer_stops_when_no_stream_is_watched_and_starts_again(loop: FakeLoop) -> None:
    watchdog = Watchdog(loop)  # type: ignore[arg-type]
    first, _, _ = _stream(loop, idle=60, watchdog=watchdog)
    second, _, _ = _stream(loop, idle=60, watchdog=watchdog)
    first.connection_lost(None)
    loop.advance(WATCH_INTERVAL)
    assert len(loop.pending()) == 1  # second still watched
    second.connection_lost(None)
    assert watchdog.streams == set()
    loop.advance(WATCH_INTERVAL)  # the sweep finds nobody and schedules none
    assert loop.pending() == []
    loop.advance(3600)
    assert loop.pending() == []
    third, _, _ = _stream(loop, idle=60, watchdog=watchdog)
    assert len(loop.pending()) == 1
    future = third.read_some(1)
    loop.advance(60 + WATCH_INTERVAL)
    assert _failed_with(future, "idle")  # the restarted timer does its work


def test_forget_stops_the_watch(loop: FakeLoop) -> None:
    watchdog = Watchdog(loop)  # type: ignore[arg-type]
    stream, _, kinds = _stream(loop, idle=5, watchdog=watchdog)
    future = stream.read_some(1)
    watchdog.forget(stream)
    loop.advance(100)
    assert not future.done()
    assert kinds == []
    future.cancel()


def test_a_long_timeout_is_swept_every_watch_interval(loop: FakeLoop) -> None:
    watchdog = Watchdog(loop)  # type: ignore[arg-type]
    _stream(loop, idle=300, watchdog=watchdog)
    (timer,) = loop.pending()
    assert timer.when() - loop.time() == pytest.approx(WATCH_INTERVAL)


def test_a_short_timeout_shortens_the_interval_to_an_eighth(loop: FakeLoop) -> None:
    """A stream with idle=0.4 joins a loop swept every second: the pending timer is
    replaced by one 0.05 s away, and the stream expires within 0.45 s, not 1.4 s."""
    watchdog = Watchdog(loop)  # type: ignore[arg-type]
    _stream(loop, idle=300, watchdog=watchdog)
    (old,) = loop.pending()
    loop.advance(0.3)
    stream, _, kinds = _stream(loop, idle=0.4, watchdog=watchdog)
    assert old.cancelled
    (new,) = loop.pending()
    assert new.when() - loop.time() == pytest.approx(0.05)
    future = stream.read_some(1)
    loop.advance(0.39)
    assert not future.done()
    loop.advance(0.01 + 0.05 + 1e-6)
    assert _failed_with(future, "idle")
    assert kinds == ["idle"]


def test_a_longer_timeout_later_does_not_lengthen_the_interval(loop: FakeLoop) -> None:
    watchdog = Watchdog(loop)  # type: ignore[arg-type]
    _stream(loop, idle=0.8, watchdog=watchdog)  # an interval of 0.1 s
    (timer,) = loop.pending()
    _stream(loop, idle=300, watchdog=watchdog)
    assert loop.pending() == [timer]  # kept, not replaced
    loop.advance(0.1)
    (following,) = loop.pending()
    assert following.when() - loop.time() == pytest.approx(0.1)


def test_a_shorter_timeout_that_keeps_the_interval_keeps_the_timer(loop: FakeLoop) -> None:
    """300 s then 100 s: an eighth of either is over WATCH_INTERVAL, so the timer stays."""
    watchdog = Watchdog(loop)  # type: ignore[arg-type]
    _stream(loop, idle=300, watchdog=watchdog)
    (timer,) = loop.pending()
    _stream(loop, idle=100, watchdog=watchdog)
    assert loop.pending() == [timer]
    assert not timer.cancelled


def test_the_interval_has_a_floor(loop: FakeLoop) -> None:
    """A timeout of a millisecond does not make the watchdog sweep every 125 us."""
    watchdog = Watchdog(loop)  # type: ignore[arg-type]
    _stream(loop, idle=0.001, watchdog=watchdog)
    (timer,) = loop.pending()
    assert timer.when() - loop.time() == pytest.approx(stream_module._SHORTEST_INTERVAL)


def test_a_deadline_alone_puts_the_stream_under_the_watchdog(loop: FakeLoop) -> None:
    """No idle timeout: nothing is watched until a read with a deadline waits."""
    watchdog = Watchdog(loop)  # type: ignore[arg-type]
    stream, _, _ = _stream(loop, idle=None, watchdog=watchdog)
    assert watchdog.streams == set()
    assert loop.pending() == []
    stream.deadline = loop.time() + 2
    future = stream.read_some(1)
    assert watchdog.streams == {stream}
    (timer,) = loop.pending()
    assert timer.when() - loop.time() == pytest.approx(2 / 8)
    loop.advance(2 + 2 / 8)
    assert _failed_with(future, "read")


def test_a_stream_makes_its_own_watchdog_when_given_none(loop: FakeLoop) -> None:
    stream, _, _ = _stream(loop, idle=7)
    future = stream.read_some(1)
    loop.advance(7 + 7 / 8)
    assert _failed_with(future, "idle")


def test_a_read_near_its_deadline_does_not_make_the_watchdog_sweep_fast_for_ever(
    loop: FakeLoop,
) -> None:
    """read_timeout=30, idle_timeout=300: the shortest timeout on the loop is 30 s, so
    WATCH_INTERVAL (1 s) applies. A request's last bytes arrive 29.95 s into it, and then
    the connection closes; another connection stays, idle. The watchdog should then sweep
    about once a second, not a hundred times."""
    watchdog = Watchdog(loop)  # type: ignore[arg-type]
    stream, _, _ = _stream(loop, idle=300, watchdog=watchdog)
    _stream(loop, idle=300, watchdog=watchdog)  # a connection that stays
    stream.deadline = loop.time() + 30
    first = stream.wait_for_data()
    loop.advance(29.95)
    stream.data_received(b"part")
    assert first.result() is None
    second = stream.wait_for_data()  # 0.05 s left of the deadline
    stream.data_received(b"rest\n")
    assert second.result() is None
    stream.connection_lost(None)
    before = len(loop.timers)
    loop.advance(10)
    sweeps = len(loop.timers) - before
    assert sweeps <= 10 / WATCH_INTERVAL + 1, f"{sweeps} sweeps in 10 s"
