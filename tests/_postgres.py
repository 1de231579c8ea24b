"""A real PostgreSQL for the tests: ``initdb`` and ``pg_ctl`` in a temporary
folder, on a free port of 127.0.0.1 and a Unix socket in that folder, as an
unprivileged user (PostgreSQL refuses root: as root, the server runs as the
``postgres`` user through ``runuser``, or as a user made for it).

``shared_server()`` starts one for the whole test run, on first use, and
stops it when the run ends (atexit); it skips the calling test, with the
reason, when the binaries are missing (CI installs Debian's ``postgresql``).
Databases are made per test (``new_database``), so tests do not see each
other's rows.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

#: Made when running as root and no ``postgres`` user exists.
_OWN_USER = "servekit-pg"
_server: PostgresServer | None = None
_failure: str | None = None
_databases = itertools.count(1)


def find_binary(name: str) -> str | None:
    """``name`` on PATH, else the newest /usr/lib/postgresql/*/bin/``name``."""
    found = shutil.which(name)
    if found:
        return found

    def version(path: str) -> float:
        try:
            return float(Path(path).parts[-3])
        except ValueError:
            return 0.0

    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=version)
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _server_user() -> str | None:
    """The user to run the server as: None if we are not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", _OWN_USER):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", _OWN_USER],
        check=True,
        capture_output=True,
    )
    return _OWN_USER


class PostgresServer:
    """One PostgreSQL cluster in a temporary folder; ``url`` reaches its
    ``postgres`` database as the ``postgres`` superuser (trust auth)."""

    def __init__(self, initdb: str, pg_ctl: str) -> None:
        self.pg_ctl = pg_ctl
        self.user = _server_user()
        self.folder = Path(tempfile.mkdtemp(prefix="servekit-pg-"))
        self.data = self.folder / "data"
        self.log = self.folder / "server.log"
        self.port = _free_port()
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(self.folder, entry.pw_uid, entry.pw_gid)
        self.folder.chmod(0o755)
        self._run(
            initdb, "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
            "--locale=C", "--no-sync",
        )  # fmt: skip
        self.running = False

    def _run(self, *command: str, timeout: float = 60) -> None:
        prefix = [] if self.user is None else ["runuser", "-u", self.user, "--"]
        result = subprocess.run(
            [*prefix, *command], capture_output=True, text=True, timeout=timeout, check=False
        )
        if result.returncode:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(
                f"{' '.join(command)} failed ({result.returncode}):\n"
                f"{result.stdout}{result.stderr}{log[-3000:]}"
            )

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        """Start the server (on the same port each time) and wait until it answers."""
        options = (
            f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._run(
            self.pg_ctl, "-D", str(self.data), "-l", str(self.log), "-o", options, "-w",
            "-t", "30", "start",
        )  # fmt: skip
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: disconnects every client at once)."""
        if self.running:
            self._run(self.pg_ctl, "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop")
            self.running = False

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)

    def new_database(self) -> str:
        """A new, empty database; its URL."""
        import psycopg

        name = f"servekit_test_{os.getpid()}_{next(_databases)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)


def shared_server() -> PostgresServer:
    """The test run's PostgreSQL, started on first use; skips if there is none."""
    global _server, _failure
    if _server is not None:
        if not _server.running:
            _server.start()  # a test that stopped it failed before starting it again
        return _server
    if _failure is not None:
        pytest.skip(_failure)
    pytest.importorskip("psycopg", reason="psycopg is not installed (the dev extra has it)")
    initdb, pg_ctl = find_binary("initdb"), find_binary("pg_ctl")
    if initdb is None or pg_ctl is None:
        _failure = (
            "PostgreSQL's initdb and pg_ctl are not installed "
            "(Debian: apt-get install postgresql; .ci/run does it)"
        )
        pytest.skip(_failure)
    server = PostgresServer(initdb, pg_ctl)
    atexit.register(server.close)
    server.start()
    _server = server
    return server
