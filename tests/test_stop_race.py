"""A Ctrl-C racing a connection being accepted: the stop drains or cuts it, every time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

PROGRAM = Path(__file__).parent / "programs" / "stop_race.py"
SRC = Path(__file__).parent.parent / "src"


# Left out, and why: fork, where this program's own client socket is inherited by
# the forked child, so the client's close never reaches the handler and a round
# ends only by its SIGINT, which in some rounds the parent never runs (with or
# without servekit's signal guard; the stdlib's ForkingTCPServer hangs the same
# way); and the pool under handle_request(), where the same loss was seen with
# or without the guard. Both are harness problems (a client in the server's own
# process) left for a process-separated client. The forked child's own signals
# are covered by test_concurrency.test_a_forked_child_gets_its_signals_at_once.
CASES = [
    ("threads", "serve_forever"),
    ("pool", "serve_forever"),
    ("sync", "serve_forever"),
    ("threads", "handle_request"),
    ("sync", "handle_request"),
]


@pytest.mark.timeout(180)
@pytest.mark.parametrize(("model", "loop"), CASES)
def test_sigint_while_accepting_never_loses_a_connection(model: str, loop: str) -> None:
    """300 rounds, the SIGINT swept over the first millisecond after the client
    sent: before this was fixed, the threads model lost a connection (and
    hung the stop) within a few rounds, and the pool about 1 in 100; a loop of
    handle_request() crashed in server_close() (a thread never started)."""
    done = subprocess.run(
        [sys.executable, str(PROGRAM), model, "300", loop],
        capture_output=True, text=True, timeout=170, env={"PYTHONPATH": str(SRC)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["rounds"] == 300
    assert report["bad"] == []
