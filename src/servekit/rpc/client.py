"""Calling an ONC RPC program: a client per program version, sync and async.

    from examples.rpc.demo import DEMO_V1

    with rpc.Client("tcp://127.0.0.1:5000", DEMO_V1) as client:
        total = client.call(DEMO_V1.DEMO_ADD, 2, 3)      # 5, typed as the procedure is

    async with rpc.AsyncClient("udp://127.0.0.1:5000", DEMO_V1) as client:
        text = await client.call(DEMO_V1.DEMO_ECHO, "hi")

``call`` takes the procedure as the version class declares it, so a type checker
checks its arguments and its result. Over UDP a call is sent again, at growing
intervals, until a reply with its xid comes from the server's address or
``timeout`` passes; over TCP one connection carries every call (the async client
runs several at once, matched by xid). A refusal raises the ``RpcError`` subclass
of its status; ``RpcTimeout`` says no reply came in time.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import time
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, Self, TypeVar

from servekit.addresses import parse_address
from servekit.rpc import message, xdr
from servekit.rpc.message import AcceptStat, AuthStat, RejectStat
from servekit.rpc.record import CLOSED, NEED_DATA, RecordReader, encode_record

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    from servekit.rpc.message import AuthSys
    from servekit.rpc.program import Procedure, Version

__all__ = [
    "AsyncClient",
    "AuthError",
    "Client",
    "GarbageArgs",
    "ProcUnavail",
    "ProgMismatch",
    "ProgUnavail",
    "RpcError",
    "RpcMismatch",
    "RpcTimeout",
    "SystemErr",
]

P = ParamSpec("P")
R = TypeVar("R")

#: A UDP call is sent again after this long without a reply, then after twice
#: that, and so on up to RETRANSMIT_MAX, until the call's timeout.
RETRANSMIT_FIRST = 0.5
RETRANSMIT_MAX = 4.0
#: The largest reply a UDP client takes (the largest UDP payload).
MAX_DATAGRAM = 65535


class RpcError(Exception):
    """The server answered, but not with the procedure's result."""


class ProgUnavail(RpcError):
    """The server does not serve the program."""


class ProgMismatch(RpcError):
    """The server serves the program, in versions ``low`` to ``high`` only."""

    def __init__(self, message_: str, low: int, high: int) -> None:
        super().__init__(message_)
        self.low, self.high = low, high


class ProcUnavail(RpcError):
    """The program has no such procedure."""


class GarbageArgs(RpcError):
    """The server could not decode the arguments."""


class SystemErr(RpcError):
    """The procedure failed on the server."""


class RpcMismatch(RpcError):
    """The server speaks RPC versions ``low`` to ``high``, not 2."""

    def __init__(self, message_: str, low: int, high: int) -> None:
        super().__init__(message_)
        self.low, self.high = low, high


class AuthError(RpcError):
    """The server refused the credential: ``stat`` says why."""

    def __init__(self, message_: str, stat: AuthStat) -> None:
        super().__init__(message_)
        self.stat = stat


class RpcTimeout(RpcError, TimeoutError):
    """No reply came within the call's timeout."""


def _raise_for(reply: message.Reply, what: str) -> None:
    status = reply.accept_stat
    if status is AcceptStat.SUCCESS:
        return
    if status is AcceptStat.PROG_UNAVAIL:
        raise ProgUnavail(f"{what}: the server does not serve this program")
    if status is AcceptStat.PROG_MISMATCH:
        low, high = reply.mismatch or (0, 0)
        raise ProgMismatch(f"{what}: the server serves versions {low} to {high}", low, high)
    if status is AcceptStat.PROC_UNAVAIL:
        raise ProcUnavail(f"{what}: no such procedure")
    if status is AcceptStat.GARBAGE_ARGS:
        raise GarbageArgs(f"{what}: the server could not decode the arguments")
    if status is AcceptStat.SYSTEM_ERR:
        raise SystemErr(f"{what}: the procedure failed on the server")
    if reply.reject_stat is RejectStat.RPC_MISMATCH:
        low, high = reply.mismatch or (0, 0)
        raise RpcMismatch(f"{what}: the server speaks RPC {low} to {high}", low, high)
    stat = reply.auth_stat or AuthStat.AUTH_FAILED
    raise AuthError(f"{what}: credential refused ({stat.name})", stat)


