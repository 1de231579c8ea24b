"""A throwaway PostgreSQL for sql_bench.py: the approach of ``tests/_postgres.py``.

``initdb`` and ``pg_ctl`` in a temporary folder, on a free port of 127.0.0.1, as an
unprivileged user (PostgreSQL refuses root: as root the server runs as ``postgres``
through ``runuser``). Unlike the tests' server it keeps ``fsync`` and
``full_page_writes`` on; ``synchronous_commit`` is the caller's (see sql_bench.py).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator


def find_binary(name: str) -> str | None:
    """The newest /usr/lib/postgresql/*/bin/``name`` (not Debian's wrapper), else PATH's."""

    def version(path: str) -> float:
        try:
            return float(Path(path).parts[-3])
        except ValueError:
            return 0.0

    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=version)
    return candidates[-1] if candidates else shutil.which(name)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _server_user() -> str | None:
    """``postgres`` when we are root (it must exist: Debian's server package makes it)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise SystemExit("running as root needs a postgres user to run PostgreSQL as") from None
    return "postgres"


class PgServer:
    """One cluster in a temporary folder; ``url()`` reaches a database as the
    ``postgres`` superuser (trust authentication, 127.0.0.1 only)."""

    def __init__(self, synchronous_commit: str) -> None:
        initdb, pg_ctl = find_binary("initdb"), find_binary("pg_ctl")
        if initdb is None or pg_ctl is None:
            raise SystemExit(
                "PostgreSQL's initdb and pg_ctl are missing (apt-get install postgresql)"
            )
        self.pg_ctl: str = pg_ctl
        self.synchronous_commit = synchronous_commit
        self.user = _server_user()
        self.folder = Path(tempfile.mkdtemp(prefix="servekit-sql-bench-pg-"))
        self.data, self.log = self.folder / "data", self.folder / "server.log"
        self.port = _free_port()
        self.running = False
        self._initdb: str = initdb

    def init(self) -> None:
        """Make the cluster (in a folder the server's user owns)."""
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(self.folder, entry.pw_uid, entry.pw_gid)
        self.folder.chmod(0o755)
        self._run(
            self._initdb, "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
            "--locale=C", "--no-sync",
        )  # fmt: skip

    def _run(self, *command: str) -> None:
        prefix = [] if self.user is None else ["runuser", "-u", self.user, "--"]
        result = subprocess.run(
            [*prefix, *command], capture_output=True, text=True, timeout=60, check=False
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
        options = (
            f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 "
            f"-c synchronous_commit={self.synchronous_commit}"
        )
        self._run(
            self.pg_ctl, "-D", str(self.data), "-l", str(self.log), "-o", options, "-w",
            "-t", "30", "start",
        )  # fmt: skip
        self.running = True

    def close(self) -> None:
        if self.running:
            with contextlib.suppress(Exception):
                self._run(self.pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop")
            self.running = False
        shutil.rmtree(self.folder, ignore_errors=True)


@contextlib.contextmanager
def pg_server(synchronous_commit: str) -> Iterator[PgServer]:
    """A started server, stopped and its folder removed on the way out."""
    server = PgServer(synchronous_commit)
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.close()
