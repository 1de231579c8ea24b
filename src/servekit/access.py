"""The connection log: one line per connection or datagram, when it ends.

The access log of a protocol-agnostic server: who connected (and who was
behind a PROXY header), for how long, how many bytes each way, and how it
ended. Each line is an INFO record of the ``servekit.access`` logger, its
message formatted with a format string over the fields below, and the fields
themselves on the record as ``record.access`` (a dict), for a logging
configuration to route or format as it likes.

It is off unless ``enable(server)`` is called (``servekit serve
--access-log``, or a ``--log-config`` that names the ``servekit.access``
logger); off, each connection pays one attribute test (``server._access is
None``) at each of the points below, nothing more.

Where the request-source contract learns each thing (one place for every
model and both engines; see docs/architecture.md):

- ``request_accepted()``: the start, the client (``opened``);
- the preface (``_open_preface``, the async engine's ``_open_request``): the
  real client, and the connection's new object under TLS (``preface_done``);
- ``verify_request()`` said no: ``refused``;
- ``servekit.limits.report()``: a limit tripped (``limit``), a failed preface;
- ``_report_error()`` and the preface's own ``except``: the handler raised
  (``failed``);
- ``_forget_request()`` / a datagram's ``close_request()``: the end, with
  the bytes the stats read from ``TCP_INFO`` there (``closed``).

The first outcome noted wins: a limit that trips and then raises through the
handler is a limit, not an error. A connection that ends with none noted was
served.
"""

from __future__ import annotations

import logging
import os
import string
import sys
import threading
from datetime import datetime
from time import monotonic
from typing import Any, Final

from servekit.errors import LimitExceeded

__all__ = [
    "DEFAULT_FORMAT",
    "FIELDS",
    "OUTCOMES",
    "PREFACE_LIMITS",
    "AccessLog",
    "check_format",
    "enable",
    "logger",
]

logger = logging.getLogger(__name__)  # "servekit.access"

#: What a line shows unless told otherwise: space-separated, "-" for none,
#: so that awk and cut can read it.
DEFAULT_FORMAT: Final = (
    "{time} {client} {real_client} {transport} {duration_ms:.1f}ms "
    "in={bytes_in} out={bytes_out} {outcome} {limit}"
)

#: The fields a format may name, and what each holds.
FIELDS: Final = {
    "time": "when it ended, local time, ISO 8601 with milliseconds",
    "client": "the peer's address (host:port, a Unix socket's path, or -)",
    "real_client": "the client a PROXY header named, or -",
    "server": "the address the server listens on",
    "transport": "stream or datagram",
    "duration": "seconds from accept (or arrival) to close, a float",
    "duration_ms": "the same in milliseconds",
    "bytes_in": "bytes received (TCP: from TCP_INFO at close; a datagram's size), or -",
    "bytes_out": "bytes sent (TCP: acknowledged by the client; a datagram's reply), or -",
    "outcome": "served, refused, limit, error or preface",
    "limit": "the limit that tripped or the preface's failure (idle_timeout, ...), or -",
    "pid": "the serving process (a prefork worker's own)",
}

#: The limits a failed preface (PROXY header, TLS handshake) counts under
#: (servekit._preface): their outcome is "preface", not "limit".
PREFACE_LIMITS: Final = frozenset({"proxy_protocol", "tls_handshake", "handshake_timeout"})

#: How a connection or datagram can end.
OUTCOMES: Final = ("served", "refused", "limit", "error", "preface")

_SAMPLE: Final[dict[str, Any]] = {
    "time": "2000-01-01T00:00:00.000+00:00", "client": "192.0.2.1:40000",
    "real_client": "-", "server": "0.0.0.0:8000", "transport": "stream", "duration": 0.5,
    "duration_ms": 500.0, "bytes_in": 10, "bytes_out": 20, "outcome": "served",
    "limit": "-", "pid": 1,
}  # fmt: skip


def check_format(text: str) -> str:
    """``text`` if it formats the fields; else ValueError, one line that says why."""
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a format string: {exc}") from None
    for _, name, _, _ in parsed:
        if name is None:
            continue
        if name not in FIELDS:
            raise ValueError(
                f"{text!r}: no field {{{name}}}; the fields are {', '.join(FIELDS)}"
                if name
                else f"{text!r}: name each field ({{client}}, not {{}})"
            )
    try:
        text.format_map(_SAMPLE)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise ValueError(f"{text!r} cannot format the fields: {exc}") from None
    return text


def enable(server: Any, format: str = DEFAULT_FORMAT) -> AccessLog:
    """Log ``server``'s connections (or datagrams) on ``servekit.access`` from now on.

    Call it before serving; ``format`` is checked (ValueError). Returns the recorder,
    also ``server._access``.
    """
    access = AccessLog(server, check_format(format))
    server._access = access
    return access


def _address(address: Any) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host = address[0]
        return f"[{host}]:{address[1]}" if ":" in str(host) else f"{host}:{address[1]}"
    if isinstance(address, bytes):
        address = address.decode(errors="backslashreplace")
    return str(address) if address not in (None, "", b"") else "-"


class _Entry:
    """One connection or datagram on its way: what its line will say."""

    __slots__ = ("client", "datagram", "keys", "limit", "outcome", "real", "sent", "start")

    def __init__(self, client: Any, key: int) -> None:
        self.start = monotonic()
        self.client = client
        self.real: Any = None
        self.outcome: str | None = None
        self.limit: str | None = None
        self.sent: int | None = None
        self.datagram = False
        self.keys = [key]


