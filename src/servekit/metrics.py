"""Metrics: servers' statistics and the supervisor's state as Prometheus families.

A server's figures are taken as a ``ServerReport``: its counters (from
``server.stats``), the limits tripped, and its gauges (connections open, the
pool's threads). One process renders the reports of its own servers; under
``--workers`` each worker sends its reports to the supervisor (as JSON, over
its channel: ``WorkerChannel.report``), and ``WorkerReports`` adds them up.

Counters never go down, whatever happens to the workers: when a worker exits,
its last totals are kept in those of the workers gone, and what is rendered
is never below what was rendered before (``HighWater``: a request taken back
when its TLS handshake fails would otherwise lower ``requests`` by one). A
killed worker's last second of work, not yet reported, is lost: the totals
are a lower bound, as ``server.stats``' bytes are.

The endpoint that serves them over HTTP is ``servekit._metrics_http``.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from servekit._promtext import Family, Kind, render
from servekit.addresses import format_address

if TYPE_CHECKING:
    from collections.abc import Iterable

    from servekit.core import BaseServer
    from servekit.prefork import WorkerCounts

__all__ = ["HighWater", "ServerReport", "WorkerReports", "families", "report_of"]

logger = logging.getLogger(__name__)

#: Counter families: name, the StatsSnapshot field, help. Bytes are named with
#: the unit before _total, as Prometheus's conventions ask (node_exporter's
#: node_network_receive_bytes_total).
COUNTERS: Final = (
    ("servekit_connections_total", "connections_total", "Stream connections accepted."),
    ("servekit_requests_total", "requests",
     "Requests handed to their handler (a stream connection is one request)."),
    ("servekit_calls_total", "calls",
     ("Messages answered inside requests by handlers that carry several on one "
     "connection (RPC calls); 0 elsewhere.")),
    ("servekit_errors_total", "errors", "Requests whose handler raised an exception."),
    ("servekit_received_bytes_total", "bytes_in",
     "Bytes received on TCP connections and in datagrams."),
    ("servekit_sent_bytes_total", "bytes_out",
     "Bytes sent on TCP connections (acknowledged by the client) and in datagram replies."),
)  # fmt: skip
LIMIT_TRIPS: Final = (
    "servekit_limit_trips_total",
    "Times each limit tripped (a connection refused, cut or paused).",
)
#: Gauge families: name, the ServerReport gauge, help.
GAUGES: Final = (
    ("servekit_connections_open", "connections_open", "Stream connections open now."),
    ("servekit_pool_threads", "pool_threads", "Threads of the pool (--concurrency pool)."),
    ("servekit_pool_threads_busy", "pool_busy", "Threads of the pool running a request."),
    ("servekit_pool_requests_queued", "pool_queued",
     "Requests accepted and waiting for a thread of the pool."),
)  # fmt: skip
#: The supervisor's families (--workers): name, kind, WorkerCounts field, help.
SUPERVISOR: Final[tuple[tuple[str, Kind, str, str], ...]] = (
    ("servekit_workers", "gauge", "alive", "Worker processes alive."),
    ("servekit_workers_target", "gauge", "target",
     "Worker processes wanted (--workers, changed by SIGTTIN and SIGTTOU)."),
    ("servekit_worker_starts_total", "counter", "started", "Worker processes started."),
    ("servekit_worker_restarts_total", "counter", "restarts",
     ("Workers that exited without being asked to (crashed, killed, timed out, "
     "--max-requests) and were replaced.")),
    ("servekit_worker_boot_failures_total", "counter", "boot_failures",
     "Workers that could not start the application."),
)  # fmt: skip


@dataclass(frozen=True)
class ServerReport:
    """One server's figures at one moment: counters by StatsSnapshot field,
    limits tripped by name, and gauges by name (those of GAUGES it has)."""

    listen: str
    counters: dict[str, int] = field(default_factory=dict)
    limits: dict[str, int] = field(default_factory=dict)
    gauges: dict[str, int] = field(default_factory=dict)

    def encode(self) -> bytes:
        fields = {"l": self.listen, "c": self.counters, "t": self.limits, "g": self.gauges}
        return json.dumps(fields, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, payload: bytes) -> ServerReport:
        """ValueError if ``payload`` is not a report."""
        data = json.loads(payload)
        if not isinstance(data, dict) or not isinstance(data.get("l"), str):
            raise ValueError("not a report")
        return cls(data["l"], _ints(data.get("c")), _ints(data.get("t")), _ints(data.get("g")))

    def plus(self, other: ServerReport, *, gauges: bool = True) -> ServerReport:
        """The figures of both added up (``gauges=False``: this one's gauges only)."""
        return ServerReport(
            self.listen,
            _sum(self.counters, other.counters),
            _sum(self.limits, other.limits),
            _sum(self.gauges, other.gauges) if gauges else dict(self.gauges),
        )


def _ints(value: Any) -> dict[str, int]:
    if not isinstance(value, dict):
        raise ValueError("not a report")
    if not all(isinstance(k, str) and isinstance(v, int) for k, v in value.items()):
        raise ValueError("not a report")
    return value


def _sum(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {key: a.get(key, 0) + b.get(key, 0) for key in a.keys() | b.keys()}


def listen_of(server: BaseServer) -> str:
    """The server's address as --listen takes it (``tcp://127.0.0.1:8000``)."""
    try:
        return format_address(
            server.address_family,  # type: ignore[attr-defined]
            server.socket_type,  # type: ignore[attr-defined]
            server.server_address,
        )
    except (AttributeError, TypeError, ValueError):
        return str(server.server_address)  # a source that is not a socket


def report_of(server: BaseServer) -> ServerReport:
    """``server``'s figures now."""
    stats = server.stats
    counters = {attr: getattr(stats, attr) for _, attr, _ in COUNTERS}
    gauges = {"connections_open": stats.connections_open}
    pool_load = getattr(server, "pool_load", None)
    if callable(pool_load):
        load = pool_load()
        gauges.update(pool_threads=load.threads, pool_busy=load.busy, pool_queued=load.queued)
    return ServerReport(listen_of(server), counters, dict(stats.limits), gauges)


def families(reports: Iterable[ServerReport], workers: WorkerCounts | None = None) -> list[Family]:
    """The families of these reports (one ``listen`` label each), and the supervisor's."""
    found = [Family(name, "counter", help) for name, _, help in COUNTERS]
    trips = Family(LIMIT_TRIPS[0], "counter", LIMIT_TRIPS[1])
    gauges = [Family(name, "gauge", help) for name, _, help in GAUGES]
    for report in reports:
        for family, (_, attr, _) in zip(found, COUNTERS, strict=True):
            family.add(report.counters.get(attr, 0), listen=report.listen)
        for limit, count in report.limits.items():
            trips.add(count, listen=report.listen, limit=limit)
        for family, (_, key, _) in zip(gauges, GAUGES, strict=True):
            if key in report.gauges:
                family.add(report.gauges[key], listen=report.listen)
    found += [trips, *(family for family in gauges if family.samples)]
    if workers is not None:
        for name, kind, attr, help in SUPERVISOR:
            family = Family(name, kind, help)
            family.add(getattr(workers, attr))
            found.append(family)
    return found


class HighWater:
    """Keeps counters from going down: each rendered at least as high as before."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._lock = threading.Lock()

    def render(self, found: list[Family]) -> str:
        with self._lock:
            for family in found:
                if family.kind != "counter":
                    continue
                for labels, value in family.samples.items():
                    key = (family.name, labels)
                    family.samples[labels] = self._seen[key] = max(value, self._seen.get(key, 0))
        return render(found)


class WorkerReports:
    """The supervisor's: the workers' last reports, and the totals of those gone.

    Called by the supervisor's loop (``received``, ``gone``: a ReportSink) and
    read by the metrics endpoint's thread (``render``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: dict[int, dict[str, ServerReport]] = {}  # worker number -> listen -> last
        self._gone: dict[str, ServerReport] = {}  # listen -> counters of the workers gone
        self._high = HighWater()

    def received(self, worker: int, payload: bytes) -> None:
        try:
            report = ServerReport.decode(payload)
        except ValueError:
            logger.debug("worker %d: a report that cannot be read: %r", worker, payload[:80])
            return
        with self._lock:
            self._live.setdefault(worker, {})[report.listen] = report

    def gone(self, worker: int) -> None:
        with self._lock:
            for report in self._live.pop(worker, {}).values():
                kept = self._gone.get(report.listen, ServerReport(report.listen))
                self._gone[report.listen] = kept.plus(report, gauges=False)

    def reports(self) -> list[ServerReport]:
        """One report per address: every worker's counters, the live ones' gauges."""
        with self._lock:
            totals = dict(self._gone)
            for reports in self._live.values():
                for listen, report in reports.items():
                    totals[listen] = totals.get(listen, ServerReport(listen)).plus(report)
        return [totals[listen] for listen in sorted(totals)]

    def render(self, workers: WorkerCounts) -> str:
        return self._high.render(families(self.reports(), workers))
