"""docs/sql.md's examples, run as printed: the quick start's app and its two commands
through the console script in an empty folder, then the guide's Python snippets against
the same file, with the server still running."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

from tests.conftest import WAIT, ProcessLog

ROOT = Path(__file__).parent.parent
GUIDE = ROOT / "docs" / "sql.md"
SERVEKIT = str(Path(sys.executable).parent / "servekit")


def blocks(language: str) -> list[str]:
    """The guide's fenced blocks in ``language``, in order."""
    pattern = rf"^```{language}\n(.*?)^```$"
    return re.findall(pattern, GUIDE.read_text(), re.MULTILINE | re.DOTALL)


def commands(block: str) -> list[list[str]]:
    """A shell block's commands, comments dropped; ``servekit`` is the console script."""
    argvs = [shlex.split(line, comments=True) for line in block.splitlines()]
    for argv in argvs:
        assert argv[0] == "servekit", argv
        argv[0] = SERVEKIT
    return argvs


def run(argv: list[str], folder: Path) -> str:
    done = subprocess.run(
        argv, cwd=folder, capture_output=True, text=True, timeout=WAIT, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_guide_runs_as_printed(tmp_path: Path) -> None:
    """The quick start serves a row enqueued from the shell (the tables made by the
    server in an empty folder), and the Python snippets' rows land where they say:
    the default queue's served at once, the scheduled one and the other queues' kept."""
    app, enqueue, enqueue_many = blocks("python")
    (shell,) = blocks("sh")
    serve, enqueue_one = commands(shell)
    assert app.startswith("# app.py\n")
    (tmp_path / "app.py").write_text(app)
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    server = subprocess.Popen(
        serve, cwd=tmp_path, env=environment, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    log = ProcessLog(server)
    try:
        log.wait_for(r"serving sqlite:jobs\.db from QueueServer")
        assert run(enqueue_one, tmp_path).strip() == "1"  # the row's id
        log.wait_for(r"INFO app: row 1, attempt 1: \{'to': 'ada@example\.com'\}$")

        run([sys.executable, "-c", enqueue], tmp_path)
        log.wait_for(r"INFO app: row 2, attempt 1: \{'to': 'ada@example\.com'\}$")
        run([sys.executable, "-c", enqueue_many], tmp_path)
        os.killpg(server.pid, signal.SIGINT)  # Ctrl-C: row 2 is acknowledged before the exit
        assert server.wait(WAIT) == 0
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(WAIT)
    stats = json.loads(run([SERVEKIT, "queue", "sqlite:jobs.db", "stats", "--json"], tmp_path))
    pending = {name: counts["pending"] for name, counts in stats["queues"].items()}
    assert pending == {"default": 1, "images": 1, "emails": 2}  # default: in five minutes
    assert stats["queues"]["default"]["done"] == 2
    assert stats["total"]["dead"] == 0
    assert not any("Traceback" in line for line in log.lines), log.lines
