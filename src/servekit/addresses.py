"""Listen addresses: the strings ``make_server`` and ``servekit serve`` accept.

==========================  ==============================================
``HOST:PORT``               TCP (``tcp://HOST:PORT`` says the same)
``udp://HOST:PORT``         UDP
``[::]:PORT``               IPv6 in brackets; ``[::]`` is dual-stack
``unix:/path``              Unix stream socket
``unix-dgram:/path``        Unix datagram socket
``unix:@name``              Linux abstract namespace (no file)
``fd://N``                  an inherited, already bound socket
``systemd``                 the one socket systemd passed (``LISTEN_FDS``)
``systemd:NAME``            the socket systemd passed as ``NAME``
                            (``FileDescriptorName=``)
==========================  ==============================================

An empty HOST (``:8000``) means every IPv4 interface; a host name is
resolved when the server is made. Port 0 picks a free port. Parsing is pure:
no sockets, no name lookups.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["ACCEPTED_FORMS", "ListenAddress", "format_address", "parse_address"]

Transport = Literal["tcp", "udp", "unix", "unix-dgram", "fd", "systemd"]

ACCEPTED_FORMS = (
    "HOST:PORT, tcp://HOST:PORT, udp://HOST:PORT, [IPV6]:PORT, "
    "unix:/path, unix-dgram:/path, unix:@name, fd://N, systemd, systemd:NAME"
)

_SCHEMES: dict[str, Transport] = {
    "tcp://": "tcp",
    "udp://": "udp",
    "unix:": "unix",
    "unix-dgram:": "unix-dgram",
    "fd://": "fd",
}


@dataclass(frozen=True)
class ListenAddress:
    """A parsed listen address.

    ``family`` is None for a host name (resolved when binding) and for
    ``fd://`` (read from the socket). ``address`` is what ``bind()`` takes:
    ``(host, port)`` for IP, a path or an abstract name for Unix; for
    ``fd://`` it is the descriptor number; for ``systemd`` the socket's name
    or None.
    """

    text: str
    transport: Transport
    family: int | None
    address: Any

    @property
    def socket_type(self) -> int | None:
        """SOCK_STREAM or SOCK_DGRAM; None for ``fd://`` until the socket is inspected."""
        if self.transport in ("tcp", "unix"):
            return socket.SOCK_STREAM
        if self.transport in ("udp", "unix-dgram"):
            return socket.SOCK_DGRAM
        return None


def _bad(text: str, why: str) -> ValueError:
    return ValueError(f"bad listen address {text!r}: {why}; accepted forms: {ACCEPTED_FORMS}")


def parse_address(text: str) -> ListenAddress:
    """Parse a listen address; raise ValueError naming the bad part and the accepted forms."""
    if not isinstance(text, str):
        raise TypeError(f"a listen address is a str, not {type(text).__name__}")
    transport: Transport
    for prefix, scheme_transport in _SCHEMES.items():
        if text.startswith(prefix):
            transport, rest = scheme_transport, text[len(prefix) :]
            break
    else:
        if "://" in text:
            scheme = text.split("://", 1)[0]
            raise _bad(text, f"unknown scheme {scheme + '://'!r}")
        if text == "systemd":
            return ListenAddress(text, "systemd", None, None)
        if text.startswith("systemd:"):
            return ListenAddress(text, "systemd", None, _parse_fd_name(text, text[8:]))
        transport, rest = "tcp", text
    if transport == "fd":
        return ListenAddress(text, "fd", None, _parse_fd(text, rest))
    if transport in ("unix", "unix-dgram"):
        return ListenAddress(text, transport, socket.AF_UNIX, _parse_unix(text, rest))
    family, host, port = _parse_host_port(text, rest)
    return ListenAddress(text, transport, family, (host, port))


def _parse_fd(text: str, rest: str) -> int:
    if not rest.isdigit() or not rest.isascii():
        raise _bad(text, f"the descriptor {rest!r} is not a non-negative integer")
    return int(rest)


def _parse_fd_name(text: str, name: str) -> str:
    # systemd's rule for FileDescriptorName=: printable ASCII, no colon, at most 255.
    if not name or len(name) > 255 or not all(" " < c <= "~" for c in name):
        raise _bad(text, f"{name!r} is not a systemd socket name (FileDescriptorName=)")
    return name


def _parse_unix(text: str, rest: str) -> str:
    if not rest:
        raise _bad(text, "the socket path is empty")
    if "\0" in rest:
        raise _bad(text, "the socket path contains a NUL byte")
    if rest.startswith("@"):
        if not sys.platform.startswith("linux"):
            raise _bad(text, "abstract-namespace names (@name) exist only on Linux")
        if len(rest) == 1:
            raise _bad(text, "the abstract name after '@' is empty")
        return "\0" + rest[1:]
    return rest


def _parse_host_port(text: str, rest: str) -> tuple[int | None, str, int]:
    if rest.startswith("["):
        host, sep, tail = rest[1:].partition("]")
        if not sep:
            raise _bad(text, "the '[' of an IPv6 address has no closing ']'")
        if not tail.startswith(":"):
            raise _bad(text, "the port is missing after ']' (write [::1]:8000)")
        try:
            ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            raise _bad(text, f"{host!r} is not an IPv6 address") from None
        return socket.AF_INET6, host, _parse_port(text, tail[1:])
    host, sep, port_text = rest.rpartition(":")
    if not sep:
        raise _bad(text, "the port is missing (write HOST:PORT, for example 127.0.0.1:8000)")
    if ":" in host:
        raise _bad(text, "an IPv6 address needs brackets (write [::1]:8000)")
    port = _parse_port(text, port_text)
    if not host:
        return socket.AF_INET, "0.0.0.0", port
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        if not _is_hostname(host):
            raise _bad(text, f"{host!r} is neither an IP address nor a host name") from None
        return None, host, port
    return socket.AF_INET, host, port


def _is_hostname(host: str) -> bool:
    labels = host.rstrip(".").split(".")
    return len(host) <= 253 and all(
        0 < len(label) <= 63
        and label.isascii()
        and label.replace("-", "").isalnum()
        and not label.startswith("-")
        for label in labels
    )


def _parse_port(text: str, port_text: str) -> int:
    if not port_text.isdigit() or not port_text.isascii():
        raise _bad(text, f"the port {port_text!r} is not a number")
    port = int(port_text)
    if port > 65535:
        raise _bad(text, f"the port {port} is out of range 0-65535")
    return port


def format_address(family: int, socket_type: int, address: Any) -> str:
    """Render a bound address in the form ``parse_address`` reads back."""
    if family == getattr(socket, "AF_UNIX", None):
        scheme = "unix:" if socket_type == socket.SOCK_STREAM else "unix-dgram:"
        path = address.decode(errors="replace") if isinstance(address, bytes) else str(address)
        if path.startswith("\0"):
            return scheme + "@" + path[1:]
        return scheme + path
    scheme = "tcp://" if socket_type == socket.SOCK_STREAM else "udp://"
    host, port = address[0], address[1]
    if family == socket.AF_INET6:
        return f"{scheme}[{host}]:{port}"
    return f"{scheme}{host}:{port}"
