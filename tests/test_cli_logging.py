"""``servekit serve``'s logging through the console script: --log-file, --log-config
(JSON and TOML), the connection log (--access-log, --access-log-format) with each
outcome, on the async engine and under --workers, SIGUSR2 reopening the files after
they were moved, and bad values refused in one line from each source."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import WAIT, connect, recv_until, running

SERVEKIT = str(Path(sys.executable).parent / "servekit")

APP = """
import servekit
from servekit.aio import AsyncStreamRequestHandler

class Echo(servekit.StreamRequestHandler):
    def handle(self):
        line = self.rfile.readline()
        if line.startswith(b"boom"):
            raise RuntimeError("boom")
        self.wfile.write(line)

class Reply(servekit.DatagramRequestHandler):
    def handle(self):
        self.wfile.write(self.rfile.read().upper())

class AsyncEcho(AsyncStreamRequestHandler):
    async def handle(self):
        line = await self.readline()
        if line.startswith(b"boom"):
            raise RuntimeError("boom")
        self.write(line)
        await self.drain()

def refusing():
    server = servekit.make_server("127.0.0.1:0", Echo)
    server.verify_request = lambda request, address: False
    return server
"""

FORMAT = "{client} {real_client} {transport} in={bytes_in} out={bytes_out} {outcome} {limit} {pid}"


@pytest.fixture
def app(tmp_path: Path) -> Path:
    (tmp_path / "app.py").write_text(APP)
    return tmp_path


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SERVEKIT_")}
    return {**env, **extra}


@contextlib.contextmanager
def _serving(cwd: Path, *args: str, **popen: Any) -> Iterator[tuple[Any, Any, int]]:
    command = [SERVEKIT, "serve", *args, "--status-interval", "none"]
    if not any(a.startswith("app:refusing") for a in args):
        command += ["--listen", popen.pop("listen", "127.0.0.1:0")]
    with running(command, cwd=cwd, env=_env(), start_new_session=True, **popen) as served:
        yield served


def _lines(path: Path, count: int, pattern: str = "") -> list[str]:
    """The file's lines once ``count`` of them match ``pattern``: a bounded wait
    for another process's writes (nothing signals them here but the file)."""
    deadline = time.monotonic() + WAIT
    while True:
        text = path.read_text() if path.exists() else ""
        lines = [line for line in text.splitlines() if re.search(pattern, line)]
        if len(lines) >= count or time.monotonic() > deadline:
            assert len(lines) >= count, text
            return lines
        time.sleep(0.02)


def _ask(port: int, data: bytes) -> bytes:
    with connect(("127.0.0.1", port)) as client:
        client.sendall(data)
        return recv_until(client)


def _stop(proc: Any) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(WAIT) == 0


@pytest.mark.parametrize(
    "engine", [["app:Echo"], ["app:AsyncEcho", "--concurrency", "async"]], ids=["sync", "async"]
)
def test_access_log_served_error_and_limit(app: Path, engine: list[str]) -> None:
    log = app / "access.log"
    with _serving(
        app,
        *engine,
        "--access-log",
        str(log),
        "--access-log-format",
        FORMAT,
        "--idle-timeout",
        "0.3",
    ) as (proc, _, port):
        assert _ask(port, b"hello\n") == b"hello\n"
        _lines(log, 1)
        assert _ask(port, b"boom\n") == b""
        _lines(log, 2)
        with connect(("127.0.0.1", port)) as idle:
            assert recv_until(idle) == b""  # closed by idle_timeout
        lines = _lines(log, 3)
        _stop(proc)
    assert re.fullmatch(rf"127\.0\.0\.1:\d+ - stream in=6 out=6 served - {proc.pid}", lines[0])
    assert re.fullmatch(r"127\.0\.0\.1:\d+ - stream in=5 out=0 error - \d+", lines[1])
    assert re.fullmatch(r"127\.0\.0\.1:\d+ - stream in=0 out=0 limit idle_timeout \d+", lines[2])


def test_default_format_to_stderr_and_a_refused_connection(app: Path) -> None:
    with _serving(app, "app:refusing", "--access-log", "-") as (proc, log, port):
        assert _ask(port, b"hello\n") == b""
        (line,) = log.wait_for(r" 127\.0\.0\.1:\d+ - stream [\d.]+ms in=\d+ out=0 refused -$")
        _stop(proc)
    # The default format starts with the time; and it is not servekit's log line.
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}", line.string)
    assert "INFO" not in line.string


