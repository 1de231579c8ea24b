"""RPC messages (RFC 5531): calls and replies, every status, AUTH_NONE and a strict AUTH_SYS."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from servekit.rpc import message, xdr
from servekit.rpc.message import (
    AcceptStat,
    AuthFlavor,
    AuthNone,
    AuthStat,
    AuthSys,
    CallRejected,
    NotACall,
    OpaqueAuth,
    RejectStat,
)

PROG, VERS = 0x20000123, 1


def _sys_body(machine: bytes, gids: int, *, extra: bytes = b"") -> bytes:
    """An AUTH_SYS body written by hand, so that it can be wrong."""
    name = struct.pack(">I", len(machine)) + machine + bytes(-len(machine) & 3)
    return (
        struct.pack(">I", 7) + name + struct.pack(">III", 1000, 100, gids)
        + b"".join(struct.pack(">I", g) for g in range(gids)) + extra
    )  # fmt: skip


def test_a_call_round_trips_with_its_arguments_and_credential() -> None:
    cred = AuthSys(stamp=7, machinename="host", uid=1000, gid=100, gids=[4, 24]).encode()
    args = xdr.encode(xdr.int32, 5) + xdr.encode(xdr.int32, 6)
    call = message.parse_call(message.encode_call(42, PROG, VERS, 1, args, cred))
    assert (call.xid, call.prog, call.vers, call.proc, call.args) == (42, PROG, VERS, 1, args)
    assert call.credential == AuthSys(7, "host", 1000, 100, [4, 24])
    assert call.verf == message.AUTH_NONE
    assert message.parse_call(message.encode_call(1, PROG, VERS, 0)).credential == AuthNone()


def test_replies_are_the_bytes_libtirpc_sends() -> None:
    """xid, REPLY, MSG_ACCEPTED, an AUTH_NONE verifier, the status, then what follows."""
    head = struct.pack(">IIIII", 9, 1, 0, 0, 0)
    assert message.success(9, b"\0\0\0\x0b") == head + struct.pack(">I", 0) + b"\0\0\0\x0b"
    assert message.prog_unavail(9) == head + struct.pack(">I", 1)
    assert message.prog_mismatch(9, 1, 2) == head + struct.pack(">III", 2, 1, 2)
    assert message.proc_unavail(9) == head + struct.pack(">I", 3)
    assert message.garbage_args(9) == head + struct.pack(">I", 4)
    assert message.system_err(9) == head + struct.pack(">I", 5)
    assert message.rpc_mismatch(9) == struct.pack(">IIIIII", 9, 1, 1, 0, 2, 2)
    assert message.auth_error(9, AuthStat.AUTH_BADCRED) == struct.pack(">IIIII", 9, 1, 1, 1, 1)


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (message.success(3, b"abcd"), {"accept_stat": AcceptStat.SUCCESS, "results": b"abcd"}),
        (
            message.prog_mismatch(3, 1, 2),
            {"accept_stat": AcceptStat.PROG_MISMATCH, "mismatch": (1, 2)},
        ),
        (message.garbage_args(3), {"accept_stat": AcceptStat.GARBAGE_ARGS}),
        (message.rpc_mismatch(3), {"reject_stat": RejectStat.RPC_MISMATCH, "mismatch": (2, 2)}),
        (
            message.auth_error(3, AuthStat.AUTH_REJECTEDCRED),
            {"reject_stat": RejectStat.AUTH_ERROR, "auth_stat": AuthStat.AUTH_REJECTEDCRED},
        ),
    ],
)
def test_a_client_reads_every_kind_of_reply(reply: bytes, expected: dict[str, object]) -> None:
    parsed = message.parse_reply(reply)
    assert parsed.xid == 3
    for name, value in expected.items():
        assert getattr(parsed, name) == value
    assert parsed.ok == (expected.get("accept_stat") is AcceptStat.SUCCESS)


def _call_with(cred: OpaqueAuth, *, rpcvers: int = 2) -> bytes:
    raw = message.encode_call(77, PROG, VERS, 1, b"", cred)
    return raw[:8] + struct.pack(">I", rpcvers) + raw[12:]


@pytest.mark.parametrize(
    ("cred", "status"),
    [
        (OpaqueAuth(AuthFlavor.AUTH_SYS, _sys_body(b"h" * 256, 0)), AuthStat.AUTH_BADCRED),
        (OpaqueAuth(AuthFlavor.AUTH_SYS, _sys_body(b"host", 17)), AuthStat.AUTH_BADCRED),
        (OpaqueAuth(AuthFlavor.AUTH_SYS, _sys_body(b"host", 2)[:-3]), AuthStat.AUTH_BADCRED),
        (
            OpaqueAuth(AuthFlavor.AUTH_SYS, _sys_body(b"host", 1, extra=b"xxxx")),
            AuthStat.AUTH_BADCRED,
        ),
        (OpaqueAuth(AuthFlavor.AUTH_DH, b""), AuthStat.AUTH_REJECTEDCRED),
        (OpaqueAuth(99, b""), AuthStat.AUTH_REJECTEDCRED),
    ],
)
def test_a_bad_credential_is_refused_with_the_status_libtirpc_gives(
    cred: OpaqueAuth, status: AuthStat
) -> None:
    with pytest.raises(CallRejected) as refused:
        message.parse_call(_call_with(cred))
    assert refused.value.reply == message.auth_error(77, status)


def test_an_auth_body_over_400_bytes_and_a_cut_header_are_bad_credentials() -> None:
    raw = message.encode_call(5, PROG, VERS, 0)
    over = raw[:24] + struct.pack(">II", 1, 404) + bytes(404) + raw[32:]
    for data in (over, raw[:30], raw[:20]):
        with pytest.raises(CallRejected) as refused:
            message.parse_call(data)
        assert refused.value.reply == message.auth_error(5, AuthStat.AUTH_BADCRED)


def test_another_rpc_version_gets_rpc_mismatch_and_a_reply_is_no_call() -> None:
    with pytest.raises(CallRejected) as refused:
        message.parse_call(_call_with(message.AUTH_NONE, rpcvers=3))
    assert refused.value.reply == message.rpc_mismatch(77)
    with pytest.raises(NotACall):
        message.parse_call(message.success(1))
    with pytest.raises(NotACall):
        message.parse_call(b"\0\0\0")


def test_an_auth_sys_credential_that_cannot_be_sent_is_refused_when_made() -> None:
    with pytest.raises(xdr.XdrError):
        AuthSys(1, "h" * 256, 0, 0).encode()
    with pytest.raises(xdr.XdrError):
        AuthSys(1, "h", 0, 0, list(range(17))).encode()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_are_a_call_or_refused_or_dropped(data: bytes) -> None:
    try:
        message.parse_call(data)
    except (NotACall, CallRejected):
        pass
    try:
        message.parse_reply(data)
    except NotACall:
        pass
