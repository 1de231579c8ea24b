"""rpcbind (RFC 1833): where a host's RPC programs are, asked and told.

- The protocol: program 100000, portmapper version 2 (``PMAP_V2``: ports of TCP
  and UDP) and rpcbind versions 3 and 4 (``RPCB_V3``, ``RPCB_V4``: universal
  addresses of any transport), declared as rpc.Version classes, so the same
  declarations serve (``servekit rpcbind``) and call (registration, look-ups).
- Registration: ``register(program, netid, uaddr)`` and ``unregister(...)`` tell the
  host's rpcbind, over its local socket with version 4, then 3, and then the
  portmapper over loopback; a server made for an rpc.Program registers each of its
  versions when it starts listening and unregisters them when it closes.
- Look-ups: ``getaddr``, ``getport``, ``dump``.
- ``Registry`` and the ``*Service`` classes: the built-in rpcbind, which takes SET and
  UNSET only from loopback or the local socket.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Annotated, Any

from servekit.rpc import xdr
from servekit.rpc.client import Client, RpcError
from servekit.rpc.program import Program, Version, procedure

__all__ = [
    "DEFAULT_PORTMAP",
    "DEFAULT_SOCKET",
    "PMAP_V2",
    "RPCBIND_PROGRAM",
    "RPCB_V3",
    "RPCB_V4",
    "Registry",
    "dump",
    "getaddr",
    "getport",
    "mapping",
    "netid_of",
    "pmaplist",
    "register",
    "rp__list",
    "rpcb",
    "rpcbind_program",
    "universal_address",
    "unregister",
    "unregister_address",
]

logger = logging.getLogger(__name__)

RPCBIND_PROGRAM = 100000
#: rpcbind's local socket, where registrations go first (and what rpcbind trusts).
DEFAULT_SOCKET = "unix:/run/rpcbind.sock"
#: The portmapper, for a host whose rpcbind has no local socket.
DEFAULT_PORTMAP = "tcp://127.0.0.1:111"
IPPROTO_TCP, IPPROTO_UDP = 6, 17
_STRING = Annotated[str, xdr.string()]


@xdr.struct
class rpcb:
    r_prog: xdr.UInt
    r_vers: xdr.UInt
    r_netid: _STRING
    r_addr: _STRING
    r_owner: _STRING


@xdr.struct
class rp__list:
    rpcb_map: rpcb
    rpcb_next: Annotated[rp__list | None, xdr.optional("rp__list")]


@xdr.struct
class mapping:
    prog: xdr.UInt
    vers: xdr.UInt
    prot: xdr.UInt
    port: xdr.UInt


@xdr.struct
class pmaplist:
    map: mapping
    next: Annotated[pmaplist | None, xdr.optional("pmaplist")]


RpcbList = Annotated[rp__list | None, xdr.optional(rp__list)]
PmapList = Annotated[pmaplist | None, xdr.optional(pmaplist)]


class PMAP_V2(Version, program=RPCBIND_PROGRAM, version=2):
    """The portmapper: TCP and UDP ports."""

    @procedure(0)
    def PMAPPROC_NULL(self) -> None:
        pass

    @procedure(1)
    def PMAPPROC_SET(self, m: mapping) -> xdr.Bool:
        raise NotImplementedError

    @procedure(2)
    def PMAPPROC_UNSET(self, m: mapping) -> xdr.Bool:
        raise NotImplementedError

    @procedure(3)
    def PMAPPROC_GETPORT(self, m: mapping) -> xdr.UInt:
        raise NotImplementedError

    @procedure(4)
    def PMAPPROC_DUMP(self) -> PmapList:
        raise NotImplementedError


class RPCB_V3(Version, program=RPCBIND_PROGRAM, version=3):
    """rpcbind version 3: universal addresses of every transport."""

    @procedure(0)
    def RPCBPROC_NULL(self) -> None:
        pass

    @procedure(1)
    def RPCBPROC_SET(self, r: rpcb) -> xdr.Bool:
        raise NotImplementedError

    @procedure(2)
    def RPCBPROC_UNSET(self, r: rpcb) -> xdr.Bool:
        raise NotImplementedError

    @procedure(3)
    def RPCBPROC_GETADDR(self, r: rpcb) -> _STRING:
        raise NotImplementedError

    @procedure(4)
    def RPCBPROC_DUMP(self) -> RpcbList:
        raise NotImplementedError

    @procedure(6)
    def RPCBPROC_GETTIME(self) -> xdr.UInt:
        return int(time.time()) & 0xFFFFFFFF


class RPCB_V4(RPCB_V3, version=4):
    """rpcbind version 4: version 3, and GETVERSADDR."""

    @procedure(9)
    def RPCBPROC_GETVERSADDR(self, r: rpcb) -> _STRING:
        raise NotImplementedError


# -- addresses ---------------------------------------------------------------------------


def universal_address(family: int, address: Any) -> str:
    """The universal address (RFC 1833) of a socket address: "h1.h2.h3.h4.p1.p2" for
    IPv4, "addr.p1.p2" for IPv6, the path for a Unix socket."""
    if family == socket.AF_UNIX:
        return os.fsdecode(address)
    host, port = address[0], address[1]
    return f"{host}.{port >> 8}.{port & 0xFF}"


def parse_universal(uaddr: str) -> tuple[str, int]:
    """(host, port) of an IP universal address; ValueError if it is not one."""
    host, high, low = uaddr.rsplit(".", 2)
    ipaddress.ip_address(host)
    return host, int(high) * 256 + int(low)


def netid_of(family: int, socket_type: int) -> str:
    """The netid of a transport, as /etc/netconfig names it."""
    if family == socket.AF_UNIX:
        return "local"
    stream = socket_type == socket.SOCK_STREAM
    if family == socket.AF_INET6:
        return "tcp6" if stream else "udp6"
    return "tcp" if stream else "udp"


# -- asking and telling a host's rpcbind --------------------------------------------------


@dataclass(frozen=True)
class _Target:
    address: str
    version: type[Version]


def _targets(local: str, portmap: str) -> list[_Target]:
    return [_Target(local, RPCB_V4), _Target(local, RPCB_V3), _Target(portmap, PMAP_V2)]


def register(
    prog: int,
    vers: int,
    netid: str,
    uaddr: str,
    *,
    local: str = DEFAULT_SOCKET,
    portmap: str = DEFAULT_PORTMAP,
    timeout: float = 5.0,
) -> bool:
    """Tell the host's rpcbind that ``prog`` ``vers`` is at ``uaddr`` over ``netid``,
    replacing what it had; False (with the reason logged) if no rpcbind took it."""
    return _tell(prog, vers, netid, uaddr, set_it=True, local=local, portmap=portmap,
                 timeout=timeout)  # fmt: skip


def unregister(
    prog: int,
    vers: int,
    netid: str,
    uaddr: str = "",
    *,
    local: str = DEFAULT_SOCKET,
    portmap: str = DEFAULT_PORTMAP,
    timeout: float = 5.0,
) -> bool:
    """Take ``prog`` ``vers`` over ``netid`` out of the host's rpcbind."""
    return _tell(prog, vers, netid, uaddr, set_it=False, local=local, portmap=portmap,
                 timeout=timeout)  # fmt: skip


