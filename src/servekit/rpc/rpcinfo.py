"""``servekit rpcinfo``: rpcinfo's ``-p``, ``-t``, ``-u`` and ``-n``, as rpcinfo prints them.

    servekit rpcinfo -p HOST                  # the portmapper's list (version 2 DUMP)
    servekit rpcinfo -t HOST PROG [VERS]      # ping over TCP, every version when no VERS
    servekit rpcinfo -u HOST PROG [VERS]      # ... over UDP
    servekit rpcinfo -n PORT -t HOST PROG     # at PORT, rpcbind not asked

The output, the error lines and the exit status are those of rpcinfo (rpcbind 1.2.6 on
libtirpc 1.3): its options are read as glibc's getopt reads them, a program is a number or a
name of ``/etc/rpc``, the address of a program comes from HOST's rpcbind as libtirpc's
``rpcb_getaddr`` finds it (for each netid of the protocol in /etc/netconfig's order, udp or
tcp then udp6 or tcp6: RPCB version 4 GETADDR, then 3, then the portmapper's GETPORT over
UDP), a ping without a version first calls version 0 to learn the versions served from the
PROG_MISMATCH reply, and every failure is worded as ``clnt_perror`` and
``clnt_pcreateerror`` word it.

One difference, on purpose: ``-n PORT`` pings at PORT, without asking rpcbind, as rpcinfo's
manual says; rpcinfo 1.2.6 reads the option and then asks rpcbind all the same.
"""

from __future__ import annotations

import enum
import errno
import os
import re
import socket
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

from servekit.rpc import rpcbind
from servekit.rpc.client import (
    AuthError,
    Client,
    GarbageArgs,
    ProcUnavail,
    ProgMismatch,
    ProgUnavail,
    RpcError,
    RpcMismatch,
    RpcTimeout,
    SystemErr,
)
from servekit.rpc.program import Version, procedure

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence


__all__ = ["Stat", "Status", "find_address", "main", "program_name", "program_number", "status_of"]

#: Where rpcinfo finds program names (getrpcbyname, getrpcbynumber).
RPC_DATABASE = "/etc/rpc"
#: rpcbind's local socket, where ``-p`` without a host asks (rpcinfo's _PATH_RPCBINDSOCK).
LOCAL_SOCKET = "/run/rpcbind.sock"
#: libtirpc's timeouts: a ping (rpcinfo's), a question to rpcbind, the portmapper's DUMP.
PING_TIMEOUT = 10.0
RPCBIND_TIMEOUT = 60.0
DUMP_TIMEOUT = 60.0
MAX_VERS = 0xFFFFFFFF
#: What libtirpc sends as r_owner in GETADDR (rpcbind ignores it).
RPCB_OWNER = "libtirpc"

USAGE = """\
Usage: rpcinfo [-m | -s] [host]
       rpcinfo -p [host]
       rpcinfo -T netid host prognum [versnum]
       rpcinfo -l host prognum versnum
       rpcinfo [-n portnum] -u | -t host prognum [versnum]
       rpcinfo -a serv_address -T netid prognum [version]
       rpcinfo -b prognum versnum
       rpcinfo -d [-T netid] prognum versnum
"""

#: rpcinfo's options (its getopt string "a:bdlmn:pstT:u"): True for those taking an argument.
_OPTIONS = {"a": True, "b": False, "d": False, "l": False, "m": False, "n": True,
            "p": False, "s": False, "t": False, "T": True, "u": False}  # fmt: skip
_FUNCTIONS = {"p": "pmapdump", "t": "tcp", "u": "udp", "a": "addrping", "b": "broadcast",
              "d": "delete", "l": "addrlist", "m": "stats", "s": "dump-short"}  # fmt: skip


# -- libtirpc's errors, worded as it words them -------------------------------------------


class Stat(enum.IntEnum):
    """libtirpc's ``enum clnt_stat``."""

    SUCCESS = 0
    CANTENCODEARGS = 1
    CANTDECODERES = 2
    CANTSEND = 3
    CANTRECV = 4
    TIMEDOUT = 5
    VERSMISMATCH = 6
    AUTHERROR = 7
    PROGUNAVAIL = 8
    PROGVERSMISMATCH = 9
    PROCUNAVAIL = 10
    CANTDECODEARGS = 11
    SYSTEMERROR = 12
    UNKNOWNHOST = 13
    PMAPFAILURE = 14
    PROGNOTREGISTERED = 15
    FAILED = 16
    UNKNOWNPROTO = 17
    N2AXLATEFAILURE = 22