class _Calls:
    """What both clients share: the version's procedures, xids, the credential."""

    def __init__(self, version: type[Version], credential: AuthSys | None, timeout: float) -> None:
        self.version = version
        self.procedures = {p.name: p for p in version.procedures().values()}
        self.cred = message.AUTH_NONE if credential is None else credential.encode()
        self.timeout = timeout
        self._xids = itertools.count(int.from_bytes(os.urandom(4), "big") >> 1)

    def procedure(self, method: Callable[..., Any]) -> Procedure:
        name = getattr(method, "__name__", method)
        found = self.procedures.get(str(name))
        if found is None:
            raise TypeError(f"{name!r} is no procedure of {self.version.__name__}")
        return found

    def request(self, proc: Procedure, args: tuple[Any, ...]) -> tuple[int, bytes]:
        if len(args) != len(proc.args):
            raise TypeError(f"{proc.name} takes {len(proc.args)} arguments, not {len(args)}")
        body = b"".join(
            xdr.encode(kind, value) for kind, value in zip(proc.args, args, strict=True)
        )
        xid = next(self._xids) & 0xFFFFFFFF
        data = message.encode_call(
            xid, self.version.program, self.version.version, proc.number, body, self.cred
        )
        return xid, data

    def result(self, proc: Procedure, reply: message.Reply) -> Any:
        _raise_for(reply, f"{self.version.__name__}.{proc.name}")
        try:
            return xdr.decode(proc.result, reply.results)
        except xdr.XdrError as exc:
            raise RpcError(f"{proc.name}: the result does not decode: {exc}") from None


def _target(address: str) -> tuple[int, int, Any]:
    """(family, socket type, address to connect to) for "tcp://H:P", "udp://H:P", "unix:/p"."""
    spec = parse_address(address)
    if spec.transport not in ("tcp", "udp", "unix", "unix-dgram"):
        raise ValueError(f"{address}: a client connects to tcp://, udp:// or unix: addresses")
    kind = socket.SOCK_STREAM if spec.transport in ("tcp", "unix") else socket.SOCK_DGRAM
    family = spec.family
    target = spec.address
    if family is None:  # a host name
        info = socket.getaddrinfo(target[0], target[1], socket.AF_UNSPEC, kind)
        family, _, _, _, target = info[0]
    return family, kind, target


class Client(_Calls):
    """A blocking client of one program ``version`` at ``address``."""

    def __init__(
        self,
        address: str,
        version: type[Version],
        *,
        credential: AuthSys | None = None,
        timeout: float = 25.0,
    ) -> None:
        super().__init__(version, credential, timeout)
        family, self._kind, self._peer = _target(address)
        self._sock = socket.socket(family, self._kind)
        try:
            if family == socket.AF_UNIX and self._kind == socket.SOCK_DGRAM:
                self._sock.bind("")  # an address of its own, for the replies
            self._sock.settimeout(timeout)
            self._sock.connect(self._peer)
        except BaseException:
            self._sock.close()
            raise
        self._reader = RecordReader()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def call(self, procedure: Callable[Concatenate[Any, P], R], *args: P.args, **_: P.kwargs) -> R:
        """Call ``procedure`` (as its version declares it: ``DEMO_V1.DEMO_ADD``) with ``args``."""
        proc = self.procedure(procedure)
        xid, data = self.request(proc, args)
        reply = self._exchange(xid, data)
        return self.result(proc, reply)  # type: ignore[no-any-return]

    def _exchange(self, xid: int, data: bytes) -> message.Reply:
        deadline = time.monotonic() + self.timeout
        if self._kind == socket.SOCK_STREAM:
            self._sock.sendall(encode_record(data))
            return self._stream_reply(xid, deadline)
        return self._datagram_reply(xid, data, deadline)

    def _stream_reply(self, xid: int, deadline: float) -> message.Reply:
        while True:
            record = self._reader.next_record()
            if record is CLOSED:
                raise ConnectionError("the server closed the connection")
            if record is NEED_DATA:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RpcTimeout(f"no reply within {self.timeout}s")
                self._sock.settimeout(left)
                try:
                    self._reader.receive_data(self._sock.recv(65536))
                except TimeoutError:
                    raise RpcTimeout(f"no reply within {self.timeout}s") from None
                continue
            reply = _reply_to(xid, record)
            if reply is not None:
                return reply

    def _datagram_refused(self) -> None:
        """An ICMP error of an earlier send ("port unreachable"): by default the
        retransmission decides; a subclass may end the call instead, by raising."""

    def _datagram_reply(self, xid: int, data: bytes, deadline: float) -> message.Reply:
        wait = RETRANSMIT_FIRST
        while True:
            self._sock.send(data)
            resend_at = min(time.monotonic() + wait, deadline)
            while (left := resend_at - time.monotonic()) > 0:
                self._sock.settimeout(left)
                try:
                    datagram, sender = self._sock.recvfrom(MAX_DATAGRAM)
                except TimeoutError:
                    break
                except ConnectionRefusedError:
                    self._datagram_refused()
                    continue
                if _same_peer(sender, self._peer):
                    reply = _reply_to(xid, datagram)
                    if reply is not None:
                        return reply
            if time.monotonic() >= deadline:
                raise RpcTimeout(f"no reply within {self.timeout}s")
            wait = min(wait * 2, RETRANSMIT_MAX)


