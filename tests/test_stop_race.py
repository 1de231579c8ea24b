"""A Ctrl-C racing a connection being accepted: the stop drains or cuts it, every time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

PROGRAM = Path(__file__).parent / "programs" / "stop_race.py"
SRC = Path(__file__).parent.parent / "src"


# Fork runs fewer rounds: this program's own client socket is inherited by the
# forked child, so the client's close never reaches the handler, and every round
# waits for the stop to cut the child (shutdown_timeout, 0.5 s); 100 rounds
# sweep the 50 delays twice. Fork and the pool under handle_request() were left
# out until the stop minded signals that woke none of its waits (the drain and
# the forked child's SIGINT, see _drain.py and core._child_signals): a round then
# ended only by a SIGINT the parent, in some rounds, never ran.
CASES = [
    ("threads", "serve_forever", 300),
    ("pool", "serve_forever", 300),
    ("sync", "serve_forever", 300),
    ("fork", "serve_forever", 100),
    ("threads", "handle_request", 300),
    ("pool", "handle_request", 300),
    ("sync", "handle_request", 300),
]


@pytest.mark.timeout(180)
@pytest.mark.parametrize(("model", "loop", "rounds"), CASES)
def test_sigint_while_accepting_never_loses_a_connection(
    model: str, loop: str, rounds: int
) -> None:
    """Up to 300 rounds, the SIGINT swept over the first millisecond after the client
    sent: before this was fixed, the threads model lost a connection (and
    hung the stop) within a few rounds, and the pool about 1 in 100; a loop of
    handle_request() crashed in server_close() (a thread never started)."""
    done = subprocess.run(
        [sys.executable, str(PROGRAM), model, str(rounds), loop],
        capture_output=True, text=True, timeout=170, env={"PYTHONPATH": str(SRC)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["rounds"] == rounds
    assert report["bad"] == []