_MESSAGES = [
    "RPC: Success", "RPC: Can't encode arguments", "RPC: Can't decode result",
    "RPC: Unable to send", "RPC: Unable to receive", "RPC: Timed out",
    "RPC: Incompatible versions of RPC", "RPC: Authentication error",
    "RPC: Program unavailable", "RPC: Program/version mismatch", "RPC: Procedure unavailable",
    "RPC: Server can't decode arguments", "RPC: Remote system error", "RPC: Unknown host",
    "RPC: Port mapper failure", "RPC: Program not registered",
    "RPC: Failed (unspecified error)", "RPC: Unknown protocol",
]  # fmt: skip
_AUTH_MESSAGES = [
    "Authentication OK", "Invalid client credential", "Server rejected credential",
    "Invalid client verifier", "Server rejected verifier", "Client credential too weak",
    "Invalid server verifier", "Failed (unspecified error)",
]  # fmt: skip


def _sperrno(stat: int) -> str:
    return _MESSAGES[stat] if 0 <= stat < len(_MESSAGES) else "RPC: (unknown error code)"


@dataclass(frozen=True)
class Status:
    """How a call ended, as libtirpc's ``struct rpc_err`` says it."""

    stat: Stat
    low: int = 0  # PROGVERSMISMATCH, VERSMISMATCH: the versions there are
    high: int = 0
    errno: int = 0  # CANTSEND, CANTRECV, SYSTEMERROR
    why: int = 0  # AUTHERROR: the auth_stat
    cause: Status | None = None  # PMAPFAILURE: how the portmapper's call ended

    @property
    def ok(self) -> bool:
        return self.stat is Stat.SUCCESS

    def call_error(self) -> str:
        """What ``clnt_sperror`` says of a call that ended so (after "prefix: ")."""
        text = _sperrno(self.stat)
        if self.stat in (Stat.CANTSEND, Stat.CANTRECV):
            return f"{text}; errno = {os.strerror(self.errno)}"
        if self.stat in (Stat.VERSMISMATCH, Stat.PROGVERSMISMATCH):
            return f"{text}; low version = {self.low}, high version = {self.high}"
        if self.stat is Stat.AUTHERROR:
            if 0 <= self.why < len(_AUTH_MESSAGES):
                return f"{text}; why = {_AUTH_MESSAGES[self.why]}"
            return f"{text}; why = (unknown authentication error - {self.why})"
        return text

    def create_error(self) -> str:
        """What ``clnt_spcreateerror`` says of a client that could not be made so."""
        text = _sperrno(self.stat)
        if self.stat is Stat.PMAPFAILURE:
            cause = self.cause or Status(Stat.SUCCESS)
            text += " - " + _sperrno(cause.stat)[5:]
            if cause.stat in (Stat.CANTSEND, Stat.CANTRECV):
                text += f": errno {cause.errno} ({os.strerror(cause.errno)})"
        elif self.stat is Stat.SYSTEMERROR:
            text += " - " + os.strerror(self.errno)
        return text


def status_of(exc: BaseException) -> Status:
    """The Status of a call that raised ``exc`` (from servekit.rpc.client)."""
    if isinstance(exc, RpcTimeout):
        return Status(Stat.TIMEDOUT)
    if isinstance(exc, ProgMismatch):
        return Status(Stat.PROGVERSMISMATCH, low=exc.low, high=exc.high)
    if isinstance(exc, RpcMismatch):
        return Status(Stat.VERSMISMATCH, low=exc.low, high=exc.high)
    if isinstance(exc, AuthError):
        return Status(Stat.AUTHERROR, why=int(exc.stat))
    simple: list[tuple[type[BaseException], Stat]] = [
        (ProgUnavail, Stat.PROGUNAVAIL), (ProcUnavail, Stat.PROCUNAVAIL),
        (GarbageArgs, Stat.CANTDECODEARGS), (SystemErr, Stat.SYSTEMERROR),
        (RpcError, Stat.CANTDECODERES),  # the result did not decode
    ]  # fmt: skip
    for kind, stat in simple:
        if isinstance(exc, kind):
            return Status(stat)
    if isinstance(exc, _Refused):
        return Status(Stat.CANTRECV, errno=errno.ECONNREFUSED)
    if isinstance(exc, TimeoutError):
        return Status(Stat.TIMEDOUT)
    code = getattr(exc, "errno", None)
    if code == errno.EPIPE:
        return Status(Stat.CANTSEND, errno=code)
    # A connection closed under the call: libtirpc's clnt_vc reads "premature eof" so.
    return Status(Stat.CANTRECV, errno=code or errno.ECONNRESET)


