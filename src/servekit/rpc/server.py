"""Serving an RPC program: the handlers that carry calls and replies on each transport.

An ``rpc.Program`` is served like any handler (``make_server(address, PROGRAM)``,
``servekit serve module:PROGRAM``): make_server asks ``program.handler_for(...)`` for
the handler class of the transport and the model, one of these:

- ``RpcStreamHandler``: a TCP or Unix stream connection, records (RFC 5531 section
  11) in and out, several calls answered at once, each as it finishes (matched by
  xid, as RFC 5531 allows; ``rpc_max_calls_in_flight`` on the server, 16 by
  default), or in turn on the sync model (see _stream.py). The stream limits hold:
  ``idle_timeout`` between calls, ``read_timeout`` for a record once it has begun,
  and the record limits of ``rpc.record`` (``rpc_max_record_size`` on the server,
  1 MiB by default).
- ``RpcDatagramHandler``: one call per datagram, one reply; a retransmitted call
  is answered from the server's duplicate-request cache, not run again
  (``rpc_reply_cache`` replies on the server, 1,024 by default; 0 turns it off;
  see replycache.py).
- ``AsyncRpcStreamHandler``, ``AsyncRpcDatagramHandler``: the same on the async
  engine, where procedures may be ``async def``; a connection's ``async def`` calls
  run as they come, up to ``rpc_max_calls_in_flight`` at once.

Every call, on every transport, is answered by ``Program.answer`` (see program.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from typing import TYPE_CHECKING, Any, ClassVar

from servekit.aio.handlers import AsyncDatagramRequestHandler, AsyncStreamRequestHandler
from servekit.handlers import BaseRequestHandler, StreamRequestHandler
from servekit.rpc import rpcbind
from servekit.rpc._stream import (
    CHUNK,
    RecordLimitExceeded,
    StreamCalls,
    answered,
    max_calls,
    max_record_size,
    record_failed,
)
from servekit.rpc.record import CLOSED, NEED_DATA, RecordError, RecordReader, encode_record
from servekit.rpc.replycache import DEFAULT_SIZE, ReplyCache

if TYPE_CHECKING:
    from servekit.rpc.program import Program

__all__ = [
    "AsyncRpcDatagramHandler",
    "AsyncRpcStreamHandler",
    "RecordLimitExceeded",
    "RpcDatagramHandler",
    "RpcRegistration",
    "RpcStreamHandler",
    "handler_class",
    "rpcbind_places",
    "server_class",
]

logger = logging.getLogger(__name__)


_CACHE_LOCK = threading.Lock()


def _cache(server: Any) -> ReplyCache | None:
    """The server's duplicate-request cache (made when first needed), or None with
    ``rpc_reply_cache = 0`` on the server."""
    cache: ReplyCache | None = getattr(server, "_rpc_reply_cache", None)
    if cache is None:
        size = getattr(server, "rpc_reply_cache", DEFAULT_SIZE)
        if not size:
            return None
        with _CACHE_LOCK:
            cache = getattr(server, "_rpc_reply_cache", None)
            if cache is None:
                cache = ReplyCache(size)
                server._rpc_reply_cache = cache
    return cache


class RpcStreamHandler(StreamRequestHandler):
    """Calls on a stream connection, one record each, up to ``rpc_max_calls_in_flight``
    (on the server; 16 by default) answered at once, or in turn (see _stream.py)."""

    program: ClassVar[Program]
    #: True: calls answered in turn whatever the server says (the sync model).
    in_turn: ClassVar[bool] = False

    def handle(self) -> None:
        StreamCalls(self, 1 if self.in_turn else max_calls(self.server)).serve()


class RpcDatagramHandler(BaseRequestHandler):
    """One call in a datagram, one reply in a datagram."""

    program: ClassVar[Program]

    def handle(self) -> None:
        data, sock = self.request
        reply = self.program.answer(data, self.client_address, self.server, _cache(self.server))
        if reply is not None:
            sent = sock.sendto(reply, self.client_address)
            self.server._counters.sent(sent)
            if self.server._access is not None:  # the connection log's bytes out
                self.server._access.sent(self.request, sent)
            answered(self.server)


class AsyncRpcStreamHandler(AsyncStreamRequestHandler):
    """Calls on a stream connection on the async engine, answered as they finish:
    an ``async def`` procedure's call runs as a task of its own, up to
    ``rpc_max_calls_in_flight`` (on the server; 16 by default) at once, past
    which the next record waits until one finishes. A connection with calls
    running is not idle."""

    program: ClassVar[Program]

    async def handle(self) -> None:
        reader = RecordReader(max_record_size=max_record_size(self.server))
        answer = self.program.answer
        limit = max_calls(self.server)
        running: set[asyncio.Task[None]] = set()
        deadline: float | None = None
        try:
            while True:
                try:
                    record = reader.next_record()
                except RecordError as exc:
                    record_failed(self, exc)
                    return
                if record is CLOSED:
                    return
                if record is NEED_DATA:
                    # A record begun must be whole within read_timeout of its first byte.
                    if deadline is None and reader.buffered:
                        deadline = self.read_deadline()
                    reader.receive_data(await self.read_within(CHUNK, deadline))
                    continue
                deadline = None
                reply = answer(record, self.client_address, self.server)
                if isinstance(reply, bytes):
                    self._send(reply)
                    await self.drain()
                elif reply is not None:
                    if len(running) >= limit:
                        await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                    self.work_started()
                    task = asyncio.ensure_future(self._answer_later(reply))
                    running.add(task)
                    task.add_done_callback(running.discard)
        finally:
            if running:
                await asyncio.wait(running)

    async def _answer_later(self, reply: Any) -> None:
        try:
            data = await reply
        finally:
            self.work_finished()
        if not self.transport.is_closing():
            self._send(data)

    def _send(self, reply: bytes) -> None:
        # One write: a write per piece would be a send per piece (a header alone
        # in a segment), where joining them is one copy of the reply.
        self.write(encode_record(reply))
        answered(self.server)


class AsyncRpcDatagramHandler(AsyncDatagramRequestHandler):
    """One call in a datagram on the async engine."""

    program: ClassVar[Program]

    async def handle(self) -> None:
        cache = _cache(self.server)
        reply = self.program.answer(self.packet, self.client_address, self.server, cache)
        if reply is not None and not isinstance(reply, bytes):
            reply = await reply
        if reply is not None:
            self.send(reply)
            answered(self.server)


def handler_class(program: Program, transport: str, concurrency: str) -> type[Any]:
    """The handler class that serves ``program`` on ``transport`` ("tcp", "udp",
    "unix", "unix-dgram") under ``concurrency``; TypeError if it cannot."""
    stream = transport in ("tcp", "unix")
    base: type[Any]
    if concurrency == "async":
        base = AsyncRpcStreamHandler if stream else AsyncRpcDatagramHandler
    else:
        asynchronous = [
            f"{version.__name__}.{proc.name}"
            for version in program.versions.values()
            for proc in version.procedures().values()
            if proc.is_async
        ]
        if asynchronous:
            raise TypeError(
                f"{program.name} has async def procedures ({', '.join(asynchronous)}): "
                "serve it with concurrency='async' (--concurrency async)"
            )
        base = RpcStreamHandler if stream else RpcDatagramHandler
    namespace: dict[str, Any] = {"program": program}
    if base is RpcStreamHandler and concurrency == "sync":
        namespace["in_turn"] = True  # the model serves one thing at a time
    return type(f"{program.name}{base.__name__}", (base,), namespace)


class RpcRegistration:
    """Put before a socket server class: it registers ``program``'s versions with the
    host's rpcbind when it starts listening, and unregisters them when it closes
    (in the process that registered them). ``rpc_register = False`` turns it off.

    rpcbind is asked at ``SERVEKIT_RPCBIND_SOCKET`` (default unix:/run/rpcbind.sock,
    versions 4 and 3) and then ``SERVEKIT_RPCBIND_PORTMAP`` (default
    tcp://127.0.0.1:111, the portmapper); without one, a warning, and the server
    serves on.
    """

    program: Program
    rpc_register = True
    #: False in a prefork worker: the others serve on after it, and the supervisor
    #: unregisters the sockets' programs when the service stops.
    rpc_unregister_at_close = True
    _registered: tuple[int, list[tuple[int, int, str]]] | None = None

    def server_activate(self) -> None:
        super().server_activate()  # type: ignore[misc]
        self.register_with_rpcbind()

    def register_with_rpcbind(self) -> None:
        """Register every version (UNSET, then SET), unless ``rpc_register`` is False.
        Called when the socket starts listening; by make_server for a socket that
        came listening (fd://, systemd)."""
        if self.rpc_register:
            self._register()

    def server_close(self) -> None:
        registered, self._registered = self._registered, None
        if registered is not None and not self.rpc_unregister_at_close:
            registered = None
        if registered is not None and registered[0] == os.getpid():
            local, portmap = rpcbind_places()
            for prog, vers, netid in registered[1]:
                rpcbind.unregister(prog, vers, netid, local=local, portmap=portmap)
        super().server_close()  # type: ignore[misc]

    def _register(self) -> None:
        sock = self.socket  # type: ignore[attr-defined]
        netid = rpcbind.netid_of(sock.family, sock.type)
        uaddr = rpcbind.universal_address(sock.family, sock.getsockname())
        local, portmap = rpcbind_places()
        done = []
        for vers in sorted(self.program.versions):
            if rpcbind.register(
                self.program.number, vers, netid, uaddr, local=local, portmap=portmap
            ):
                done.append((self.program.number, vers, netid))
        if done:
            logger.info(
                "%s: registered program %d version(s) %s over %s at %s with rpcbind",
                self, self.program.number, ", ".join(str(v) for _, v, _ in done), netid, uaddr,
            )  # fmt: skip
        self._registered = (os.getpid(), done)


def rpcbind_places() -> tuple[str, str]:
    """Where rpcbind is: its local socket, and the portmapper (the environment's
    SERVEKIT_RPCBIND_SOCKET and SERVEKIT_RPCBIND_PORTMAP, or the defaults)."""
    return (
        os.environ.get("SERVEKIT_RPCBIND_SOCKET", rpcbind.DEFAULT_SOCKET),
        os.environ.get("SERVEKIT_RPCBIND_PORTMAP", rpcbind.DEFAULT_PORTMAP),
    )


_SERVER_CLASSES: dict[type[Any], type[Any]] = {}


def server_class(base: type[Any]) -> type[Any]:
    """``base`` (a socket server class of some model) with RpcRegistration before it."""
    made = _SERVER_CLASSES.get(base)
    if made is None:
        made = type("Rpc" + base.__name__, (RpcRegistration, base), {"__module__": __name__})
        _SERVER_CLASSES[base] = made
    return made
