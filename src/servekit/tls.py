"""TLS for servekit servers: building a server context, and where the handshake runs.

The usual way to add TLS to a socketserver (wrap the listening socket) runs
every handshake inside ``accept()``, in the serving loop: one client that
connects and says nothing freezes the server. servekit accepts plain
connections and runs the handshake in the worker that serves the connection,
bounded by ``handshake_timeout``; a silent client costs one worker for that
long and delays nobody. A server whose ``socket`` a user wrapped with
``SSLContext.wrap_socket`` gets the same treatment: it accepts through the
plain socket underneath and uses the wrapped socket's context.
"""

from __future__ import annotations

import ssl
from os import PathLike

__all__ = ["server_context"]

StrPath = str | PathLike[str]


def server_context(
    certfile: StrPath, keyfile: StrPath | None = None, cafile: StrPath | None = None
) -> ssl.SSLContext:
    """A server-side context with the system's secure defaults.

    ``certfile`` (and ``keyfile``, if the key is not in it) is the server's
    certificate chain. With ``cafile``, clients must present a certificate
    signed by one of its authorities (mutual TLS); the handler finds it with
    ``self.request.getpeercert()``.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certfile, keyfile)
    if cafile is not None:
        context.load_verify_locations(cafile)
        context.verify_mode = ssl.CERT_REQUIRED
    return context
