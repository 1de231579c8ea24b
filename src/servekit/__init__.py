"""servekit: define network servers the socketserver way, production grade.

Submodules with more: ``servekit.tls`` (server contexts), ``servekit.proxy``
(the PROXY protocol, sans-IO), ``servekit.activation`` (systemd sockets),
``servekit.limits``, ``servekit.addresses``, and ``servekit.aio``, the
asyncio engine.

``import servekit as socketserver`` works: every public name of the
standard library's socketserver (Python 3.11-3.13) is here with the same
hooks and defaults, with its known faults fixed (``shutdown()`` wakes the
loop at once, errors go to ``logging``, ``accept()`` backs off when out of
descriptors, oversized datagrams are reported). ``make_server`` builds a
server from a listen address with production defaults, its options checked
in one ``ServerConfig``.
"""

from __future__ import annotations

import os
import socket

from servekit import aio as aio  # the asyncio engine, as servekit.aio
from servekit.addresses import ListenAddress, parse_address
from servekit.concurrency import (
    ThreadingMixIn,
    ThreadingTCPServer,
    ThreadingUDPServer,
    ThreadPoolMixIn,
    ThreadPoolTCPServer,
    ThreadPoolUDPServer,
)
from servekit.core import BaseServer
from servekit.errors import IdleTimeout, LimitExceeded, LineTooLong, ReadTimeout, WriteBufferFull
from servekit.factory import make_server, make_source_server, socket_type_of, with_model
from servekit.handlers import BaseRequestHandler, DatagramRequestHandler, StreamRequestHandler
from servekit.options import ServerConfig
from servekit.sockets import TCPServer, UDPServer
from servekit.stats import StatsSnapshot

__version__ = "0.1.0"

__all__ = [
    "BaseRequestHandler",
    "BaseServer",
    "DatagramRequestHandler",
    "IdleTimeout",
    "LimitExceeded",
    "LineTooLong",
    "ListenAddress",
    "ReadTimeout",
    "ServerConfig",
    "StatsSnapshot",
    "StreamRequestHandler",
    "TCPServer",
    "ThreadPoolMixIn",
    "ThreadPoolTCPServer",
    "ThreadPoolUDPServer",
    "ThreadingMixIn",
    "ThreadingTCPServer",
    "ThreadingUDPServer",
    "UDPServer",
    "WriteBufferFull",
    "make_server",
    "make_source_server",
    "parse_address",
    "socket_type_of",
    "with_model",
]

if hasattr(os, "fork"):
    from servekit.concurrency import ForkingMixIn, ForkingTCPServer, ForkingUDPServer

    __all__ += ["ForkingMixIn", "ForkingTCPServer", "ForkingUDPServer"]

if hasattr(socket, "AF_UNIX"):
    from servekit.concurrency import (
        ThreadingUnixDatagramServer,
        ThreadingUnixStreamServer,
        ThreadPoolUnixDatagramServer,
        ThreadPoolUnixStreamServer,
    )
    from servekit.sockets import UnixDatagramServer, UnixStreamServer

    __all__ += [
        "ThreadPoolUnixDatagramServer",
        "ThreadPoolUnixStreamServer",
        "ThreadingUnixDatagramServer",
        "ThreadingUnixStreamServer",
        "UnixDatagramServer",
        "UnixStreamServer",
    ]
    if hasattr(os, "fork"):
        from servekit.concurrency import ForkingUnixDatagramServer, ForkingUnixStreamServer

        __all__ += ["ForkingUnixDatagramServer", "ForkingUnixStreamServer"]