def test_datagram(app: Path) -> None:
    log = app / "access.log"
    with _serving(
        app,
        "app:Reply",
        "--access-log",
        str(log),
        "--access-log-format",
        FORMAT,
        listen="udp://127.0.0.1:0",
    ) as (proc, _, port):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(WAIT)
            client.sendto(b"ping", ("127.0.0.1", port))
            assert client.recv(100) == b"PING"
        (line,) = _lines(log, 1)
        _stop(proc)
    assert re.fullmatch(r"127\.0\.0\.1:\d+ - datagram in=4 out=4 served - \d+", line)


def test_proxy_protocol_real_client_and_a_failed_preface(app: Path) -> None:
    log = app / "access.log"
    with _serving(
        app,
        "app:Echo",
        "--access-log",
        str(log),
        "--access-log-format",
        FORMAT,
        "--proxy-protocol",
        "--trusted-proxy",
        "127.0.0.1",
    ) as (proc, _, port):
        header = b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 8000\r\n"
        assert _ask(port, header + b"hi\n") == b"hi\n"
        _lines(log, 1)
        assert _ask(port, b"GARBAGE NOT A HEADER\r\n") == b""
        lines = _lines(log, 2)
        _stop(proc)
    assert re.fullmatch(
        rf"127\.0\.0\.1:\d+ 203\.0\.113\.7:5555 stream in={len(header) + 3} out=3 served - \d+",
        lines[0],
    )
    assert re.fullmatch(
        r"127\.0\.0\.1:\d+ - stream in=\d+ out=0 preface proxy_protocol \d+", lines[1]
    )


