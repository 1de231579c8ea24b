"""``servekit serve``'s options from a TOML file (-c) and SERVEKIT_* variables, beside the
command line: precedence, --check-config, and one error line per bad value naming its
source. Through the console script, as operators run it."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import WAIT, connect, recv_until, running

ROOT = Path(__file__).parent.parent
SERVEKIT = str(Path(sys.executable).parent / "servekit")
APP = "examples.echo:LineEcho"


def _env(**variables: str) -> dict[str, str]:
    """The test's environment without any SERVEKIT_* of its own, plus ``variables``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SERVEKIT_")}
    return env | variables


def _servekit(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SERVEKIT, *args], cwd=ROOT, env=env or _env(),
        capture_output=True, text=True, timeout=WAIT * 3,
    )  # fmt: skip


def _effective(*args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    result = _servekit("serve", *args, "--check-config", "--json", env=env)
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = json.loads(result.stdout)
    return config


@pytest.mark.parametrize(("cli", "env", "file"), list(itertools.product((False, True), repeat=3)))
def test_command_line_over_environment_over_file_over_default(
    cli: bool, env: bool, file: bool, tmp_path: Path
) -> None:
    config = tmp_path / "servekit.toml"
    config.write_text(f'app = "{APP}"\n' + ("idle_timeout = 30\n" if file else ""))
    args = ["-c", str(config)] + (["--idle-timeout", "10"] if cli else [])
    variables = {"SERVEKIT_IDLE_TIMEOUT": "20"} if env else {}
    got = _effective(*args, env=_env(**variables))["idle_timeout"]
    expected = (
        (10, "command line") if cli
        else (20, "environment") if env
        else (30, "file") if file
        else (300, "default")
    )  # fmt: skip
    assert (got["value"], got["source"]) == expected
    assert _effective(*args, env=_env(**variables))["app"] == {"value": APP, "source": "file"}


def test_check_config_prints_every_option_with_its_source(tmp_path: Path) -> None:
    config = tmp_path / "servekit.toml"
    config.write_text(
        f'app = "{APP}"\nlisten = ["127.0.0.1:7001", "unix:/tmp/x.sock"]\nworkers = 2\n'
        'rpcbind = false\nmax_connections = "none"\n'
    )
    result = _servekit(
        "serve", "-c", str(config), "--check-config", "--read-timeout", "5",
        env=_env(SERVEKIT_PROXY_PROTOCOL="yes", SERVEKIT_TRUSTED_PROXIES="10.0.0.0/8, unix"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = {line.split(" = ")[0]: line.split(" = ", 1)[1] for line in result.stdout.splitlines()}
    assert lines["app"].split() == [f'"{APP}"', "#", "file"]
    value, source = lines["listen"].rsplit("#", 1)
    assert (value.strip(), source.strip()) == ('["127.0.0.1:7001", "unix:/tmp/x.sock"]', "file")
    assert lines["workers"].split() == ["2", "#", "file"]
    assert lines["rpcbind"].split() == ["false", "#", "file"]
    assert lines["max_connections"].split() == ["none", "#", "file"]
    assert lines["certfile"].split() == ["none", "#", "default"]
    assert lines["read_timeout"].split() == ["5", "#", "command", "line"]
    assert lines["proxy_protocol"].split() == ["true", "#", "environment"]
    assert lines["trusted_proxies"].split("#")[1].strip() == "environment"
    assert lines["shutdown_timeout"].split() == ["25", "#", "default"]
    as_json = _effective("-c", str(config))
    assert as_json["listen"]["value"] == ["127.0.0.1:7001", "unix:/tmp/x.sock"]
    assert as_json["max_connections"] == {"value": None, "source": "file"}
    assert set(as_json) == set(lines)  # the same options, either way


@pytest.mark.parametrize(
    ("args", "variables", "file_text", "message"),
    [
        (["--idle-timeout", "soon"], {}, "",
         "argument --idle-timeout: 'soon' is not a number of seconds > 0 or 'none' (no limit)"),
        ([], {"SERVEKIT_IDLE_TIMEOUT": "soon"}, "",
         ("environment SERVEKIT_IDLE_TIMEOUT='soon': 'soon' is not a number of seconds > 0 or "
         "'none' (no limit)")),
        ([], {}, "idle_timeout = -1\n",
         "{file}: idle_timeout = -1: '-1' is not a number of seconds > 0 or 'none' (no limit)"),
        ([], {}, 'concurrency = "lots"\n',
         '{file}: concurrency = "lots": one of pool, threads, fork, sync, async'),
        ([], {"SERVEKIT_PROXY_PROTOCOL": "maybe"}, "",
         "environment SERVEKIT_PROXY_PROTOCOL='maybe': true or false (1, yes, on; 0, no, off)"),
        ([], {}, "proxy_protocol = 1\n", "{file}: proxy_protocol = 1: true or false, not int"),
        ([], {}, "max_workers = true\n", "{file}: max_workers = true: not a number"),
        ([], {}, "listen = [1, 2]\n", "{file}: listen = [1, 2]: a string or a list of strings"),
        ([], {}, "idel_timeout = 3\n", ("{file}: idel_timeout: no such option (did you mean "
         "idle_timeout?)")),
        ([], {}, "[certfile]\npath = 'x'\n",
         "{file}: certfile: a table, where a value was expected"),
        ([], {}, "max_workers = 4\n", ("{file}: max_workers does nothing without --concurrency "
         "pool")),
        ([], {"SERVEKIT_MAX_WORKERS": "4"}, "",
         "SERVEKIT_MAX_WORKERS does nothing without --concurrency pool"),
    ],
)  # fmt: skip
def test_a_bad_value_is_one_line_naming_its_source(
    args: list[str], variables: dict[str, str], file_text: str, message: str, tmp_path: Path
) -> None:
    config = tmp_path / "servekit.toml"
    config.write_text(file_text)
    extra = ["--concurrency", "async"] if "does nothing" in message else []
    result = _servekit(
        "serve", "examples.echo:AsyncLineEcho" if extra else APP, "-c", str(config),
        *extra, *args, env=_env(**variables),
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr == f"servekit: error: {message.format(file=config)}\n"


def test_a_file_that_cannot_be_read_or_parsed(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    result = _servekit("serve", APP, "-c", str(missing))
    assert result.returncode == 2
    assert result.stderr == (
        f"servekit: error: cannot read the configuration file {missing}: "
        "No such file or directory\n"
    )
    broken = tmp_path / "broken.toml"
    broken.write_text("idle_timeout = \n")
    result = _servekit("serve", APP, "-c", str(broken))
    assert result.returncode == 2
    assert result.stderr.startswith(f"servekit: error: {broken}: not TOML: ")
    assert result.stderr.count("\n") == 1
    result = _servekit("serve", "--check-config")
    assert result.stderr == (
        "servekit: error: nothing to serve: give MODULE:ATTR, app in the configuration file "
        "(-c), or SERVEKIT_APP\n"
    )
    result = _servekit("serve", APP, "--json")
    assert result.stderr == "servekit: error: --json goes with --check-config\n"


def test_check_config_imports_the_application(tmp_path: Path) -> None:
    result = _servekit("serve", "examples.echo:NoSuchHandler", "--check-config")
    assert result.returncode == 2
    assert "NoSuchHandler" in result.stderr
    assert result.stderr.count("\n") == 1


def test_a_server_configured_by_file_and_environment_serves(tmp_path: Path) -> None:
    config = tmp_path / "servekit.toml"
    config.write_text(f'app = "{APP}"\nlisten = ["127.0.0.1:0"]\nmax_workers = 2\n')
    env = _env(SERVEKIT_STATUS_INTERVAL="none", SERVEKIT_LOG_LEVEL="INFO")
    with running([SERVEKIT, "serve", "-c", str(config)], cwd=ROOT, env=env) as (proc, log, port):
        client = connect(("127.0.0.1", port))
        client.sendall(b"configured\n")
        assert recv_until(client) == b"configured\n"
        client.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0
        log.wait_for("stopped")