def _tell(
    prog: int, vers: int, netid: str, uaddr: str, *, set_it: bool, local: str, portmap: str,
    timeout: float,
) -> bool:  # fmt: skip
    failures = []
    for target in _targets(local, portmap):
        try:
            with Client(target.address, target.version, timeout=timeout) as client:
                if target.version is PMAP_V2:
                    if netid not in ("tcp", "udp"):
                        failures.append(f"the portmapper takes tcp and udp only, not {netid}")
                        continue
                    port = parse_universal(uaddr)[1] if set_it else 0
                    prot = IPPROTO_TCP if netid == "tcp" else IPPROTO_UDP
                    entry = mapping(prog, vers, prot, port)
                    client.call(PMAP_V2.PMAPPROC_UNSET, entry)
                    return not set_it or client.call(PMAP_V2.PMAPPROC_SET, entry)
                entry3 = rpcb(prog, vers, netid, uaddr, "")
                client.call(RPCB_V3.RPCBPROC_UNSET, entry3)
                return not set_it or client.call(RPCB_V3.RPCBPROC_SET, entry3)
        except (OSError, RpcError, ValueError) as exc:
            failures.append(f"{target.address} (version {target.version.version}): {exc}")
    logger.warning(
        "could not %s program %d version %d (%s) with rpcbind: %s",
        "register" if set_it else "unregister", prog, vers, netid, "; ".join(failures),
    )  # fmt: skip
    return False