# -- calling, as libtirpc does ------------------------------------------------------------


class _Refused(ConnectionRefusedError):
    """A datagram was answered with ICMP "port unreachable"."""


class _Client(Client):
    """servekit's client, with libtirpc's reading of a refused datagram: libtirpc's UDP
    client (IP_RECVERR) ends the call at once with RPC_CANTRECV over IPv4, where Client
    sends again until its timeout. And its peer is the one the system connected it to: a
    program registered at "0.0.0.0.p1.p2" is called at 0.0.0.0, which is this host, and
    answers from 127.0.0.1."""

    def __init__(self, address: str, version: type[Version], *, timeout: float) -> None:
        super().__init__(address, version, timeout=timeout)
        if isinstance(self._peer, tuple):
            self._peer = self._sock.getpeername()

    def _datagram_refused(self) -> None:
        if self._sock.family == socket.AF_INET6:
            return  # libtirpc asks for SOL_IP's errors only: it waits
        raise _Refused(errno.ECONNREFUSED, os.strerror(errno.ECONNREFUSED))


def _url(proto: str, address: tuple[Any, ...]) -> str:
    host = address[0]
    return f"{proto}://[{host}]:{address[1]}" if ":" in host else f"{proto}://{host}:{address[1]}"


class _Ping(Version):
    """The NULL procedure of any program (a subclass says which, and which version)."""

    @procedure(0)
    def NULLPROC(self) -> None:
        pass


class _CreateError(Exception):
    """No client: ``status`` says why, as rpc_createerr does."""

    def __init__(self, status: Status) -> None:
        super().__init__(status.create_error())
        self.status = status


def _connect(url: str, version: type[Version], timeout: float) -> Client:
    """A client at ``url``, or _CreateError as clnt_tli_create fails (SYSTEMERROR)."""
    try:
        return _Client(url, version, timeout=timeout)
    except OSError as exc:
        raise _CreateError(Status(Stat.SYSTEMERROR, errno=exc.errno or 0)) from None


def _call(client: Client, method: Any, *args: Any) -> tuple[Status, Any]:
    try:
        return Status(Stat.SUCCESS), client.call(method, *args)
    except (RpcError, OSError) as exc:
        return status_of(exc), None


# -- where a program is: libtirpc's rpcb_getaddr ------------------------------------------

#: /etc/netconfig's visible IP netids, in its order: (netid, family, protocol).
_NETIDS = [
    ("udp", socket.AF_INET, "udp"), ("tcp", socket.AF_INET, "tcp"),
    ("udp6", socket.AF_INET6, "udp"), ("tcp6", socket.AF_INET6, "tcp"),
]  # fmt: skip


def _resolve(host: str, family: int, proto: str) -> list[tuple[Any, ...]]:
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    try:
        found = socket.getaddrinfo(host, 111, family, kind)
    except (socket.gaierror, UnicodeError):
        raise _CreateError(Status(Stat.UNKNOWNHOST)) from None
    return [info[4] for info in found]


def _rpcbind_client(
    host: str, family: int, proto: str, version: type[Version]
) -> tuple[Client, tuple[Any, ...]]:
    """A client of ``host``'s rpcbind (the first of its addresses that takes one)."""
    error = _CreateError(Status(Stat.UNKNOWNHOST))
    for address in _resolve(host, family, proto):
        try:
            return _connect(_url(proto, address), version, RPCBIND_TIMEOUT), address
        except _CreateError as exc:
            error = exc
    raise error


