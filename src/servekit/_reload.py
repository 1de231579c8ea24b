"""``servekit serve --reload``: serve the code as it is on disk, for development.

This process serves nothing. It runs the same command without ``--reload`` as a
child and looks at the source files every ``POLL`` seconds: the ``.py`` files
under the working directory and ``--app-dir`` (not in hidden folders, such as
``.venv`` and ``.git``, nor ``__pycache__``), and the ``-c`` file. When one
changes, appears or goes, the code is served anew: under ``--workers`` the
supervisor is sent SIGHUP, which replaces the workers one by one on the same
sockets (nobody is refused); otherwise the child is stopped gracefully and
started again. SIGTERM and SIGINT are passed to the child, and this process
exits with its status.

Polling with the standard library, not a file-watching package: a development
tree is a few hundred files, read in milliseconds twice a second, and
inotify-based watchers differ by platform and miss edits made through some
editors' rename-over writes, which a comparison of mtimes and sizes does not.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from pathlib import Path

__all__ = ["POLL", "Reloader", "child_command", "snapshot"]

logger = logging.getLogger("servekit.reload")

#: Seconds between two looks at the files.
POLL = 0.5

Snapshot = dict[str, tuple[int, int]]  # path -> (mtime in ns, size)


def snapshot(roots: Iterable[Path], files: Iterable[Path] = ()) -> Snapshot:
    """Every watched file's mtime and size."""
    seen: Snapshot = {}
    for root in roots:
        for folder, dirs, names in os.walk(root):
            dirs[:] = [d for d in dirs if not d.startswith(".") and d != "__pycache__"]
            for name in names:
                if name.endswith(".py"):
                    _note(seen, os.path.join(folder, name))
    for path in files:
        _note(seen, str(path))
    return seen


def _note(seen: Snapshot, path: str) -> None:
    try:
        stat = os.stat(path)
    except OSError:
        return  # gone between the listing and now: the next look sees it gone
    seen[path] = (stat.st_mtime_ns, stat.st_size)


def _changed(before: Snapshot, after: Snapshot) -> list[str]:
    return sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))


class Reloader:
    """Runs ``command`` and serves it anew whenever the watched files change."""

    def __init__(
        self,
        command: Sequence[str],
        roots: Sequence[Path],
        files: Sequence[Path] = (),
        *,
        prefork: bool,
    ) -> None:
        self.command = list(command)
        self.roots = list(roots)
        self.files = list(files)
        self.prefork = prefork
        self._stop = threading.Event()
        self._signal = signal.SIGTERM
        self._child: subprocess.Popen[bytes] | None = None

    def run(self) -> int:
        """Serve until SIGTERM or SIGINT; the child's exit status."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        logger.info(
            "reloading on changes to the .py files under %s",
            ", ".join(str(root) for root in self.roots),
        )
        state = snapshot(self.roots, self.files)
        child = self._start()
        said_exit = False
        while not self._stop.wait(POLL):
            if child.poll() is not None and not said_exit:
                said_exit = True
                logger.warning(
                    "the server exited (status %d); waiting for a change", child.returncode
                )
            now = snapshot(self.roots, self.files)
            changed = _changed(state, now)
            state = now
            if not changed:
                continue
            logger.info("reloading: %s changed", ", ".join(_shown(p) for p in changed[:3]))
            child = self._renew(child)
            said_exit = False
        return self._finish(child)

    def _on_signal(self, signum: int, frame: object) -> None:
        self._signal = signal.Signals(signum)
        self._stop.set()

    def _start(self) -> subprocess.Popen[bytes]:
        # The child must not reload in turn, whatever a -c file or the environment says.
        env = {**os.environ, "SERVEKIT_RELOAD": "0"}
        self._child = subprocess.Popen(self.command, env=env)
        return self._child

    def _renew(self, child: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
        if child.poll() is None and self.prefork:
            child.send_signal(signal.SIGHUP)  # the supervisor replaces its workers
            return child
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
            child.wait()
        return self._start()

    def _finish(self, child: subprocess.Popen[bytes]) -> int:
        if child.poll() is None:
            child.send_signal(self._signal)
        return child.wait()


def _shown(path: str) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:
        return path


def child_command(argv: Sequence[str]) -> list[str]:
    """This command without --reload, to run as the child."""
    return [sys.executable, "-m", "servekit", *(arg for arg in argv if arg != "--reload")]