def unregister_address(
    netid: str,
    uaddr: str,
    *,
    local: str = DEFAULT_SOCKET,
    portmap: str = DEFAULT_PORTMAP,
    timeout: float = 2.0,
) -> int:
    """Unregister whatever rpcbind holds at ``uaddr`` over ``netid``: what a service
    that stops leaves (a prefork supervisor knows its sockets, not its programs).
    Returns how many versions it unregistered; quiet when no rpcbind answers."""
    held: list[tuple[int, int]] = []
    try:
        held = [(e.r_prog, e.r_vers) for e in dump(local, timeout=timeout)
                if e.r_netid == netid and e.r_addr == uaddr]  # fmt: skip
    except (OSError, RpcError):
        try:
            port = parse_universal(uaddr)[1]
            with Client(portmap, PMAP_V2, timeout=timeout) as client:
                entry = client.call(PMAP_V2.PMAPPROC_DUMP)
        except (OSError, RpcError, ValueError):
            logger.debug("no rpcbind to unregister %s %s from", netid, uaddr)
            return 0
        prot = IPPROTO_TCP if netid == "tcp" else IPPROTO_UDP
        while entry is not None:
            if entry.map.port == port and entry.map.prot == prot:
                held.append((entry.map.prog, entry.map.vers))
            entry = entry.next
    done = 0
    for prog, vers in held:
        done += unregister(prog, vers, netid, uaddr, local=local, portmap=portmap, timeout=timeout)
    return done


def getaddr(host: str, prog: int, vers: int, netid: str, *, timeout: float = 5.0) -> str:
    """The universal address of ``prog`` ``vers`` over ``netid`` on ``host``'s rpcbind
    (port 111, version 4 over TCP); "" if it is not registered."""
    with Client(f"tcp://{_bracket(host)}:111", RPCB_V4, timeout=timeout) as client:
        return client.call(RPCB_V4.RPCBPROC_GETADDR, rpcb(prog, vers, netid, "", ""))


def getport(
    address: str, prog: int, vers: int, protocol: int = IPPROTO_TCP, *, timeout: float = 5.0
) -> int:
    """The port of ``prog`` ``vers`` from the portmapper at ``address``; 0 if none."""
    with Client(address, PMAP_V2, timeout=timeout) as client:
        return client.call(PMAP_V2.PMAPPROC_GETPORT, mapping(prog, vers, protocol, 0))


def dump(address: str, *, timeout: float = 5.0) -> list[rpcb]:
    """Every registration the rpcbind at ``address`` holds (version 4's DUMP)."""
    with Client(address, RPCB_V4, timeout=timeout) as client:
        entry = client.call(RPCB_V4.RPCBPROC_DUMP)
    found = []
    while entry is not None:
        found.append(entry.rpcb_map)
        entry = entry.rpcb_next
    return found


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


# -- the built-in rpcbind ----------------------------------------------------------------


