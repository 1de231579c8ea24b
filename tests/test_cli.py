"""``servekit serve``: real processes, real signals, bounded."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import servekit
from tests.conftest import WAIT, connect, recv_until, running

ROOT = Path(__file__).parent.parent


def _serving(*args: str, cwd: Path = ROOT, **kwargs: Any) -> Any:
    """Run ``servekit serve ARGS``; yield the process, its log and its first TCP port."""
    command = [sys.executable, "-m", "servekit", "serve", *args]
    return running(command, cwd=cwd, listening=r"listening on tcp://127\.0\.0\.1:(\d+)", **kwargs)


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "servekit", *args], cwd=ROOT,
        capture_output=True, text=True, timeout=WAIT * 3,
    )  # fmt: skip


def test_version() -> None:
    done = _run("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"servekit {servekit.__version__}"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["serve", "nosuchmodule:X"], "cannot import 'nosuchmodule'"),
        (["serve", "examples.echo:Nope"], "has no attribute 'Nope'"),
        (["serve", "examples.echo"], "is not MODULE:ATTR"),
        (["serve", "examples.echo:logger"], "neither a request handler class nor a function"),
        (["serve", "examples.echo:LineEcho", "--listen", "bogus"], "bad listen address"),
        (["serve", "examples.echo:LineEcho", "--concurrency", "nope"], "invalid choice"),
        (["serve", "examples.chat:Chat", "--loop", "x"], "invalid choice"),
        (["serve", "examples.echo:LineEcho", "--read-timeout", "-1"], "'-1' is not a number"),
        (["serve", "examples.echo:LineEcho", "--workers", "abc"], "'abc' is not a whole number"),
        (["serve", "examples.echo:LineEcho", "--workers", "0"], "'0' is not a whole number >= 1"),
        (["serve", "examples.echo:LineEcho", "--threads", "0"], "'0' is not a whole number >= 1"),
        (["serve", "examples.echo:LineEcho", "--shutdown-timeout", "abc"],
         "--shutdown-timeout: 'abc' is not a number of seconds"),
        (["serve", "examples.echo:LineEcho", "--idle-timeout", "nan"], "'nan' is not a number"),
        (["serve", "examples.echo:LineEcho", "--max-requests", "5"],
         "--max-requests does nothing without --workers"),
        (["serve", "examples.echo:LineEcho", "--worker-timeout", "5"],
         "--worker-timeout does nothing without --workers"),
        (["serve", "examples.echo:LineEcho", "--loop", "asyncio"],
         "--loop does nothing without --concurrency async"),
        (["serve", "examples.echo:LineEcho", "--trusted-proxy", "127.0.0.1"],
         "--trusted-proxy does nothing without --proxy-protocol"),
        (["serve", "examples.echo:LineEcho", "--workers", "2", "--max-requests", "5",
          "--max-requests-jitter", "-1"], "'-1' is not a whole number >= 0"),
        (["serve", "examples.echo:LineEcho", "--workers", "2", "--max-requests-jitter", "3"],
         "--max-requests-jitter does nothing without --max-requests"),
        (["serve", "examples.echo:LineEcho", "--concurrency", "threads", "--threads", "8"],
         "--threads does nothing without --concurrency pool"),
        (["serve", "examples.echo:LineEcho", "--concurrency", "async"], "is a sync handler"),
        (["serve", "examples.chat:Chat"], "is an async handler"),
        (["serve", "examples.echo:LineEcho", "--listen", "udp://127.0.0.1:0"],
         "is a stream handler, but udp://127.0.0.1:0 is a datagram socket"),
        (["serve", "examples.chat:Chat", "--workers", "2"], "is an async handler"),
        (["serve", "examples.echo:LineEcho", "--status-interval", "0"], "'0' is not a number"),
        (["serve", "examples.echo:LineEcho", "--workers", "2", "--worker-timeout", "0"],
         "'0' is not a number of seconds > 0"),
        (["serve", "examples.echo:LineEcho", "--read-timeout", "0"], "'0' is not a number"),
        (["serve", "examples.echo:LineEcho", "--idle-timeout", "0"], "'0' is not a number"),
        (["serve", "examples.echo:LineEcho", "--keyfile", "k.pem"],
         "keyfile and cafile need certfile"),
        (["serve", "examples.echo:LineEcho", "--proxy-protocol"],
         "proxy_protocol needs trusted_proxies"),
        (["serve", "examples.echo:LineEcho", "--workers", "2", "--proxy-protocol",
          "--trusted-proxy", "10.0.0.1/8"], "trusted_proxies: bad trusted network '10.0.0.1/8'"),
    ],
)  # fmt: skip
def test_errors_are_one_line_and_exit_2(args: list[str], message: str) -> None:
    done = _run(*args)
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    errors = [line for line in lines if line.startswith("servekit: error: ")]
    assert len(errors) == 1, done.stderr
    assert message in errors[0]
    assert "usage:" not in done.stderr
    assert "Traceback" not in done.stderr
    if "--workers" not in args or "--proxy-protocol" in args:
        # Under --workers the supervisor binds, and imports nothing of the app:
        # it refuses only what the options themselves get wrong.
        assert "listening on" not in done.stderr  # refused before any socket was bound


def test_none_turns_a_limit_off_and_help_shows_defaults() -> None:
    done = _run("serve", "--help")
    assert done.returncode == 0
    assert "(default: 25)" in done.stdout  # --shutdown-timeout
    assert "(default: 1024)" in done.stdout  # --max-connections


def test_serve_two_addresses_status_and_graceful_stop(sock_dir: Path) -> None:
    path = sock_dir / "cli.sock"
    with _serving(
        "examples.echo:LineEcho", "--listen", "127.0.0.1:0",
        "--listen", f"unix:{path}", "--status-interval", "none",
    ) as (proc, log, port):  # fmt: skip
        log.wait_for(r"listening on unix:")
        tcp = connect(("127.0.0.1", port))
        tcp.sendall(b"over tcp\n")
        assert recv_until(tcp) == b"over tcp\n"
        with socket.socket(socket.AF_UNIX) as unix:
            unix.settimeout(WAIT)
            unix.connect(str(path))
            unix.sendall(b"over unix\n")
            assert recv_until(unix) == b"over unix\n"
        proc.send_signal(signal.SIGUSR1)
        log.wait_for(r"status .*open=1 total=1 requests=1", count=1)
        # A connection still open at the stop is served until it closes.
        proc.send_signal(signal.SIGTERM)
        log.wait_for("stopping gracefully")
        tcp.sendall(b"still here\n")
        assert recv_until(tcp) == b"still here\n"
        tcp.close()
        assert proc.wait(WAIT) == 0
        log.wait_for("stopped")
    assert not path.exists()


def test_a_signal_that_wakes_no_wait_still_stops_the_server() -> None:
    """The kernel may run a signal's C handler in any thread that does not block it
    (the serving threads do; an application's own need not); CPython then runs the
    Python handler in the main thread, but wakes none of its waits. The command
    line's main thread looks every SIGNAL_LOOK: before, it waited for ever."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "programs" / "signal_elsewhere.py"),
         "examples.echo:LineEcho"],
        cwd=ROOT, capture_output=True, text=True, timeout=3 * WAIT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "stopping gracefully" in done.stderr
    assert "stopped" in done.stderr


