"""systemd socket activation: take over sockets the service manager opened.

With socket activation systemd binds the listening sockets itself, before the
service runs, and hands them over when it starts the service: the sockets
arrive as descriptors 3, 4, 5, ... (``SD_LISTEN_FDS_START`` onwards), and
three environment variables describe them. ``LISTEN_FDS`` says how many
there are; ``LISTEN_PID`` says which process they are for, because the
environment is inherited by children and a child must not take its
parent's sockets for its own; ``LISTEN_FDNAMES`` optionally names them,
colon-separated, in descriptor order (from ``FileDescriptorName=``), and
each is called ``"unknown"`` when it is absent. This is the protocol of
sd_listen_fds(3) and sd_listen_fds_with_names(3), read here with the
standard library alone.

Why bother: the socket exists before the server does, so a restart or an
upgrade loses no connection (they wait in the kernel's backlog), the server
can bind privileged ports without ever running as root, and services can
start in parallel or on demand. As sd_listen_fds() does, the descriptors are
marked close-on-exec and the three variables are removed once read, so no
process started later mistakes them for its own.

A minimal unit pair for a servekit server::

    # /etc/systemd/system/yourapp.socket
    [Socket]
    ListenStream=8000
    FileDescriptorName=web
    # Accept=no (the default): the service gets the listening socket itself.

    [Install]
    WantedBy=sockets.target

    # /etc/systemd/system/yourapp.service
    [Unit]
    Requires=yourapp.socket
    After=yourapp.socket

    [Service]
    ExecStart=/usr/bin/python3 -m yourapp

where ``yourapp/__main__.py`` makes its server from the ``systemd`` address::

    import servekit
    server = servekit.make_server("systemd", Handler)
    server.serve_forever()

To try it without a unit: ``systemd-socket-activate -l 8000 --fdname=web
python3 -m yourapp``.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Collection, MutableMapping

__all__ = ["SD_LISTEN_FDS_START", "InheritedSocket", "inherited_sockets", "listen_fds"]

logger = logging.getLogger(__name__)

#: The first descriptor systemd passes; the others follow it without gaps.
SD_LISTEN_FDS_START = 3

#: More descriptors than any real unit passes: a larger LISTEN_FDS is a corrupt environment.
_MAX_FDS = 4096

#: The name of a descriptor when LISTEN_FDNAMES is absent, as systemd reports it.
_UNKNOWN = "unknown"

_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")

_HINT = "run under a .socket unit, or use systemd-socket-activate for testing"

_ACCEPTED_FAMILIES = frozenset(
    family
    for family in (socket.AF_INET, socket.AF_INET6, getattr(socket, "AF_UNIX", None))
    if family is not None
)
_ACCEPTED_TYPES = frozenset((socket.SOCK_STREAM, socket.SOCK_DGRAM))

# ASCII digits only: str.isdigit() would also take "٣" or "³", which no C parser does.
_INTEGER = re.compile(r"-?[0-9]+")


@dataclass(frozen=True)
class InheritedSocket:
    """One descriptor passed by systemd, and its name from ``LISTEN_FDNAMES``."""

    fd: int
    name: str


@dataclass(frozen=True)
class _Reading:
    """What the environment says, before anything is done about it.

    ``ours`` is False when the variables are absent or meant for another
    process; ``why_none`` explains an empty ``sockets`` to a person.
    """

    ours: bool
    sockets: tuple[InheritedSocket, ...]
    why_none: str


def listen_fds(
    *,
    unset_environment: bool = True,
    environ: MutableMapping[str, str] | None = None,
) -> list[InheritedSocket]:
    """The descriptors systemd passed to this process, in order, with their names.

    Returns [] when ``LISTEN_PID`` or ``LISTEN_FDS`` is absent, or when
    ``LISTEN_PID`` is another process: those variables are that process's
    business, so they are left alone. Otherwise each descriptor is marked
    close-on-exec and, with ``unset_environment``, the three variables are
    removed from ``environ`` (default ``os.environ``).

    Raises ValueError for a malformed environment (not a decimal number, a
    negative or absurd count, a name count that does not match) or a
    descriptor that is not open; the environment is then left as it was,
    for whoever investigates.
    """
    env = os.environ if environ is None else environ
    reading = _read(env)
    if not reading.ours:
        logger.debug("no socket activation for this process: %s", reading.why_none)
        return []
    for inherited in reading.sockets:
        _set_cloexec(inherited.fd)
    if unset_environment:
        for name in _VARIABLES:
            env.pop(name, None)
    logger.debug(
        "inherited from systemd: %s",
        ", ".join(f"{s.name}={s.fd}" for s in reading.sockets) or "nothing",
    )
    return list(reading.sockets)


def inherited_sockets(
    names: Collection[str] | None = None,
    *,
    unset_environment: bool = True,
    environ: MutableMapping[str, str] | None = None,
) -> list[socket.socket]:
    """The sockets systemd passed, as socket objects, optionally only those named ``names``.

    Family and type are read from each descriptor; only IPv4, IPv6 and Unix
    stream or datagram sockets are accepted, because those are what servekit
    servers serve. Raises ValueError when systemd passed nothing (saying how
    to run under socket activation), when a descriptor is not a socket or is
    of another kind, and for everything listen_fds() rejects. On error no
    descriptor is closed: they belong to the process, not to this call.

    Descriptors not selected by ``names`` are not touched (beyond
    close-on-exec), so other code may still use them.
    """
    if isinstance(names, str):
        raise TypeError(f"names is a collection of names: for one, pass [{names!r}]")
    env = os.environ if environ is None else environ
    reading = _read(env)  # read first: listen_fds() may unset the variables
    found = listen_fds(unset_environment=unset_environment, environ=env)
    if not found:
        raise ValueError(f"no sockets passed by systemd: {reading.why_none} ({_HINT})")
    wanted = [s for s in found if names is None or s.name in names]
    if not wanted:
        logger.warning(
            "systemd passed sockets named %s, none of them %s",
            ", ".join(sorted({s.name for s in found})),
            ", ".join(sorted(names or ())),
        )
    sockets: list[socket.socket] = []
    try:
        for inherited in wanted:
            sockets.append(_wrap(inherited))
    except BaseException:
        for sock in sockets:
            sock.detach()  # give the descriptor back untouched
        raise
    return sockets


def _read(env: MutableMapping[str, str]) -> _Reading:
    """Parse the three variables; pure, so callers can look before they change anything."""
    pid_text = env.get("LISTEN_PID")
    if pid_text is None:
        if "LISTEN_FDS" in env:
            return _Reading(False, (), "LISTEN_FDS is set but LISTEN_PID is not")
        return _Reading(False, (), "LISTEN_FDS is not set for this process")
    pid = _integer("LISTEN_PID", pid_text)
    if pid <= 0:
        raise ValueError(f"LISTEN_PID={pid_text!r} is not a process id")
    if pid != os.getpid():
        return _Reading(
            False,
            (),
            f"LISTEN_PID={pid} names another process (this one is {os.getpid()})",
        )
    count_text = env.get("LISTEN_FDS")
    if count_text is None:
        return _Reading(True, (), "LISTEN_FDS is not set for this process")
    count = _integer("LISTEN_FDS", count_text)
    if count < 0:
        raise ValueError(f"LISTEN_FDS={count_text!r} is negative")
    if count > _MAX_FDS:
        raise ValueError(f"LISTEN_FDS={count_text!r} is more than {_MAX_FDS} descriptors")
    names = _names(env.get("LISTEN_FDNAMES"), count)
    sockets = tuple(
        InheritedSocket(SD_LISTEN_FDS_START + index, name) for index, name in enumerate(names)
    )
    return _Reading(True, sockets, "LISTEN_FDS is 0" if count == 0 else "")


def _integer(variable: str, text: str) -> int:
    if not _INTEGER.fullmatch(text):
        raise ValueError(f"{variable}={text!r} is not a decimal integer")
    return int(text)


def _names(text: str | None, count: int) -> list[str]:
    """One name per descriptor: from LISTEN_FDNAMES, or "unknown" for each when absent."""
    if text is None or count == 0:
        return [_UNKNOWN] * count
    names = text.split(":")
    if len(names) != count:
        raise ValueError(
            f"LISTEN_FDNAMES={text!r} has {len(names)} name(s) but LISTEN_FDS={count}: "
            "there must be one name per descriptor"
        )
    return names


def _set_cloexec(fd: int) -> None:
    """Keep the descriptor from leaking into programs this process runs, as systemd does."""
    try:
        os.set_inheritable(fd, False)
    except OSError as exc:
        if exc.errno == errno.EBADF:
            raise ValueError(
                f"descriptor {fd}, passed according to LISTEN_FDS, is not open"
            ) from exc
        raise


def _wrap(inherited: InheritedSocket) -> socket.socket:
    """A socket object for ``inherited``, of a family and type servekit serves."""
    fd = inherited.fd
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        if exc.errno in (errno.EBADF, errno.ENOTSOCK):
            why = "not open" if exc.errno == errno.EBADF else "not a socket"
            raise ValueError(
                f"descriptor {fd} ({inherited.name!r}) passed by systemd is {why}"
            ) from exc
        raise
    if sock.family not in _ACCEPTED_FAMILIES or sock.type not in _ACCEPTED_TYPES:
        family, kind = _label(sock.family), _label(sock.type)
        sock.detach()
        raise ValueError(
            f"descriptor {fd} ({inherited.name!r}) passed by systemd is a {family} {kind} "
            "socket; only AF_INET, AF_INET6 and AF_UNIX with SOCK_STREAM or SOCK_DGRAM "
            "are served"
        )
    return sock


def _label(value: int) -> str:
    """The constant's name (AF_INET6, SOCK_SEQPACKET) where Python knows it, else the number."""
    name = getattr(value, "name", None)
    return name if isinstance(name, str) else str(value)
