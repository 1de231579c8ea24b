"""What the asyncio peers share: a Protocol's stream server, a datagram endpoint, the
wait for SIGTERM, and the choice of loop. Apart from ``_peer.py``, which the other frameworks' peers
import, so that they need not import asyncio and uvloop.
"""

import asyncio
import signal
from argparse import Namespace
from collections.abc import Callable, Coroutine
from typing import Any

import _peer
import uvloop


async def open_stream_server(
    factory: Callable[[], asyncio.BaseProtocol], args: Namespace
) -> tuple[asyncio.Server, int | None]:
    """The TCP or Unix listener for ``factory``'s protocol, and its bound port (TCP)."""
    loop = asyncio.get_running_loop()
    if args.proto == "unix":
        return await loop.create_unix_server(factory, args.path, backlog=_peer.BACKLOG), None
    server = await loop.create_server(factory, args.host, args.port, backlog=_peer.BACKLOG)
    return server, server.sockets[0].getsockname()[1]


async def until_sigterm(args: Namespace, port: int | None) -> None:
    """Say READY, then wait for SIGTERM.

    The caller then closes its listener and returns. Not `async with server`: its
    wait_closed() waits for every client to hang up (Python 3.12.1+), which a
    benchmark's persistent clients never do.
    """
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    _peer.ready(args, port)
    await stop.wait()


async def serve_datagrams(factory: Callable[[], asyncio.DatagramProtocol], args: Namespace) -> None:
    """Serve ``factory``'s datagram protocol on the UDP address of ``args`` until SIGTERM."""
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        factory, local_addr=(args.host, args.port)
    )
    await until_sigterm(args, transport.get_extra_info("sockname")[1])
    transport.close()


def run(variant: str, main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` on uvloop's loop (variant "uvloop") or asyncio's."""
    if variant == "uvloop":
        uvloop.run(main)
    else:
        asyncio.run(main)