class Registry:
    """What a built-in rpcbind knows: (prog, vers, netid) -> (uaddr, owner)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple[int, int, str], tuple[str, str]] = {}

    def set(self, prog: int, vers: int, netid: str, uaddr: str, owner: str) -> bool:
        with self._lock:
            key = (prog, vers, netid)
            if key in self._entries:
                return False  # as rpcbind: UNSET first
            self._entries[key] = (uaddr, owner)
            return True

    def unset(self, prog: int, vers: int, netid: str) -> bool:
        """Remove ``prog`` ``vers`` over ``netid`` (every netid if it is "")."""
        with self._lock:
            keys = [k for k in self._entries if k[:2] == (prog, vers) and netid in ("", k[2])]
            for key in keys:
                del self._entries[key]
            return bool(keys)

    def lookup(self, prog: int, vers: int, netid: str) -> str:
        """The address of ``prog`` ``vers`` over ``netid``; failing that, of another
        version of it there, as rpcbind answers (the caller learns the versions from
        the PROG_MISMATCH of its call); "" if the program is not there at all."""
        with self._lock:
            found = self._entries.get((prog, vers, netid))
            if found is None:
                found = next(
                    (entry for (p, _, n), entry in self._entries.items()
                     if p == prog and n == netid),
                    None,
                )  # fmt: skip
        return "" if found is None else found[0]

    def add_self(self, family: int, socket_type: int, address: Any) -> None:
        """List this rpcbind at ``address``, as rpcbind lists itself: rpcinfo asks where
        program 100000 is before it dumps or pings it."""
        netid = netid_of(family, socket_type)
        uaddr = universal_address(family, address)
        versions = (3, 4) if family == socket.AF_UNIX else (2, 3, 4)
        for vers in versions:
            self.unset(RPCBIND_PROGRAM, vers, netid)
            self.set(RPCBIND_PROGRAM, vers, netid, uaddr, "superuser")

    def entries(self) -> list[rpcb]:
        with self._lock:
            return [
                rpcb(prog, vers, netid, uaddr, owner)
                for (prog, vers, netid), (uaddr, owner) in sorted(self._entries.items())
            ]


def _trusted(client_address: Any) -> bool:
    """SET and UNSET come from this host only: loopback, or the local socket."""
    if not isinstance(client_address, tuple):
        return True  # a Unix socket's peer
    try:
        return ipaddress.ip_address(client_address[0]).is_loopback
    except ValueError:
        return False


def _owner(client_address: Any) -> str:
    return "unix" if not isinstance(client_address, tuple) else "superuser"


class _Service:
    """What the built-in rpcbind's versions share: the server's registry."""

    server: Any
    client_address: Any

    @property
    def registry(self) -> Registry:
        registry: Registry = self.server.rpcbind_registry
        return registry


class RpcbindV2Service(_Service, PMAP_V2):
    def PMAPPROC_SET(self, m: mapping) -> bool:
        netid = {IPPROTO_TCP: "tcp", IPPROTO_UDP: "udp"}.get(m.prot)
        if netid is None or not _trusted(self.client_address):
            return False
        uaddr = universal_address(socket.AF_INET, ("0.0.0.0", m.port))
        return self.registry.set(m.prog, m.vers, netid, uaddr, _owner(self.client_address))

    def PMAPPROC_UNSET(self, m: mapping) -> bool:
        if not _trusted(self.client_address):
            return False
        return any(self.registry.unset(m.prog, m.vers, netid) for netid in ("tcp", "udp"))

    def PMAPPROC_GETPORT(self, m: mapping) -> int:
        netid = {IPPROTO_TCP: "tcp", IPPROTO_UDP: "udp"}.get(m.prot, "")
        uaddr = self.registry.lookup(m.prog, m.vers, netid)
        return parse_universal(uaddr)[1] if uaddr else 0

    def PMAPPROC_DUMP(self) -> pmaplist | None:
        head = None
        for entry in reversed(self.registry.entries()):
            if entry.r_netid in ("tcp", "udp"):
                prot = IPPROTO_TCP if entry.r_netid == "tcp" else IPPROTO_UDP
                port = parse_universal(entry.r_addr)[1]
                head = pmaplist(mapping(entry.r_prog, entry.r_vers, prot, port), head)
        return head


class _RpcbindV3Procedures(_Service):
    def RPCBPROC_SET(self, r: rpcb) -> bool:
        if not _trusted(self.client_address):
            return False
        return self.registry.set(
            r.r_prog, r.r_vers, r.r_netid, r.r_addr, _owner(self.client_address)
        )

    def RPCBPROC_UNSET(self, r: rpcb) -> bool:
        if not _trusted(self.client_address):
            return False
        return self.registry.unset(r.r_prog, r.r_vers, r.r_netid)

    def RPCBPROC_GETADDR(self, r: rpcb) -> str:
        return self.registry.lookup(r.r_prog, r.r_vers, r.r_netid)

    def RPCBPROC_DUMP(self) -> rp__list | None:
        head = None
        for entry in reversed(self.registry.entries()):
            head = rp__list(entry, head)
        return head


class RpcbindV3Service(_RpcbindV3Procedures, RPCB_V3):
    pass


class RpcbindV4Service(_RpcbindV3Procedures, RPCB_V4):
    def RPCBPROC_GETVERSADDR(self, r: rpcb) -> str:
        return self.registry.lookup(r.r_prog, r.r_vers, r.r_netid)


def rpcbind_program() -> Program:
    """The built-in rpcbind: serve it on every address with one shared Registry
    (``server.rpcbind_registry``), as ``servekit rpcbind`` does."""
    return Program(RpcbindV2Service, RpcbindV3Service, RpcbindV4Service, name="rpcbind")