def find_address(host: str, prog: int, vers: int, netid: str) -> tuple[Any, ...]:
    """The socket address of ``prog`` ``vers`` over ``netid`` on ``host``, from its rpcbind
    as libtirpc asks it; _CreateError as libtirpc fails."""
    family, proto = {n: (f, p) for n, f, p in _NETIDS}[netid]
    client, rpcbind_address = _rpcbind_client(host, family, proto, rpcbind.RPCB_V4)
    r_addr = rpcbind.universal_address(family, rpcbind_address)
    query = rpcbind.rpcb(prog & 0xFFFFFFFF, vers & 0xFFFFFFFF, netid, r_addr, RPCB_OWNER)
    try:
        for version in (rpcbind.RPCB_V4, rpcbind.RPCB_V3):
            client.version = version  # libtirpc's CLSET_VERS: the same client, asked again
            status, uaddr = _call(client, version.RPCBPROC_GETADDR, query)
            if status.ok:
                if not uaddr:
                    raise _CreateError(Status(Stat.PROGNOTREGISTERED))
                try:
                    found_host, port = rpcbind.parse_universal(uaddr)
                except ValueError:
                    raise _CreateError(Status(Stat.N2AXLATEFAILURE)) from None
                return (found_host, port)
            if status.stat is Stat.PROGVERSMISMATCH and status.low > 4:
                raise _CreateError(status)  # a newer rpcbind than libtirpc knows
            if status.stat not in (Stat.PROGVERSMISMATCH, Stat.PROGUNAVAIL):
                raise _CreateError(status)
    finally:
        client.close()
    if family != socket.AF_INET:
        raise _CreateError(Status(Stat.PROGNOTREGISTERED))
    return _portmapper_address(host, prog, vers, proto)


def _portmapper_address(host: str, prog: int, vers: int, proto: str) -> tuple[Any, ...]:
    """libtirpc's last try: the portmapper's GETPORT, over UDP."""
    client, address = _rpcbind_client(host, socket.AF_INET, "udp", rpcbind.PMAP_V2)
    prot = rpcbind.IPPROTO_TCP if proto == "tcp" else rpcbind.IPPROTO_UDP
    with client:
        status, port = _call(
            client, rpcbind.PMAP_V2.PMAPPROC_GETPORT,
            rpcbind.mapping(prog & 0xFFFFFFFF, vers & 0xFFFFFFFF, prot, 0),
        )  # fmt: skip
    if not status.ok:
        raise _CreateError(Status(Stat.PMAPFAILURE, cause=status))
    if port == 0:
        raise _CreateError(Status(Stat.PROGNOTREGISTERED))
    return (address[0], port & 0xFFFF)


def _locate(host: str, prog: int, vers: int, proto: str, port: int) -> tuple[Any, ...]:
    """rpcinfo's ip_getclient: each netid of ``proto`` in turn, the next one only when the
    host has no address of this one's family. ``port``: there, rpcbind not asked."""
    unknown = _CreateError(Status(Stat.UNKNOWNHOST))
    for netid, family, netid_proto in _NETIDS:
        if netid_proto != proto:
            continue
        try:
            if port:
                return (_resolve(host, family, proto)[0][0], port)
            return find_address(host, prog, vers, netid)
        except _CreateError as exc:
            if exc.status.stat is not Stat.UNKNOWNHOST:
                raise
            unknown = exc
    raise unknown


# -- program names: /etc/rpc ---------------------------------------------------------------


def _rpc_entries(path: str = RPC_DATABASE) -> list[tuple[str, int, list[str]]]:
    """(name, number, aliases) of each line of /etc/rpc, in its order; none without it."""
    entries = []
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as lines:
            for line in lines:
                fields = line.split("#", 1)[0].split()
                if len(fields) >= 2 and fields[1].isdigit():
                    entries.append((fields[0], int(fields[1]), fields[2:]))
    except OSError:
        pass
    return entries


def program_name(number: int, path: str = RPC_DATABASE) -> str | None:
    """getrpcbynumber's name for program ``number``, or None."""
    return next((name for name, n, _ in _rpc_entries(path) if n == number), None)


def program_number(name: str, path: str = RPC_DATABASE) -> int | None:
    """getrpcbyname's number for ``name`` (a name or an alias), or None."""
    for entry_name, number, aliases in _rpc_entries(path):
        if name == entry_name or name in aliases:
            return number
    return None


# -- the command ---------------------------------------------------------------------------


