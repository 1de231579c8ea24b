"""Server statistics: counters cheap enough to leave on.

Each counter is a plain int. The ones any thread may change (errors, bytes,
limits) are guarded by one lock. The ones only the serving loop changes
(connections, requests, bytes of datagrams received) need none: one writer
cannot lose an update, and a datagram is a few microseconds, of which two
locks would be a twentieth. Byte counts of TCP connections come from the
kernel (``TCP_INFO``) when the connection closes, so reading and writing pay
nothing.

Connections still open: a snapshot adds what the kernel says they have moved
so far, read at most once every ``LIVE_BYTES_MAX_AGE`` seconds. Both that sum
(taken with the closed totals of the same moment) and the closed totals alone
are lower bounds of the bytes moved, so a snapshot shows the larger of the two:
a connection that closes after its bytes were read while open is never counted
twice, and nothing has to be kept per connection, so the path of a request
pays nothing for it either.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field, replace
from time import monotonic
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["LIVE_BYTES_MAX_AGE", "Stats", "StatsSnapshot"]

#: How old, at most, the bytes of open connections in a snapshot are. Reading
#: them costs two getsockopt() calls per connection, about 6 us in all (60 ms
#: for 10,000 connections, measured on loopback), so however often a status
#: line is read, that pass runs at most once a second.
LIVE_BYTES_MAX_AGE = 1.0


@dataclass(frozen=True)
class StatsSnapshot:
    """What ``server.stats`` returns: a consistent copy of the counters.

    - connections_open / connections_total: stream connections open now / ever
    - requests: requests handed to their handler (a stream connection is one);
      a connection whose TLS handshake or PROXY header failed, or that
      verify_request() refused, is none (a failed preface counts in limits)
    - calls: messages answered inside requests by handlers that carry several on
      one connection (an RPC call); 0 where a request is one message
    - errors: requests whose handler raised (handle_error was called)
    - limits: how often each named limit tripped, e.g. ``{"max_connections": 3}``
    - bytes_in / bytes_out: bytes received and sent on TCP connections (sent:
      as acknowledged by the client), those still open included as of at
      most ``LIVE_BYTES_MAX_AGE`` (a second) ago, and on datagrams (sent:
      replies from DatagramRequestHandler)
    """

    connections_open: int = 0
    connections_total: int = 0
    requests: int = 0
    errors: int = 0
    calls: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    limits: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        """One line for a log: ``open=3 total=120 requests=120 errors=0 ...``."""
        parts = [
            f"open={self.connections_open}",
            f"total={self.connections_total}",
            f"requests={self.requests}",
            f"errors={self.errors}",
            f"in={self.bytes_in}B",
            f"out={self.bytes_out}B",
        ]
        if self.calls:
            parts.append(f"calls={self.calls}")
        parts += [f"{name}={count}" for name, count in sorted(self.limits.items())]
        return " ".join(parts)


class Stats:
    """The live counters of one server. Increment with the methods; read with snapshot()."""

    __slots__ = (
        "_limits",
        "_live_lock",
        "_live_until",
        "_lock",
        "_not_requests",
        "_seen_in",
        "_seen_out",
        "_worker_requests",
        "bytes_in",
        "bytes_out",
        "calls",
        "connections_total",
        "errors",
        "requests",
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.connections_total = 0
        self.requests = 0
        self._worker_requests = 0
        self._not_requests = 0
        self.errors = 0
        self.calls = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self._limits: Counter[str] = Counter()
        # Bytes moved, closed and open connections together, as last read
        # (see _with_open); read again once monotonic() passes _live_until.
        self._live_lock = threading.Lock()
        self._live_until = 0.0
        self._seen_in = self._seen_out = 0

    # -- the serving loop's own: called from that thread only ------------------

    def connection(self) -> None:
        self.connections_total += 1

    def request(self) -> None:
        self.requests += 1

    def datagram(self, received: int) -> None:
        """A datagram of ``received`` bytes was taken."""
        self.bytes_in += received

    # -- any thread's -----------------------------------------------------------

    def not_a_request(self) -> None:
        """A connection counted as a request when the loop took it turned out not to
        be one: its preface (TLS handshake, PROXY header) failed, or verify_request(),
        which runs after the preface in the worker, refused it. (The loop's counter
        is left alone: only its own thread writes it.)"""
        with self._lock:
            self._not_requests += 1

    def request_in_worker(self) -> None:
        """A request a worker took itself, the next one its source held (see
        BaseServer.holds_request): not the loop's, so not its counter."""
        with self._lock:
            self._worker_requests += 1

    def error(self) -> None:
        with self._lock:
            self.errors += 1

    def call(self) -> None:
        """A message inside a request was answered (an RPC call on a connection)."""
        with self._lock:
            self.calls += 1

    def transferred(self, received: int, sent: int) -> None:
        """A TCP connection closed, having moved these bytes."""
        with self._lock:
            self.bytes_in += received
            self.bytes_out += sent

    def sent(self, sent: int) -> None:
        """A datagram of ``sent`` bytes was sent (bytes_in is the loop's: see datagram())."""
        with self._lock:
            self.bytes_out += sent

    def limit(self, name: str) -> None:
        with self._lock:
            self._limits[name] += 1

    def snapshot(
        self,
        connections_open: int,
        open_bytes: Callable[[], tuple[int, int]] | None = None,
    ) -> StatsSnapshot:
        """The counters now. ``open_bytes()`` returns the bytes (received, sent)
        the connections still open have moved so far; it is called at most once
        every LIVE_BYTES_MAX_AGE seconds."""
        with self._lock:
            # Those taken back first: each was counted in requests before, so the
            # difference is never below the truth.
            not_requests = self._not_requests
            snapshot = StatsSnapshot(
                connections_open=connections_open,
                connections_total=self.connections_total,
                requests=self.requests + self._worker_requests - not_requests,
                errors=self.errors,
                calls=self.calls,
                bytes_in=self.bytes_in,
                bytes_out=self.bytes_out,
                limits=dict(self._limits),
            )
        if open_bytes is None:
            return snapshot
        bytes_in, bytes_out = self._with_open(snapshot.bytes_in, snapshot.bytes_out, open_bytes)
        return replace(snapshot, bytes_in=bytes_in, bytes_out=bytes_out)

    def _with_open(
        self, closed_in: int, closed_out: int, open_bytes: Callable[[], tuple[int, int]]
    ) -> tuple[int, int]:
        """The bytes of closed connections (read just now) and of open ones (read
        at most LIVE_BYTES_MAX_AGE ago), never one connection's twice.

        The closed totals are read before the open connections are listed, and a
        connection leaves that list before its bytes join the totals: so closed
        plus open, at one moment, counts each connection once, and is at most
        what has been moved since. The closed totals alone are at most that too.
        The larger of the two lower bounds is the figure.
        """
        with self._live_lock:
            now = monotonic()
            if now >= self._live_until:
                live_in, live_out = open_bytes()
                # Kept if larger: a connection closing while it was read may be
                # missing from both parts, for this once.
                self._seen_in = max(self._seen_in, closed_in + live_in)
                self._seen_out = max(self._seen_out, closed_out + live_out)
                self._live_until = now + LIVE_BYTES_MAX_AGE
            return max(closed_in, self._seen_in), max(closed_out, self._seen_out)
