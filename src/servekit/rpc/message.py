"""ONC RPC messages (RFC 5531), sans-IO: calls and replies as bytes, both ways.

A server reads a call with ``parse_call(data)``: a ``Call`` whose ``args`` are the
procedure's argument bytes, still to decode with the procedure's XDR type, and whose
``credential`` is a typed object (``AuthNone``, ``AuthSys``). A message that cannot be
answered at all (too short to hold an xid, or a reply) raises ``NotACall``; one that
must be refused raises ``CallRejected``, whose ``reply`` is the answer to send, as
libtirpc words it (RPC_MISMATCH, AUTH_ERROR with AUTH_BADCRED or AUTH_REJECTEDCRED).
The server then answers with ``success()``, or one of ``prog_unavail()``,
``prog_mismatch()``, ``proc_unavail()``, ``garbage_args()``, ``system_err()``.

A client writes a call with ``encode_call()`` and reads the answer with
``parse_reply()``: a ``Reply`` with the xid and either the result bytes or the status
that refused it.

Accepted replies carry an AUTH_NONE verifier, as libtirpc's do for AUTH_NONE and
AUTH_SYS calls.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field
from typing import Annotated, NamedTuple

from servekit.rpc import xdr

__all__ = [
    "AUTH_NONE",
    "MAX_AUTH_BODY",
    "RPC_VERSION",
    "AcceptStat",
    "AuthFlavor",
    "AuthNone",
    "AuthStat",
    "AuthSys",
    "Call",
    "CallRejected",
    "Credential",
    "NotACall",
    "OpaqueAuth",
    "RejectStat",
    "Reply",
    "ReplyError",
    "auth_error",
    "encode_call",
    "garbage_args",
    "parse_call",
    "parse_reply",
    "proc_unavail",
    "prog_mismatch",
    "prog_unavail",
    "rpc_mismatch",
    "success",
    "system_err",
]

#: The RPC protocol version this module speaks (RFC 5531: 2).
RPC_VERSION = 2
#: The largest body of a credential or verifier (RFC 5531 ``opaque body<400>``).
MAX_AUTH_BODY = 400
#: AUTH_SYS limits (RFC 5531 appendix A): ``machinename<255>``, ``gids<16>``.
MAX_MACHINE_NAME = 255
MAX_GIDS = 16

_CALL, _REPLY = 0, 1
_MSG_ACCEPTED, _MSG_DENIED = 0, 1


class AuthFlavor(enum.IntEnum):
    AUTH_NONE = 0
    AUTH_SYS = 1
    AUTH_SHORT = 2
    AUTH_DH = 3
    RPCSEC_GSS = 6


class AcceptStat(enum.IntEnum):
    SUCCESS = 0
    PROG_UNAVAIL = 1
    PROG_MISMATCH = 2
    PROC_UNAVAIL = 3
    GARBAGE_ARGS = 4
    SYSTEM_ERR = 5


class RejectStat(enum.IntEnum):
    RPC_MISMATCH = 0
    AUTH_ERROR = 1


class AuthStat(enum.IntEnum):
    AUTH_OK = 0
    AUTH_BADCRED = 1
    AUTH_REJECTEDCRED = 2
    AUTH_BADVERF = 3
    AUTH_REJECTEDVERF = 4
    AUTH_TOOWEAK = 5
    AUTH_INVALIDRESP = 6
    AUTH_FAILED = 7
    AUTH_KERB_GENERIC = 8
    AUTH_TIMEEXPIRE = 9
    AUTH_TKT_FILE = 10
    AUTH_DECODE = 11
    AUTH_NET_ADDR = 12
    RPCSEC_GSS_CREDPROBLEM = 13
    RPCSEC_GSS_CTXPROBLEM = 14


@dataclass(frozen=True, slots=True)
class OpaqueAuth:
    """A credential or verifier as it travels: its flavour and its body (<= 400 bytes)."""

    flavor: int
    body: bytes = b""


AUTH_NONE = OpaqueAuth(AuthFlavor.AUTH_NONE)


@dataclass(frozen=True, slots=True)
class AuthNone:
    """The caller said nothing about itself (AUTH_NONE)."""


@xdr.struct
class AuthSys:
    """AUTH_SYS (RFC 5531 appendix A): the caller's Unix identity, as it says it is.

    Nothing proves it: take it as what the client claims, on a network you trust.
    """

    stamp: xdr.UInt
    machinename: Annotated[str, xdr.string(MAX_MACHINE_NAME)]
    uid: xdr.UInt
    gid: xdr.UInt
    gids: Annotated[list[int], xdr.var_array(xdr.uint32, MAX_GIDS)] = field(default_factory=list)

    def encode(self) -> OpaqueAuth:
        """This credential, as a call carries it."""
        body = xdr.encode(AuthSys, self)
        if len(body) > MAX_AUTH_BODY:
            raise ValueError(f"an AUTH_SYS body of {len(body)} bytes: over {MAX_AUTH_BODY}")
        return OpaqueAuth(AuthFlavor.AUTH_SYS, body)


#: What a procedure is told about its caller.
Credential = AuthNone | AuthSys


class Call(NamedTuple):
    """A call, its header read and checked; ``args`` is the procedure's argument bytes.

    A named tuple, not a frozen dataclass: as immutable, and made in a sixth of the
    time, once per call.
    """

    xid: int
    prog: int
    vers: int
    proc: int
    credential: Credential
    cred: OpaqueAuth
    verf: OpaqueAuth
    args: bytes


class NotACall(ValueError):
    """The message is not a call that can be answered (no xid, or a reply): drop it."""


class CallRejected(Exception):
    """The call must be refused before its procedure is looked up; ``reply`` says why."""

    def __init__(self, message: str, reply: bytes) -> None:
        super().__init__(message)
        self.reply = reply


_HEADER = struct.Struct(">IIIIII")  # xid, CALL, rpcvers, prog, vers, proc
#: An AUTH_NONE credential and verifier, both with empty bodies, as they follow the header.
_NO_AUTH = bytes(16)
_NOBODY = AuthNone()
_WORD = struct.Struct(">I")
_TWO = struct.Struct(">II")


def parse_call(data: bytes) -> Call:
    """The call in ``data`` (one whole message: a datagram, or a TCP record).

    Raises NotACall when no answer can be given, and CallRejected (with the answer)
    for a wrong RPC version or a credential that is malformed (AUTH_BADCRED) or of a
    flavour this module does not take (AUTH_REJECTEDCRED).
    """
    if len(data) < _HEADER.size:
        if len(data) < 8:
            raise NotACall(f"{len(data)} bytes: too short for an RPC message")
        xid, mtype = _TWO.unpack_from(data)
        if mtype != _CALL:
            raise NotACall(f"xid {xid}: message type {mtype}, not a call")
        raise CallRejected("call header cut short", auth_error(xid, AuthStat.AUTH_BADCRED))
    xid, mtype, rpcvers, prog, vers, proc = _HEADER.unpack_from(data)
    if mtype != _CALL:
        raise NotACall(f"xid {xid}: message type {mtype}, not a call")
    if rpcvers != RPC_VERSION:
        raise CallRejected(f"RPC version {rpcvers}, not {RPC_VERSION}", rpc_mismatch(xid))
    if data[24:40] == _NO_AUTH:  # AUTH_NONE credential and verifier: most calls
        return Call(xid, prog, vers, proc, _NOBODY, AUTH_NONE, AUTH_NONE, data[40:])
    try:
        cred, pos = _opaque_auth(data, _HEADER.size)
        verf, pos = _opaque_auth(data, pos)
    except ValueError as exc:
        raise CallRejected(str(exc), auth_error(xid, AuthStat.AUTH_BADCRED)) from None
    credential = _credential(xid, cred)
    return Call(xid, prog, vers, proc, credential, cred, verf, data[pos:])


def _opaque_auth(data: bytes, pos: int) -> tuple[OpaqueAuth, int]:
    if len(data) < pos + 8:
        raise ValueError("credential or verifier cut short")
    flavor, size = _TWO.unpack_from(data, pos)
    if size > MAX_AUTH_BODY:
        raise ValueError(f"an auth body of {size} bytes: over {MAX_AUTH_BODY}")
    start = pos + 8
    end = start + size
    padded = end + (-size & 3)
    if len(data) < padded:
        raise ValueError("credential or verifier cut short")
    return OpaqueAuth(flavor, bytes(data[start:end])), padded


def _credential(xid: int, cred: OpaqueAuth) -> Credential:
    if cred.flavor == AuthFlavor.AUTH_NONE:
        return AuthNone()
    if cred.flavor == AuthFlavor.AUTH_SYS:
        try:
            return xdr.decode(AuthSys, cred.body)
        except xdr.XdrError as exc:
            raise CallRejected(
                f"a malformed AUTH_SYS credential: {exc}", auth_error(xid, AuthStat.AUTH_BADCRED)
            ) from None
    raise CallRejected(
        f"credential flavour {cred.flavor} is not taken here",
        auth_error(xid, AuthStat.AUTH_REJECTEDCRED),
    )


# -- replies, for a server ---------------------------------------------------------------

# xid, REPLY, MSG_ACCEPTED, verifier AUTH_NONE with an empty body, then the accept status.
_ACCEPTED = struct.Struct(">IIIIII")


def _accepted(xid: int, status: int) -> bytes:
    return _ACCEPTED.pack(xid, _REPLY, _MSG_ACCEPTED, AuthFlavor.AUTH_NONE, 0, status)


def success(xid: int, results: bytes = b"") -> bytes:
    """The procedure ran: its encoded ``results`` follow."""
    return _accepted(xid, AcceptStat.SUCCESS) + results


def prog_unavail(xid: int) -> bytes:
    """No such program here."""
    return _accepted(xid, AcceptStat.PROG_UNAVAIL)


def prog_mismatch(xid: int, low: int, high: int) -> bytes:
    """The program is here, but not that version: ``low`` to ``high`` are."""
    return _accepted(xid, AcceptStat.PROG_MISMATCH) + _TWO.pack(low, high)


def proc_unavail(xid: int) -> bytes:
    """The program has no such procedure."""
    return _accepted(xid, AcceptStat.PROC_UNAVAIL)


def garbage_args(xid: int) -> bytes:
    """The arguments do not decode as the procedure's type."""
    return _accepted(xid, AcceptStat.GARBAGE_ARGS)