class _Exit(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


@dataclass
class _Output:
    out: TextIO
    err: TextIO

    def print(self, text: str) -> None:
        self.out.write(text + "\n")

    def error(self, text: str) -> None:
        self.err.write(text + "\n")

    def fail(self, text: str, code: int = 1) -> NoReturn:
        self.error(text)
        raise _Exit(code)

    def usage(self) -> NoReturn:
        self.err.write(USAGE)
        raise _Exit(1)


_STRTOL = re.compile(rb"[ \t\n\v\f\r]*([+-]?[0-9]+)")


def _strtol(text: str) -> int | None:
    """C's strtol(text, &end, 10) when it reads the whole text, else None."""
    match = _STRTOL.fullmatch(os.fsencode(text))
    if match is None:
        return None
    return max(-(2**63), min(2**63 - 1, int(match.group(1))))


def _isalpha(byte: int) -> bool:
    return 0x41 <= byte <= 0x5A or 0x61 <= byte <= 0x7A  # C's isalpha, in the C locale


def _program(arg: str, io: _Output) -> int:
    """rpcinfo's getprognum: a name of /etc/rpc, or a number (printed as C's u_long)."""
    raw = os.fsencode(arg)
    end = 0
    while end < len(raw):  # while (*tptr && isdigit (*tptr++));
        end += 1
        if not 0x30 <= raw[end - 1] <= 0x39:
            break
    if end < len(raw) or (end > 0 and _isalpha(raw[end - 1])):
        number = program_number(arg)
        if number is None:
            io.fail(f"rpcinfo: {arg} is unknown service")
        return number
    value = _strtol(arg)
    if value is None:
        io.fail(f"rpcinfo: {arg} is illegal program number")
    return value % 2**64


def _version(arg: str, io: _Output) -> int:
    """rpcinfo's getvers: ``(int) strtol(...)``, printed as C's u_long."""
    value = _strtol(arg)
    if value is None:
        io.fail(f"rpcinfo: {arg} is illegal version number")
    return ((value + 2**31) % 2**32 - 2**31) % 2**64


def _ping_one(client: Client, prog: int, vers: int) -> Status:
    """A NULL call to ``prog`` ``vers`` (libtirpc's CLSET_VERS: the same client, and over
    TCP the same connection, for every version)."""

    class Ping(_Ping, program=prog & 0xFFFFFFFF, version=vers & 0xFFFFFFFF):
        pass

    client.version = Ping
    return _call(client, _Ping.NULLPROC)[0]


def _pstatus(io: _Output, status: Status, prog: int, vers: int) -> bool:
    if status.ok:
        io.print(f"program {prog} version {vers} ready and waiting")
        return True
    io.error(f"rpcinfo: {status.call_error()}")
    io.print(f"program {prog} version {vers} is not available")
    return False


def ping(io: _Output, proto: str, port: int, args: list[str]) -> None:
    """rpcinfo -t/-u HOST PROG [VERS] (ip_ping)."""
    if not 2 <= len(args) <= 3:
        io.usage()
    host = args[0]
    prog = _program(args[1], io)
    vers = _version(args[2], io) if len(args) == 3 else 0
    try:
        address = _locate(host, prog, vers, proto, port)
        client = _connect(_url(proto, address), _Ping, PING_TIMEOUT)
    except _CreateError as exc:
        io.fail(f"{host}: {exc.status.create_error()}")
    with client:
        _ping_versions(io, client, prog, vers, known=len(args) == 3)


def _ping_versions(io: _Output, client: Client, prog: int, vers: int, *, known: bool) -> None:
    status = _ping_one(client, prog, vers)
    if known:
        if not _pstatus(io, status, prog, vers):
            raise _Exit(1)
        return
    if status.stat is Stat.PROGVERSMISMATCH:
        low, high = status.low, status.high
    elif status.ok:  # it serves version 0: what of the last one?
        status = _ping_one(client, prog, MAX_VERS)
        if status.stat is Stat.PROGVERSMISMATCH:
            low, high = status.low, status.high
        elif status.ok:
            low, high = 0, MAX_VERS
        else:
            _pstatus(io, status, prog, MAX_VERS)
            raise _Exit(1)
    else:
        _pstatus(io, status, prog, 0)
        raise _Exit(1)
    failed = False
    for each in range(low, high + 1):
        failed |= not _pstatus(io, _ping_one(client, prog, each), prog, each)
    if failed:
        raise _Exit(1)


def dump_command(io: _Output, args: list[str]) -> None:
    """rpcinfo -p [HOST] (pmapdump)."""
    if len(args) > 1:
        io.usage()
    host = args[0] if args else None
    where = "rpcinfo: can't contact portmapper"
    try:
        if host is None:
            client = _connect(f"unix:{LOCAL_SOCKET}", rpcbind.PMAP_V2, DUMP_TIMEOUT)
        else:
            address = _locate(host, rpcbind.RPCBIND_PROGRAM, 2, "tcp", 0)
            client = _connect(_url("tcp", address), rpcbind.PMAP_V2, DUMP_TIMEOUT)
    except _CreateError as exc:
        io.fail(f"{where if host is None else host}: {exc.status.create_error()}")
    with client:
        status, entry = _call(client, rpcbind.PMAP_V2.PMAPPROC_DUMP)
    if status.stat in (Stat.PROGVERSMISMATCH, Stat.PROGUNAVAIL):
        if status.low > 2:
            io.error(f"{host} does not support portmapper.  Try rpcinfo {host} instead")
        raise _Exit(1)
    if not status.ok:
        io.fail(f"{where}: {status.call_error()}")
    if entry is None:
        io.print("No remote programs registered.")
        return
    io.print("   program vers proto   port  service")
    names = {number: name for name, number, _ in reversed(_rpc_entries())}
    while entry is not None:
        m = entry.map
        proto = {rpcbind.IPPROTO_UDP: "udp", rpcbind.IPPROTO_TCP: "tcp"}.get(m.prot, str(m.prot))
        name = names.get(m.prog)
        io.print(f"{m.prog:10d}{m.vers:5d}{proto:>6}{m.port:7d}" + (f"  {name}" if name else ""))
        entry = entry.next


def _getopt(argv: list[str], io: _Output, operands: list[str]) -> Iterator[tuple[str, str]]:
    """glibc's getopt over rpcinfo's options, one at a time: options anywhere (the operands
    go to ``operands``), "--" ends them; a mistake is said and yields "?". (getopt, not
    getopt_long: "--foo" is the letters "-", "f", "o", "o".)"""
    index = 0
    while index < len(argv):
        arg = argv[index]
        index += 1
        if arg == "--":
            operands += argv[index:]
            return
        if not arg.startswith("-") or arg == "-":
            operands.append(arg)
            continue
        at = 1
        while at < len(arg):
            letter = arg[at]
            at += 1
            if letter not in _OPTIONS:
                io.error(f"rpcinfo: invalid option -- '{letter}'")
                yield "?", ""
            elif not _OPTIONS[letter]:
                yield letter, ""
            elif at < len(arg):
                yield letter, arg[at:]
                break
            elif index < len(argv):
                index += 1
                yield letter, argv[index - 1]
            else:
                io.error(f"rpcinfo: option requires an argument -- '{letter}'")
                yield "?", ""


def run(argv: list[str], io: _Output) -> None:
    """rpcinfo's main, for its -p, -t, -u and -n."""
    function: str | None = None
    failed = False
    port = 0
    netid = False
    operands: list[str] = []
    for letter, value in _getopt(argv, io, operands):
        if letter == "n":
            number = _strtol(value)
            if number is None:
                io.fail(f"rpcinfo: {value} is illegal port number")
            port = number % 2**16
        elif letter == "T":
            netid = True
        elif letter == "?" or function is not None:
            failed = True
        else:
            function = _FUNCTIONS[letter]
    if failed or (function == "addrping" and not netid):
        io.usage()
    if function == "pmapdump":
        if port != 0:
            io.usage()
        dump_command(io, operands)
    elif function in ("tcp", "udp"):
        ping(io, function, port, operands)
    else:
        what = "without -p, -t or -u" if function is None else f"-{_letter(function)}"
        io.fail(f"rpcinfo: servekit rpcinfo does -p, -t, -u and -n, not rpcinfo {what}", 2)


def _letter(function: str) -> str:
    return next(letter for letter, name in _FUNCTIONS.items() if name == function)


def main(argv: Sequence[str], stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """``servekit rpcinfo ARGS``: rpcinfo's output on ``stdout`` and ``stderr``, and its
    exit status returned."""
    io = _Output(stdout or sys.stdout, stderr or sys.stderr)
    try:
        run(list(argv), io)
    except _Exit as done:
        return done.code
    finally:
        io.out.flush()
    return 0
