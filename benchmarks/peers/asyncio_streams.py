"""Echo server on asyncio streams: start_server / start_unix_server, reader.read -> writer.write.

Variants: ``asyncio`` (the default event loop) and ``uvloop`` (the same code on uvloop's loop).
UDP is unsupported: streams have no datagrams (see asyncio_protocol.py for UDP).
"""

import asyncio
from argparse import Namespace

import _aio_peer
import _peer


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(_peer.BUFSIZE):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass  # the client reset the connection: nobody is left to echo to
    except asyncio.CancelledError:
        # asyncio.run() cancels this task at shutdown. Python 3.11.7 (the venv's) then
        # logs a traceback per connection (CPython gh-113538, fixed in later releases);
        # ending quietly keeps stderr clean. The task ends here, so nothing is lost.
        pass
    finally:
        writer.close()


async def serve(args: Namespace) -> None:
    # No TCP_NODELAY here: asyncio and uvloop set it on every TCP transport themselves.
    if args.proto == "unix":
        server = await asyncio.start_unix_server(echo, args.path, backlog=_peer.BACKLOG)
        port = None
    else:
        server = await asyncio.start_server(echo, args.host, args.port, backlog=_peer.BACKLOG)
        port = server.sockets[0].getsockname()[1]

    await _aio_peer.until_sigterm(args, port)
    # asyncio.run() cancels the connection tasks once this returns.
    server.close()


def main() -> None:
    args = _peer.setup("asyncio_streams", ["asyncio", "uvloop"])
    if args.proto == "udp":
        raise _peer.unsupported("asyncio streams are stream-only; asyncio_protocol.py serves UDP")
    _aio_peer.run(args.variant, serve(args))


if __name__ == "__main__":
    main()