def system_err(xid: int) -> bytes:
    """The procedure failed (it raised)."""
    return _accepted(xid, AcceptStat.SYSTEM_ERR)


def rpc_mismatch(xid: int, low: int = RPC_VERSION, high: int = RPC_VERSION) -> bytes:
    """The call is not RPC version 2."""
    return struct.pack(">IIIIII", xid, _REPLY, _MSG_DENIED, RejectStat.RPC_MISMATCH, low, high)


def auth_error(xid: int, stat: AuthStat) -> bytes:
    """The call's credential or verifier is refused, for ``stat``."""
    return struct.pack(">IIIII", xid, _REPLY, _MSG_DENIED, RejectStat.AUTH_ERROR, stat)


# -- calls and replies, for a client -----------------------------------------------------


def encode_call(
    xid: int,
    prog: int,
    vers: int,
    proc: int,
    args: bytes = b"",
    cred: OpaqueAuth = AUTH_NONE,
    verf: OpaqueAuth = AUTH_NONE,
) -> bytes:
    """A call message; ``args`` are the procedure's encoded arguments."""
    parts = [_HEADER.pack(xid, _CALL, RPC_VERSION, prog, vers, proc)]
    for auth in (cred, verf):
        size = len(auth.body)
        if size > MAX_AUTH_BODY:
            raise ValueError(f"an auth body of {size} bytes: over {MAX_AUTH_BODY}")
        parts += [_TWO.pack(auth.flavor, size), auth.body, bytes(-size & 3)]
    parts.append(args)
    return b"".join(parts)