class AccessLog:
    """The connections of one server on their way, by ``id()`` of the request
    object (and of what stands for it later: a TLS socket, the async engine's
    Stream), each written as a line when it closes."""

    __slots__ = ("_entries", "_lock", "format", "server")

    def __init__(self, server: Any, format: str = DEFAULT_FORMAT) -> None:
        self.format = format
        self.server = _address(getattr(server, "server_address", None))
        self._entries: dict[int, _Entry] = {}
        self._lock = threading.Lock()

    # -- what the contract tells -------------------------------------------------

    def opened(self, request: Any, client: Any, *, datagram: bool = False) -> None:
        """A connection (or a datagram) was taken, in the loop's thread."""
        key = id(request)
        entry = _Entry(client, key)
        entry.datagram = datagram
        with self._lock:
            self._entries[key] = entry

    def preface_done(self, request: Any, conn: Any, address: Any) -> None:
        """The preface gave ``conn`` (maybe ``request`` itself) and the real client."""
        entry = self._entries.get(id(request))
        if entry is None:
            return
        if address is not entry.client and address != entry.client:
            entry.real = address
        self.alias(request, conn)

    def alias(self, request: Any, conn: Any) -> None:
        """``conn`` stands for ``request`` from now on (a TLS socket, a Stream)."""
        key = id(conn)
        with self._lock:
            entry = self._entries.get(id(request))
            if entry is not None and key not in entry.keys:
                self._entries[key] = entry
                entry.keys.append(key)

    def refused(self, request: Any) -> None:
        """verify_request() said no."""
        self._note(request, "refused", None)

    def limit(self, request: Any, error: LimitExceeded) -> None:
        """A limit tripped (``error.limit`` names it); a failed preface is one too."""
        name = getattr(error, "limit", None)
        self._note(request, "preface" if name in PREFACE_LIMITS else "limit", name)

    def failed(self, request: Any) -> None:
        """Called inside ``except``: what was raised ends the request."""
        exc = sys.exception()
        if isinstance(exc, LimitExceeded):
            self.limit(request, exc)
        else:
            self._note(request, "error", None)

    def sent(self, request: Any, size: int) -> None:
        """A datagram's reply of ``size`` bytes went out."""
        entry = self._find(request)
        if entry is not None:
            entry.sent = (entry.sent or 0) + size

    def forget(self, request: Any) -> None:
        """The request is another process's now (a fork): its line is that process's."""
        self._pop(request)

    def closed(self, request: Any, received: int | None, sent: int | None) -> None:
        """The request ended: write its line."""
        entry = self._pop(request)
        if entry is None:
            return
        if sent is None:
            sent = entry.sent
        duration = monotonic() - entry.start
        outcome = entry.outcome or "served"
        fields = {
            "time": datetime.now().astimezone().isoformat(timespec="milliseconds"),
            "client": _address(entry.client),
            "real_client": "-" if entry.real is None else _address(entry.real),
            "server": self.server,
            "transport": "datagram" if entry.datagram else "stream",
            "duration": duration,
            "duration_ms": duration * 1000,
            "bytes_in": "-" if received is None else received,
            "bytes_out": "-" if sent is None else sent,
            "outcome": outcome,
            "limit": entry.limit or "-",
            "pid": os.getpid(),
        }
        self.write(fields)

    def dropped(self, client: Any, limit: str, received: int | None = None) -> None:
        """A datagram dropped before it became a request (max_packet_size, max_in_flight)."""
        fields = {
            "time": datetime.now().astimezone().isoformat(timespec="milliseconds"),
            "client": _address(client), "real_client": "-", "server": self.server,
            "transport": "datagram", "duration": 0.0, "duration_ms": 0.0,
            "bytes_in": "-" if received is None else received, "bytes_out": 0,
            "outcome": "limit", "limit": limit, "pid": os.getpid(),
        }  # fmt: skip
        self.write(fields)

    def write(self, fields: dict[str, Any]) -> None:
        if not logger.isEnabledFor(logging.INFO):
            return
        try:
            line = self.format.format_map(fields)
        except (ValueError, TypeError):
            # A format checked with numbers met a "-" (bytes unknown, as on a Unix
            # socket): the line still goes out, in the default format.
            line = DEFAULT_FORMAT.format_map(fields)
        logger.info("%s", line.rstrip(), extra={"access": fields})

    # -- the table -----------------------------------------------------------------

    def _note(self, request: Any, outcome: str, limit: str | None) -> None:
        entry = self._find(request)
        if entry is not None and entry.outcome is None:
            entry.outcome, entry.limit = outcome, limit

    def _find(self, request: Any) -> _Entry | None:
        entry = self._entries.get(id(request))
        if entry is None:
            # A Stream of the async engine whose preface raised before it was
            # known here: its socket is the key.
            sock = getattr(request, "sock", None)
            if sock is not None:
                entry = self._entries.get(id(sock))
        return entry

    def _pop(self, request: Any) -> _Entry | None:
        with self._lock:
            entry = self._entries.pop(id(request), None)
            if entry is not None:
                for key in entry.keys:
                    self._entries.pop(key, None)
        return entry

    def __len__(self) -> int:
        return len({id(entry) for entry in self._entries.values()})