def _reply_to(xid: int, data: bytes) -> message.Reply | None:
    """The reply in ``data`` if it answers ``xid`` (a late reply to an earlier,
    timed-out call, or garbage, is dropped)."""
    try:
        reply = message.parse_reply(data)
    except message.NotACall:
        return None
    return reply if reply.xid == xid else None


def _same_peer(sender: Any, peer: Any) -> bool:
    if isinstance(peer, tuple) and isinstance(sender, tuple):
        return bool(sender[:2] == peer[:2])
    return bool(sender == peer) or not sender  # an unnamed Unix peer cannot say


class AsyncClient(_Calls):
    """The asyncio client of one program ``version`` at ``address``: ``async with``,
    or ``await client.open()`` and ``client.close()``. Calls may run at once."""

    def __init__(
        self,
        address: str,
        version: type[Version],
        *,
        credential: AuthSys | None = None,
        timeout: float = 25.0,
    ) -> None:
        super().__init__(version, credential, timeout)
        self._family, self._kind, self._peer = _target(address)
        self._waiting: dict[int, asyncio.Future[message.Reply]] = {}
        self._transport: Any = None
        self._reader_task: asyncio.Task[None] | None = None
        self._stream_writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        if self._kind == socket.SOCK_STREAM:
            sock = socket.socket(self._family, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, self._peer)
            except BaseException:
                sock.close()
                raise
            reader, writer = await asyncio.open_connection(sock=sock)
            self._stream_writer = writer
            self._reader_task = loop.create_task(self._read_records(reader))
        else:
            sock = socket.socket(self._family, socket.SOCK_DGRAM)
            try:
                if self._family == socket.AF_UNIX:
                    sock.bind("")  # an address of its own, for the replies
                sock.setblocking(False)
                sock.connect(self._peer)
                self._transport, _ = await loop.create_datagram_endpoint(
                    lambda: _Datagrams(self), sock=sock
                )
            except BaseException:
                sock.close()
                raise

    def close(self) -> None:
        if self._stream_writer is not None:
            self._stream_writer.close()
        if self._transport is not None:
            self._transport.close()
        if self._reader_task is not None:
            self._reader_task.cancel()
        for waiter in self._waiting.values():
            if not waiter.done():
                waiter.set_exception(ConnectionError("the client closed"))

    def call(
        self, procedure: Callable[Concatenate[Any, P], R], *args: P.args, **_: P.kwargs
    ) -> Coroutine[Any, Any, R]:
        """``await`` it: call ``procedure`` (``DEMO_V1.DEMO_ADD``) with ``args``."""
        return self._call(procedure, args)

    async def _call(self, procedure: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        proc = self.procedure(procedure)
        xid, data = self.request(proc, args)
        waiter = asyncio.get_running_loop().create_future()
        self._waiting[xid] = waiter
        try:
            async with asyncio.timeout(self.timeout):
                if self._stream_writer is not None:
                    self._stream_writer.write(encode_record(data))
                    await self._stream_writer.drain()
                    reply = await waiter
                else:
                    reply = await self._datagram_exchange(data, waiter)
        except TimeoutError:
            raise RpcTimeout(f"no reply within {self.timeout}s") from None
        finally:
            self._waiting.pop(xid, None)
        return self.result(proc, reply)

    async def _datagram_exchange(
        self, data: bytes, waiter: asyncio.Future[message.Reply]
    ) -> message.Reply:
        if self._transport is None:
            raise ConnectionError("the client is not open: await client.open() first")
        wait = RETRANSMIT_FIRST
        while True:
            self._transport.sendto(data)
            done, _ = await asyncio.wait({waiter}, timeout=wait)
            if done:
                return waiter.result()
            wait = min(wait * 2, RETRANSMIT_MAX)

    async def _read_records(self, reader: asyncio.StreamReader) -> None:
        records = RecordReader()
        try:
            while True:
                record = records.next_record()
                if record is CLOSED:
                    break
                if record is NEED_DATA:
                    records.receive_data(await reader.read(65536))
                    continue
                self._deliver(record)
        finally:
            self._fail_all(ConnectionError("the server closed the connection"))

    def _deliver(self, data: bytes) -> None:
        try:
            reply = message.parse_reply(data)
        except message.NotACall:
            return
        waiter = self._waiting.get(reply.xid)
        if waiter is not None and not waiter.done():
            waiter.set_result(reply)

    def _fail_all(self, error: Exception) -> None:
        for waiter in self._waiting.values():
            if not waiter.done():
                waiter.set_exception(error)


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, client: AsyncClient) -> None:
        self.client = client

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if addr is None or _same_peer(addr, self.client._peer):
            self.client._deliver(data)

    def error_received(self, exc: Exception) -> None:
        pass  # an ICMP error of a send: the retransmission decides