class ReplyError(Exception):
    """The server refused the call; ``status`` says how (see the subclasses in client code)."""


@dataclass(frozen=True, slots=True)
class Reply:
    """A reply: for an accepted, successful call ``results`` holds the result bytes;
    otherwise ``accept_stat`` or ``reject_stat`` (and their details) say why not."""

    xid: int
    verf: OpaqueAuth | None = None
    accept_stat: AcceptStat | None = None
    results: bytes = b""
    reject_stat: RejectStat | None = None
    auth_stat: AuthStat | None = None
    #: PROG_MISMATCH's or RPC_MISMATCH's (low, high) versions.
    mismatch: tuple[int, int] | None = None

    @property
    def ok(self) -> bool:
        return self.accept_stat is AcceptStat.SUCCESS


def parse_reply(data: bytes) -> Reply:
    """The reply in ``data``; NotACall if it is not one (a client drops it)."""
    try:
        return _parse_reply(data)
    except (struct.error, ValueError) as exc:
        raise NotACall(f"not an RPC reply: {exc}") from None


def _parse_reply(data: bytes) -> Reply:
    xid, mtype, stat = struct.unpack_from(">III", data)
    if mtype != _REPLY:
        raise ValueError(f"message type {mtype}")
    if stat == _MSG_DENIED:
        (reject,) = _WORD.unpack_from(data, 12)
        if reject == RejectStat.RPC_MISMATCH:
            low, high = _TWO.unpack_from(data, 16)
            _exact(data, 24)
            return Reply(xid, reject_stat=RejectStat.RPC_MISMATCH, mismatch=(low, high))
        if reject == RejectStat.AUTH_ERROR:
            (why,) = _WORD.unpack_from(data, 16)
            _exact(data, 20)
            return Reply(xid, reject_stat=RejectStat.AUTH_ERROR, auth_stat=AuthStat(why))
        raise ValueError(f"reject status {reject}")
    if stat != _MSG_ACCEPTED:
        raise ValueError(f"reply status {stat}")
    verf, pos = _opaque_auth(data, 12)
    (accept,) = _WORD.unpack_from(data, pos)
    status = AcceptStat(accept)
    pos += 4
    if status is AcceptStat.SUCCESS:
        return Reply(xid, verf, status, results=bytes(data[pos:]))
    if status is AcceptStat.PROG_MISMATCH:
        low, high = _TWO.unpack_from(data, pos)
        _exact(data, pos + 8)
        return Reply(xid, verf, status, mismatch=(low, high))
    _exact(data, pos)
    return Reply(xid, verf, status)


def _exact(data: bytes, end: int) -> None:
    if len(data) != end:
        raise ValueError(f"{len(data) - end} bytes after the reply")