def test_second_signal_stops_at_once() -> None:
    with _serving(
        "examples.echo:LineEcho", "--listen", "127.0.0.1:0", "--shutdown-timeout", "none"
    ) as (proc, log, port):
        with connect(("127.0.0.1", port)) as client:
            client.sendall(b"x\n")
            assert recv_until(client) == b"x\n"
            proc.send_signal(signal.SIGINT)
            log.wait_for("stopping gracefully")  # waits for ever for the open connection ...
            proc.send_signal(signal.SIGINT)
            assert proc.wait(WAIT) == 1  # ... until the second signal
            assert client.recv(10) == b""
        log.wait_for("stopping at once")


def test_factory_target(tmp_path: Path) -> None:
    (tmp_path / "factory_app.py").write_text(
        "import servekit\n"
        "class Upper(servekit.StreamRequestHandler):\n"
        "    def handle(self):\n"
        "        self.wfile.write(self.rfile.readline().upper())\n"
        "def make():\n"
        "    return servekit.make_server('127.0.0.1:0', Upper)\n"
    )
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"}
    with _serving("factory_app:make", cwd=tmp_path, env=env) as (proc, _, port):
        with connect(("127.0.0.1", port)) as client:
            client.sendall(b"shout\n")
            assert recv_until(client) == b"SHOUT\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_loop_option_picks_the_async_engines_loop(loop: str) -> None:
    if loop == "uvloop":
        pytest.importorskip("uvloop", reason="uvloop is in the dev extra; not installed here")
    args = ["examples.chat:Chat", "--listen", "127.0.0.1:0", "--concurrency", "async"]
    with _serving(*args, "--loop", loop) as (_, log, port):
        log.wait_for(f"serving on the {loop} event loop")
        with connect(("127.0.0.1", port)) as client:
            assert b"welcome" in recv_until(client).lower()


