"""``servekit serve --metrics``: the text format, and real scrapes of real processes.

The text is parsed with prometheus_client's own parser (the dev extra) and
fetched with urllib, as a scraper would; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from servekit import _promtext
from servekit._promtext import Family, render
from servekit.metrics import HighWater, ServerReport, WorkerReports, families
from servekit.prefork import Supervisor, WorkerChannel, WorkerCounts, _Worker
from tests.conftest import WAIT, ProcessLog, connect, recv_until, running

SERVEKIT = str(Path(sys.executable).parent / "servekit")

APP = """
import servekit
class Echo(servekit.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            self.wfile.write(line)
"""

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


# -- the text format -------------------------------------------------------------


def test_labels_and_help_are_escaped_and_parse_back() -> None:
    family = Family("servekit_requests_total", "counter", "help with \\ and\nnewline")
    family.add(3, listen='unix:/tmp/a "b"\\c\nd')
    text = render([family])
    assert "# HELP servekit_requests_total help with \\\\ and\\nnewline\n" in text
    assert 'listen="unix:/tmp/a \\"b\\"\\\\c\\nd"} 3\n' in text
    (parsed,) = text_string_to_metric_families(text)
    assert parsed.documentation == "help with \\ and\nnewline"
    assert parsed.samples[0].labels == {"listen": 'unix:/tmp/a "b"\\c\nd'}
    assert parsed.samples[0].value == 3


def test_counters_end_in_total_and_gauges_do_not() -> None:
    with pytest.raises(ValueError, match="ends in _total"):
        Family("servekit_requests", "counter", "x")
    with pytest.raises(ValueError, match="_total is for counters"):
        Family("servekit_open_total", "gauge", "x")
    with pytest.raises(ValueError, match="not a metric name"):
        Family("servekit-requests_total", "counter", "x")
    with pytest.raises(ValueError, match="not a label name"):
        Family("servekit_open", "gauge", "x").add(1, __name__="y")


def test_values() -> None:
    assert [_promtext.format_value(v) for v in (0, 7, 2.0, 0.25, float("inf"))] == [
        "0", "7", "2", "0.25", "+Inf",
    ]  # fmt: skip
    assert _promtext.format_value(float("nan")) == "NaN"


def _report(listen: str, requests: int, open_: int, **limits: int) -> ServerReport:
    return ServerReport(listen, {"requests": requests}, limits, {"connections_open": open_})


def _samples(text: str) -> Samples:
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        assert family.documentation, family.name  # HELP
        assert family.type in ("counter", "gauge"), family.name  # TYPE
        for sample in family.samples:
            found[sample.name, frozenset(sample.labels.items())] = sample.value
    return found


def _value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def test_a_gone_workers_totals_stay_and_its_gauges_go() -> None:
    reports = WorkerReports()
    counts = WorkerCounts(alive=2, target=2, started=3, restarts=1, boot_failures=0)
    reports.received(1, _report("tcp://a:1", 5, 2, max_connections=1).encode())
    reports.received(2, _report("tcp://a:1", 7, 1).encode())
    reports.received(2, b"not json")  # ignored
    samples = _samples(reports.render(counts))
    assert _value(samples, "servekit_requests_total", listen="tcp://a:1") == 12
    assert _value(samples, "servekit_connections_open", listen="tcp://a:1") == 3
    reports.gone(1)
    reports.received(3, _report("tcp://a:1", 1, 0).encode())
    samples = _samples(reports.render(counts))
    assert _value(samples, "servekit_requests_total", listen="tcp://a:1") == 13
    assert _value(samples, "servekit_connections_open", listen="tcp://a:1") == 1
    assert (
        _value(samples, "servekit_limit_trips_total", listen="tcp://a:1", limit="max_connections")
        == 1
    )
    assert _value(samples, "servekit_worker_restarts_total") == 1
    assert _value(samples, "servekit_workers") == 2


def test_a_counter_rendered_never_goes_down() -> None:
    high = HighWater()
    assert 'servekit_requests_total{listen="x"} 5' in high.render(families([_report("x", 5, 0)]))
    assert 'servekit_requests_total{listen="x"} 5' in high.render(families([_report("x", 4, 0)]))
    assert 'servekit_connections_open{listen="x"} 0' in high.render(families([_report("x", 4, 0)]))


class _Sink:
    def __init__(self) -> None:
        self.got: list[tuple[int, bytes]] = []

    def received(self, worker: int, payload: bytes) -> None:
        self.got.append((worker, payload))

    def gone(self, worker: int) -> None:
        pass


def test_reports_share_the_channel_with_heartbeats_and_readiness() -> None:
    """A report cut by a read's end is kept for the next; the one-byte messages
    around reports are still seen, and reports alone are no heartbeat."""
    sink = _Sink()
    supervisor = Supervisor(lambda channel: 0, workers=1, reports=sink)
    read, write = os.pipe()
    try:
        channel = WorkerChannel(write, 0.0)
        worker = _Worker(pid=1, pipe=read, number=4, started=0.0, last_beat=0.0)
        payload = b'{"l":"x","c":{},"t":{},"g":{}}' * 10
        assert channel.report(payload)
        assert not channel.report(b"x" * 4096)  # would not arrive whole
        data = os.read(read, 100)
        assert supervisor._take_reports(worker, data) == b""
        channel.ready()
        rest = os.read(read, 4096)
        assert supervisor._take_reports(worker, rest) == b"R"
        assert sink.got == [(4, payload)]
    finally:
        os.close(read)
        os.close(write)


# -- real processes --------------------------------------------------------------


@contextlib.contextmanager
def _serving(tmp: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[Any]:
    (tmp / "app.py").write_text(APP)
    environ = {"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1", **(env or {})}
    command = [SERVEKIT, "serve", "app:Echo", "--listen", "127.0.0.1:0",
               "--status-interval", "none", *args]  # fmt: skip
    with running(command, cwd=tmp, env=environ, start_new_session=True) as (proc, log, port):
        metrics = int(log.wait_for(r"metrics at http://127\.0\.0\.1:(\d+)/metrics")[0].group(1))
        yield proc, log, port, metrics


def _scrape(port: int) -> tuple[str, Samples]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=WAIT) as answer:
        assert answer.status == 200
        assert answer.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        text = answer.read().decode()
    for line in text.splitlines():  # each sample's family has its HELP and TYPE lines
        if not line.startswith("#"):
            name = line.split("{")[0].split(" ")[0]
            assert f"# HELP {name} " in text, line
            assert f"# TYPE {name} " in text, line
    return text, _samples(text)


def _until(port: int, done: Callable[[Samples], bool]) -> Samples:
    """Scrape until ``done`` holds (a worker reports once a second), at most WAIT."""
    deadline = time.monotonic() + WAIT
    while True:
        samples = _scrape(port)[1]
        if done(samples) or time.monotonic() > deadline:
            return samples
        threading.Event().wait(0.05)  # sampling the scrapes, not waiting for an event


def _converse(port: int, lines: int, line: bytes = b"hello\n") -> None:
    with connect(("127.0.0.1", port)) as client:
        for _ in range(lines):
            client.sendall(line)
            assert recv_until(client) == line


@pytest.mark.timeout(60)
def test_one_process_counts_what_was_done(tmp_path: Path) -> None:
    with _serving(tmp_path, "--max-line-length", "64", "--metrics", "127.0.0.1:0") as (
        _, _, port, metrics,
    ):  # fmt: skip
        for _ in range(5):
            _converse(port, 3)
        with connect(("127.0.0.1", port)) as client:  # trips max_line_length
            client.sendall(b"x" * 100 + b"\n")
            assert client.recv(100) == b""
        listen = f"tcp://127.0.0.1:{port}"
        sent = 5 * 3 * 6
        samples = _until(
            port=metrics,
            done=lambda s: (
                _value(s, "servekit_connections_open", listen=listen) == 0
                and _value(s, "servekit_sent_bytes_total", listen=listen) == sent
                # The pool's thread is counted free a moment after its connection closed.
                and _value(s, "servekit_pool_threads_busy", listen=listen) == 0
            ),
        )
        assert _value(samples, "servekit_connections_total", listen=listen) == 6
        assert _value(samples, "servekit_requests_total", listen=listen) == 6
        assert _value(samples, "servekit_errors_total", listen=listen) == 0
        assert _value(samples, "servekit_sent_bytes_total", listen=listen) == sent
        assert _value(samples, "servekit_received_bytes_total", listen=listen) == sent + 101
        trips = _value(
            samples, "servekit_limit_trips_total", listen=listen, limit="max_line_length"
        )
        assert trips == 1
        assert _value(samples, "servekit_pool_threads", listen=listen) >= 1  # type: ignore[operator]
        assert _value(samples, "servekit_pool_threads_busy", listen=listen) == 0
        # HEAD, and nothing but /metrics
        head = urllib.request.Request(f"http://127.0.0.1:{metrics}/metrics", method="HEAD")
        with urllib.request.urlopen(head, timeout=WAIT) as answer:
            assert answer.status == 200
            assert answer.read() == b""
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(f"http://127.0.0.1:{metrics}/", timeout=WAIT)
        assert error.value.code == 404


def _worker_pids(log: ProcessLog, count: int) -> list[int]:
    return [int(m.group(1)) for m in log.wait_for(r"worker \d+ \(pid (\d+)\) is serving", count)]


@pytest.mark.timeout(60)
def test_workers_add_up_and_a_killed_workers_count_stays(tmp_path: Path) -> None:
    env = {"SERVEKIT_METRICS": "127.0.0.1:0"}  # the option from the environment, too
    with _serving(tmp_path, "--workers", "2", env=env) as (_, log, port, metrics):
        pids = _worker_pids(log, 2)
        listen = f"tcp://127.0.0.1:{port}"
        for _ in range(12):
            _converse(port, 1)

        def requests(s: Samples) -> float | None:
            return _value(s, "servekit_requests_total", listen=listen)

        samples = _until(metrics, lambda s: requests(s) == 12)
        assert requests(samples) == 12
        assert _value(samples, "servekit_workers") == 2
        assert _value(samples, "servekit_workers_target") == 2
        os.kill(pids[0], signal.SIGKILL)
        log.wait_for(rf"\(pid {pids[0]}\) killed by SIGKILL")
        _worker_pids(log, 3)
        samples = _scrape(metrics)[1]
        assert requests(samples) == 12  # the killed worker's count is kept
        assert _value(samples, "servekit_worker_restarts_total") == 1
        assert _value(samples, "servekit_worker_starts_total") == 3
        for _ in range(4):
            _converse(port, 1)
        samples = _until(metrics, lambda s: requests(s) == 16)
        assert requests(samples) == 16
        assert _value(samples, "servekit_connections_total", listen=listen) == 16
        assert _value(samples, "servekit_workers") == 2


def test_an_address_that_cannot_be_bound_is_one_error_line(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(APP)
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        for workers in ([], ["--workers", "2"]):
            done = subprocess.run(
                [SERVEKIT, "serve", "app:Echo", "--listen", "127.0.0.1:0",
                 "--metrics", f"127.0.0.1:{port}", *workers],
                cwd=tmp_path, capture_output=True, text=True, timeout=WAIT * 3,
            )  # fmt: skip
            assert done.returncode == 2
            errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
            assert errors == [
                (
                    f"servekit: error: --metrics 127.0.0.1:{port}: cannot serve metrics there: "
                    "Address already in use"
                )
            ], done.stderr
            assert "serving" not in done.stderr
