"""The process around ``servekit serve``: its pid file, its user and group, its umask.

Each is the operator's, set once at start (docs/cli.md, "The process"):

- ``--pid FILE``: the pid of the process that answers signals (the supervisor
  under ``--workers``), written whole (a temporary file renamed over it, so a
  reader never sees half of it), removed at exit. A file left by a process that
  is gone is replaced, with a log line; one whose process still runs servekit
  is an error, so two services never share one file.
- ``--user``/``--group``: the sockets are bound first, as the user who started
  the command (root, for a port under 1024); then every process that serves
  requests takes the user's uid, the group's gid (the user's own group unless
  ``--group``), and the user's supplementary groups instead of root's. The
  names are looked up before anything is bound, so a typo is one error line.
- ``--umask``: octal, as a shell's ``umask`` takes it.
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import pwd
import tempfile
from dataclasses import dataclass

__all__ = ["Identity", "PidFile", "ProcessError", "parse_umask", "resolve_identity"]

logger = logging.getLogger("servekit.cli")


class ProcessError(Exception):
    """A pid file, a user or a group that cannot be used: one line."""


# -- the pid file ---------------------------------------------------------------------


class PidFile:
    """``path`` holds this process's pid while it serves."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self._pid: int | None = None

    def write(self) -> None:
        """Write our pid, unless a live servekit holds the file (ProcessError)."""
        self._refuse_if_running()
        pid = os.getpid()
        folder = os.path.dirname(self.path)
        try:
            fd, temporary = tempfile.mkstemp(prefix=".servekit-pid-", dir=folder)
        except OSError as exc:
            raise ProcessError(f"--pid {self.path}: {exc.strerror}") from None
        try:
            with os.fdopen(fd, "w") as file:
                file.write(f"{pid}\n")
            os.chmod(temporary, 0o644)
            os.replace(temporary, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        self._pid = pid

    def remove(self) -> None:
        """Remove the file if it is still ours (not rewritten by a later process)."""
        if self._pid is None or self._read() != self._pid:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        self._pid = None

    def _refuse_if_running(self) -> None:
        pid = self._read()
        if pid is None or pid == os.getpid():
            return
        if _runs_servekit(pid):
            raise ProcessError(
                f"--pid {self.path}: servekit is already running as pid {pid} "
                "(stop it, or give another --pid)"
            )
        logger.warning("--pid %s: replacing a stale pid file (pid %d is gone)", self.path, pid)

    def _read(self) -> int | None:
        try:
            with open(self.path) as file:
                text = file.read(64).strip()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ProcessError(f"--pid {self.path}: {exc.strerror}") from None
        return int(text) if text.isdigit() else None


def _runs_servekit(pid: int) -> bool:
    """Whether ``pid`` is a live process running servekit (not a pid reused since)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's: look at what it runs
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            return b"servekit" in file.read()
    except OSError:
        return True  # alive, and no way to tell: do not take its file


# -- user, group, umask ---------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """Whom the serving processes become: looked up at start, taken after binding."""

    uid: int | None
    gid: int
    user: str | None

    def take(self) -> None:
        """Become this user and group, for good (the process cannot go back)."""
        if self.user is not None:
            os.initgroups(self.user, self.gid)  # the user's own groups, not root's
        else:
            os.setgroups([self.gid])
        os.setgid(self.gid)
        if self.uid is not None:
            os.setuid(self.uid)
        if self.uid not in (None, 0):
            with contextlib.suppress(PermissionError):
                os.setuid(0)
                raise ProcessError("dropping privileges failed: the process could become root")
        logger.info("serving as uid %d, gid %d", os.getuid(), os.getgid())


def resolve_identity(user: str | None, group: str | None) -> Identity | None:
    """``--user``/``--group`` as ids (names or numbers), or None if neither is given."""
    if user is None and group is None:
        return None
    if os.geteuid() != 0:
        raise ProcessError(
            "--user and --group take effect only when servekit starts as root (it binds, "
            "then drops to them)"
        )
    entry = None
    if user is not None:
        try:
            entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
        except KeyError:
            raise ProcessError(f"--user {user}: no such user") from None
    if group is not None:
        try:
            gid = grp.getgrgid(int(group)).gr_gid if group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError:
            raise ProcessError(f"--group {group}: no such group") from None
    else:
        gid = entry.pw_gid if entry is not None else os.getgid()
    if entry is None:
        return Identity(uid=None, gid=gid, user=None)
    return Identity(uid=entry.pw_uid, gid=gid, user=entry.pw_name)


def parse_umask(text: str) -> int:
    """An octal umask (``027``, ``0o027``); ValueError otherwise."""
    digits = text.strip().lower().removeprefix("0o")
    if not digits or any(c not in "01234567" for c in digits) or int(digits, 8) > 0o777:
        raise ValueError(f"{text!r} is not an octal umask such as 027")
    return int(digits, 8)
