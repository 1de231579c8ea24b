"""A Ctrl-C racing a connection being accepted: the stop drains or cuts it, every time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

PROGRAM = Path(__file__).parent / "programs" / "stop_race.py"
SRC = Path(__file__).parent.parent / "src"


# The pool under handle_request() was left out until the stop minded signals that
# woke none of its waits (the drain and the forked child's SIGINT, see _drain.py and
# core._child_signals): a round then ended only by a SIGINT the parent, in some
# rounds, never ran. Fork under handle_request() passes too (300 rounds, twice), but
# takes three times as long as fork under serve_forever(), so it is left out. The
# program closes its client sockets in a forked child, so a fork round ends when its
# client does, not when the stop cuts the child.
CASES = [
    ("threads", "serve_forever", 300),
    ("pool", "serve_forever", 300),
    ("sync", "serve_forever", 300),
    ("fork", "serve_forever", 300),
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