def test_workers_share_the_files_and_sigusr2_reopens_them(app: Path) -> None:
    """--workers 2 with --log-file and --access-log: one file each for all the
    processes; after mv and SIGUSR2 new lines go to new files, old ones stay."""
    log, access = app / "servekit.log", app / "access.log"
    command = [
        SERVEKIT,
        "serve",
        "app:Echo",
        "--workers",
        "2",
        "--log-file",
        str(log),
        "--access-log",
        str(access),
        "--access-log-format",
        FORMAT,
        "--listen",
        "127.0.0.1:0",
        "--status-interval",
        "none",
    ]
    proc = subprocess.Popen(
        command, cwd=app, env=_env(), start_new_session=True, stderr=subprocess.PIPE, text=True
    )
    try:
        # The supervisor's line; a worker's may be there already too.
        listening = _lines(log, 1, r"listening on tcp://127\.0\.0\.1:\d+")[0]
        port = int(re.search(r":(\d+) ", listening).group(1))  # type: ignore[union-attr]
        _lines(log, 2, r"worker \d+ started")
        for _ in range(4):
            assert _ask(port, b"hello\n") == b"hello\n"
        before = _lines(access, 4)
        os.rename(log, app / "servekit.log.1")
        os.rename(access, app / "access.log.1")
        os.kill(proc.pid, signal.SIGUSR2)
        # The supervisor and both workers say so, each in the new file.
        _lines(log, 3, r"SIGUSR2: reopened 2 log file\(s\)")
        for _ in range(2):
            assert _ask(port, b"again\n") == b"again\n"
        after = _lines(access, 2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(WAIT)
    assert proc.stderr is not None
    assert proc.stderr.read() == ""  # all of it went to the file
    assert all(" in=6 out=6 served " in line for line in before)
    assert all(" in=6 out=6 served " in line for line in after)
    assert (app / "access.log.1").read_text().splitlines() == before
    assert {line.split()[-1] for line in before} <= {str(pid) for pid in _workers(app)}
    old = (app / "servekit.log.1").read_text()
    assert "listening on" in old
    assert "SIGUSR2" not in old
    assert "listening on" not in log.read_text()


def _workers(app: Path) -> set[int]:
    text = (app / "servekit.log.1").read_text()
    return {int(pid) for pid in re.findall(r"worker \d+ started \(pid (\d+)\)", text)}


@pytest.mark.parametrize("kind", ["json", "toml"])
def test_log_config(app: Path, kind: str) -> None:
    """A logging.config dictionary routes servekit's lines and the connection log
    (named in it, so it is on) to files of its own, formatted its own way."""
    main, access = app / "main.log", app / "conn.log"
    config = {
        "version": 1,
        "formatters": {"short": {"format": "%(levelname)s|%(name)s|%(message)s"}},
        "handlers": {
            "main": {"class": "logging.FileHandler", "filename": str(main), "formatter": "short"},
            "conn": {"class": "logging.FileHandler", "filename": str(access), "formatter": "short"},
        },
        "root": {"level": "INFO", "handlers": ["main"]},
        "loggers": {"servekit.access": {"handlers": ["conn"], "propagate": False}},
    }
    path = app / f"logging.{kind}"
    if kind == "json":
        path.write_text(json.dumps(config))
    else:
        path.write_text(_toml(config))
    command = [
        SERVEKIT,
        "serve",
        "app:Echo",
        "--log-config",
        str(path),
        "--access-log-format",
        FORMAT,
        "--listen",
        "127.0.0.1:0",
        "--status-interval",
        "none",
    ]
    proc = subprocess.Popen(command, cwd=app, env=_env(), stderr=subprocess.PIPE, text=True)
    try:
        (listening,) = _lines(main, 1, r"listening on tcp://127\.0\.0\.1:\d+")
        port = int(re.search(r":(\d+) ", listening).group(1))  # type: ignore[union-attr]
        assert _ask(port, b"hello\n") == b"hello\n"
        (line,) = _lines(access, 1)
        _stop(proc)
    finally:
        proc.kill()
        proc.wait(WAIT)
    assert listening.startswith("INFO|servekit.factory|listening on")
    assert re.fullmatch(
        r"INFO\|servekit\.access\|127\.0\.0\.1:\d+ - stream in=6 out=6 served - "
        r"\d+",
        line,
    )
    assert "servekit.access" not in main.read_text()


def _toml(config: dict[str, Any]) -> str:
    """Just enough TOML for the config above (dotted tables of strings and lists)."""
    out: list[str] = []

    def table(prefix: str, value: dict[str, Any]) -> None:
        plain = {k: v for k, v in value.items() if not isinstance(v, dict)}
        if prefix:
            out.append(f"[{prefix}]")
        for key, item in plain.items():
            out.append(f"{key} = {json.dumps(item)}")
        for key, item in value.items():
            if isinstance(item, dict):
                table(f"{prefix}.{json.dumps(key)}" if prefix else json.dumps(key), item)

    table("", config)
    return "\n".join(out) + "\n"


BAD_FORMAT = "{client} {nope}"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("command line", r"argument --access-log-format: '\{client\} \{nope\}': no field \{nope\}"),
        ("environment", r"environment SERVEKIT_ACCESS_LOG_FORMAT='\{client\} \{nope\}': .*nope"),
        ("file", r"servekit\.toml: access_log_format = \"\{client\} \{nope\}\": .*no field"),
    ],
)
def test_a_bad_format_is_one_line(app: Path, source: str, expected: str) -> None:
    _one_line_error(app, source, "access_log_format", BAD_FORMAT, expected)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("command line", r"argument --log-config: bad\.json: not JSON"),
        ("environment", r"environment SERVEKIT_LOG_CONFIG='bad\.json': bad\.json: not JSON"),
        ("file", r"servekit\.toml: log_config = \"bad\.json\": bad\.json: not JSON"),
    ],
)
def test_a_bad_log_config_is_one_line(app: Path, source: str, expected: str) -> None:
    (app / "bad.json").write_text("{version: 1")
    _one_line_error(app, source, "log_config", "bad.json", expected)


def test_a_log_config_dictconfig_refuses_is_one_line(app: Path) -> None:
    (app / "odd.json").write_text(
        json.dumps({"version": 1, "handlers": {"h": {"class": "no.such.Handler"}}})
    )
    _one_line_error(
        app,
        "environment",
        "log_config",
        "odd.json",
        r"SERVEKIT_LOG_CONFIG odd\.json: Unable to configure handler 'h'",
    )


def _one_line_error(app: Path, source: str, key: str, value: str, expected: str) -> None:
    command = [SERVEKIT, "serve", "app:Echo", "--listen", "127.0.0.1:0"]
    env = _env()
    if source == "command line":
        command += ["--" + key.replace("_", "-"), value]
    elif source == "environment":
        env["SERVEKIT_" + key.upper()] = value
    else:
        (app / "servekit.toml").write_text(f"{key} = {json.dumps(value)}\n")
        command += ["-c", "servekit.toml"]
    done = subprocess.run(
        command, cwd=app, env=env, capture_output=True, text=True, timeout=WAIT, check=False
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("servekit: error: ")
    assert re.search(expected, lines[0]), lines[0]