def _documented_options() -> dict[str, str]:
    """docs/cli.md's options table: flag -> default, rows of several flags split."""
    rows = {}
    for line in (ROOT / "docs" / "cli.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`--"):
            continue
        flags = [flag.strip("` ").split()[0] for flag in cells[0].split(",")]
        defaults = [value.strip("` ") for value in cells[1].split(",")]
        if len(defaults) != len(flags):
            defaults = defaults[:1] * len(flags)
        rows.update(zip(flags, defaults, strict=True))
    return rows


def test_every_option_is_documented_with_its_default() -> None:
    """docs/cli.md's table against the command line itself and servekit.options."""
    from servekit import cli, options

    documented = _documented_options()
    parser = cli.build_parser()
    serve = next(
        action for action in parser._actions if isinstance(action, argparse._SubParsersAction)
    ).choices["serve"]
    flags = {flag for action in serve._actions for flag in action.option_strings if flag != "-h"}
    flags.discard("--help")
    assert sorted(flags - documented.keys()) == []  # every flag has a row
    assert sorted(documented.keys() - flags) == []  # and every row a flag
    for name in cli._cli_options():
        option = options.OPTIONS[name]
        assert documented[option.cli_flag] == cli._shown(option.default), option.cli_flag


def test_make_server_and_server_config_take_the_same_options_each_documented() -> None:
    """make_server's keywords against ServerConfig's fields, both ways, with the same
    defaults; every option named in the docs, and every option of the table either on
    the command line or left off it on purpose."""
    from servekit import cli, options

    fields = {field.name: field for field in dataclasses.fields(servekit.ServerConfig)}
    keywords = {
        name: parameter
        for name, parameter in inspect.signature(servekit.make_server).parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY and name != "config"
    }
    assert sorted(fields.keys() - keywords.keys()) == []  # every field is a keyword
    assert sorted(keywords.keys() - fields.keys()) == []  # and every keyword a field
    for name, parameter in keywords.items():
        # help(make_server) shows the config's default: the keyword's repr is it.
        assert repr(parameter.default) == repr(fields[name].default), name
    assert sorted(options.OPTIONS.keys() - fields.keys()) == []
    assert set(cli._cli_options()) | cli._NOT_ON_THE_COMMAND_LINE == set(options.OPTIONS)
    docs = "".join((ROOT / "docs" / page).read_text() for page in ("guide.md", "production.md"))
    undocumented = [name for name in fields if f"`{name}" not in docs and f"{name}=" not in docs]
    assert undocumented == [], "name each option in docs/guide.md or docs/production.md"
