"""Server statistics: counters cheap enough to leave on.

Each counter is a plain int. The ones any thread may change (errors, bytes,
limits) are guarded by one lock. The ones only the serving loop changes
(connections, requests, bytes of datagrams received) need none: one writer
cannot lose an update, and a datagram is a few microseconds, of which two
locks would be a twentieth. Byte counts of TCP connections come from the
kernel (``TCP_INFO``) when the connection closes, so reading and writing pay
nothing.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field

__all__ = ["Stats", "StatsSnapshot"]


@dataclass(frozen=True)
class StatsSnapshot:
    """What ``server.stats`` returns: a consistent copy of the counters.

    - connections_open / connections_total: stream connections open now / ever
    - requests: requests handed to their handler (a stream connection is one);
      a connection whose TLS handshake or PROXY header failed, or that
      verify_request() refused, is none (a failed preface counts in limits)
    - errors: requests whose handler raised (handle_error was called)
    - limits: how often each named limit tripped, e.g. ``{"max_connections": 3}``
    - bytes_in / bytes_out: bytes received and sent on closed TCP connections
      (sent: as acknowledged by the client when the connection closed) and on
      datagrams (sent: replies from DatagramRequestHandler)
    """

    connections_open: int = 0
    connections_total: int = 0
    requests: int = 0
    errors: int = 0
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
        parts += [f"{name}={count}" for name, count in sorted(self.limits.items())]
        return " ".join(parts)


class Stats:
    """The live counters of one server. Increment with the methods; read with snapshot()."""

    __slots__ = (
        "_limits",
        "_lock",
        "_not_requests",
        "bytes_in",
        "bytes_out",
        "connections_total",
        "errors",
        "requests",
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.connections_total = 0
        self.requests = 0
        self._not_requests = 0
        self.errors = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self._limits: Counter[str] = Counter()

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

    def error(self) -> None:
        with self._lock:
            self.errors += 1

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

    def snapshot(self, connections_open: int) -> StatsSnapshot:
        with self._lock:
            # Those taken back first: each was counted in requests before, so the
            # difference is never below the truth.
            not_requests = self._not_requests
            return StatsSnapshot(
                connections_open=connections_open,
                connections_total=self.connections_total,
                requests=self.requests - not_requests,
                errors=self.errors,
                bytes_in=self.bytes_in,
                bytes_out=self.bytes_out,
                limits=dict(self._limits),
            )
