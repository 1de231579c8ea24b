"""A UDP syslog collector: each datagram is one message, logged locally.

    servekit serve examples.syslog:Collector --listen udp://127.0.0.1:5140
    logger --udp --server 127.0.0.1 --port 5140 "disk almost full"
    logger --udp --server 127.0.0.1 --port 5140 --rfc3164 "disk almost full"

Both wire forms are understood: RFC 5424 (``<PRI>1 TIMESTAMP HOSTNAME APP-NAME
PROCID MSGID STRUCTURED-DATA MSG``, what util-linux ``logger`` sends by
default) and the BSD form of RFC 3164 (``<PRI>Mmm dd hh:mm:ss HOSTNAME
TAG[PID]: MSG``). Each message is logged with its facility, severity, host, app
and text, at the logging level its severity maps to. A datagram with no PRI is
taken as RFC 3164 says a relay must (user.notice, the whole datagram as text).
One that is malformed (a bad PRI, a truncated header, unterminated structured
data, bytes that are not text) is logged at WARNING with what is wrong with
it, and the collector goes on.

``parse()`` is the protocol, and contains no networking code at all: bytes in,
a ``Message`` out, or a ``SyslogError`` saying what is wrong. The handler is
the only part that touches a socket.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import servekit

logger = logging.getLogger("syslog")

FACILITIES = [
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news",
    "uucp", "cron", "authpriv", "ftp", "ntp", "audit", "alert", "clock",
    "local0", "local1", "local2", "local3", "local4", "local5", "local6", "local7",
]  # fmt: skip
SEVERITIES = ["emerg", "alert", "crit", "err", "warning", "notice", "info", "debug"]
#: Severity -> the logging level it is logged at.
LEVELS = (
    [logging.CRITICAL] * 3 + [logging.ERROR, logging.WARNING] + [logging.INFO] * 2 + [logging.DEBUG]
)
#: PRI = facility * 8 + severity; RFC 5424 6.2.1 and RFC 3164 4.1.1 stop at local7.debug.
PRI_MAX = len(FACILITIES) * 8 - 1
#: A message without PRI is user.notice (RFC 3164 4.3.3).
PRI_DEFAULT = 13
#: How much of a bad datagram the warning shows.
EXCERPT = 80

#: RFC 5424 6: the header fields after VERSION, each with its longest length.
_HEADER_FIELDS = (("TIMESTAMP", 32), ("HOSTNAME", 255), ("APP-NAME", 48),
                  ("PROCID", 128), ("MSGID", 32))  # fmt: skip
#: RFC 5424 6.2.3 (RFC 3339 with at most six fractional digits).
_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,6})?(?:Z|[+-]\d\d:\d\d)")
#: RFC 3164 4.1.2: "Mmm dd hh:mm:ss ", the day padded with a space.
_BSD_TIMESTAMP = re.compile(
    rb"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [ 1-3]\d \d\d:\d\d:\d\d "
)
#: RFC 3164 5.3: the TAG (the app), with a "[pid]" as most senders add.
_BSD_TAG = re.compile(rb"([^\s:\[\]]{1,48})(?:\[([^\s\]]{1,128})\])?: ?")
#: RFC 6587 3.4.1 octet counting, "LENGTH SP" before the message: for TCP, but
#: ``logger --octet-count`` sends it over UDP too.
_OCTET_COUNT = re.compile(rb"([1-9]\d{0,5}) (?=<)")
#: RFC 5424 6.3.2: printable ASCII but '=', ' ', ']' and '"'; one more than the
#: 32 allowed, to tell a name too long from one that ends there.
_SD_NAME = re.compile(rb'[^= \]"\x00-\x20\x7f-\xff]{1,33}')
_BOM = b"\xef\xbb\xbf"
#: C0 controls and DEL: what makes a datagram without PRI garbage rather than text.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


class SyslogError(ValueError):
    """A datagram that is not a syslog message; the text says what is wrong."""


@dataclass(frozen=True)
class Message:
    """One syslog message. Fields the sender left out (``-`` in RFC 5424) are None."""

    facility: int
    severity: int
    text: str
    host: str | None = None
    app: str | None = None
    procid: str | None = None
    msgid: str | None = None
    timestamp: str | None = None
    #: RFC 5424 STRUCTURED-DATA: (SD-ID, ((name, value), ...)) per element, unescaped.
    structured_data: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()
    #: 5424 or 3164: the form it came in.
    rfc: int = 3164

    @property
    def facility_name(self) -> str:
        return FACILITIES[self.facility]

    @property
    def severity_name(self) -> str:
        return SEVERITIES[self.severity]


class Collector(servekit.DatagramRequestHandler):
    """Log each datagram; reply nothing (syslog is fire-and-forget)."""

    def handle(self) -> None:
        sender = self.client_address[0] if self.client_address else "?"
        try:
            message = parse(self.packet)
        except SyslogError as exc:
            logger.warning("bad syslog datagram from %s: %s (%d bytes: %s)",
                           sender, exc, len(self.packet), excerpt(self.packet))  # fmt: skip
            return
        app = message.app or "-"
        if message.procid is not None:
            app += f"[{message.procid}]"
        logger.log(
            LEVELS[message.severity], "%s.%s from %s, host %s, app %s: %s",
            message.facility_name, message.severity_name, sender,
            shown(message.host or "-"), shown(app), shown(message.text),
        )  # fmt: skip

    def finish(self) -> None:
        pass  # no reply datagram


def parse(packet: bytes) -> Message:
    """The syslog message in one datagram, RFC 5424 or RFC 3164.

    Raises SyslogError, naming the fault, for anything else."""
    if not packet:
        raise SyslogError("empty datagram")
    counted = _OCTET_COUNT.match(packet)
    if counted:
        length, packet = int(counted.group(1)), packet[counted.end() :]
        if length != len(packet):
            raise SyslogError(f"octet count says {length} bytes, {len(packet)} follow it")
    if not packet.startswith(b"<"):
        return _without_pri(packet)
    pri, rest = _pri(packet)
    if rest.startswith(b"1 "):
        return _rfc5424(pri, rest[2:])
    return _rfc3164(pri, rest)


def _pri(packet: bytes) -> tuple[int, bytes]:
    """(PRI value, what follows it) of a datagram that starts with "<"."""
    digits = re.match(rb"<(\d*)", packet)
    assert digits is not None  # the datagram starts with "<"
    value, end = digits.group(1), digits.end()
    if not value:
        raise SyslogError(f"PRI: expected digits after '<', got {excerpt(packet[1:8])}")
    if len(value) > 3:
        raise SyslogError(f"PRI: more than 3 digits ({len(value)}); it is at most <{PRI_MAX}>")
    if packet[end : end + 1] != b">":
        raise SyslogError(f"PRI: <{value.decode()} not closed with '>'")
    pri = int(value)
    if pri > PRI_MAX:
        raise SyslogError(f"PRI {pri} out of range (0 to {PRI_MAX})")
    return pri, packet[end + 1 :]


def _without_pri(packet: bytes) -> Message:
    try:
        text = packet.decode()
    except UnicodeDecodeError:
        raise SyslogError("no <PRI> and not UTF-8 text") from None
    text = text.rstrip("\r\n")
    if _CONTROL.search(text):
        raise SyslogError("no <PRI> and control characters in it: not a syslog message")
    return Message(PRI_DEFAULT >> 3, PRI_DEFAULT & 7, text)


def _rfc5424(pri: int, data: bytes) -> Message:
    """The message after "<PRI>1 " (RFC 5424 6)."""
    fields: list[str | None] = []
    pos = 0
    following = [name for name, _ in _HEADER_FIELDS[1:]] + ["STRUCTURED-DATA"]
    for (name, longest), after in zip(_HEADER_FIELDS, following, strict=True):
        end = data.find(b" ", pos)
        if end < 0:
            raise SyslogError(f"RFC 5424 header cut short: no {after} after {name}")
        fields.append(_header_field(name, data[pos:end], longest))
        pos = end + 1
    timestamp, host, app, procid, msgid = fields
    if pos >= len(data):
        raise SyslogError("RFC 5424 header cut short: no STRUCTURED-DATA after MSGID")
    if timestamp is not None and not _TIMESTAMP.fullmatch(timestamp):
        raise SyslogError(
            f"TIMESTAMP {timestamp!r} is not RFC 3339 (like 2003-10-11T22:14:15.003Z) or '-'"
        )
    structured_data, pos = _structured_data(data, pos)
    if pos < len(data) and data[pos : pos + 1] != b" ":
        raise SyslogError(f"expected a space after STRUCTURED-DATA, got {excerpt(data[pos:])}")
    body = data[pos + 1 :]
    if body.startswith(_BOM):  # RFC 5424 6.4: the BOM says "UTF-8", and is not part of MSG
        body = body[len(_BOM) :]
    return Message(
        pri >> 3, pri & 7, _text(body), host=host, app=app, procid=procid, msgid=msgid,
        timestamp=timestamp, structured_data=structured_data, rfc=5424,
    )  # fmt: skip


def _header_field(name: str, value: bytes, longest: int) -> str | None:
    """One header field: "-" (none), else 1 to ``longest`` printable ASCII characters."""
    if value == b"-":
        return None
    if not value:
        raise SyslogError(f"{name} is empty (two spaces in a row); '-' says 'none'")
    if len(value) > longest:
        raise SyslogError(f"{name} longer than {longest} characters")
    if not all(33 <= byte <= 126 for byte in value):
        raise SyslogError(f"{name} has a character outside printable ASCII: {excerpt(value)}")
    return value.decode("ascii")


def _structured_data(
    data: bytes, pos: int
) -> tuple[tuple[tuple[str, tuple[tuple[str, str], ...]], ...], int]:
    """(elements, position after them): "-", or one or more "[SD-ID name="value" ...]"."""
    if data[pos : pos + 1] == b"-":
        return (), pos + 1
    if data[pos : pos + 1] != b"[":
        raise SyslogError(
            f"STRUCTURED-DATA must be '-' or start with '[', got {excerpt(data[pos:])}"
        )
    elements = []
    while data[pos : pos + 1] == b"[":
        sd_id, pos = _sd_name(data, pos + 1, "SD-ID")
        params = []
        while True:
            if pos >= len(data):
                raise SyslogError(f"STRUCTURED-DATA: element [{sd_id} not closed with ']'")
            if data[pos : pos + 1] == b"]":
                pos += 1
                break
            if data[pos : pos + 1] != b" ":
                raise SyslogError(f"STRUCTURED-DATA: expected ' ' or ']' in [{sd_id}, "
                                  f"got {excerpt(data[pos:])}")  # fmt: skip
            name, pos = _sd_name(data, pos + 1, f"a parameter name in [{sd_id}")
            if data[pos : pos + 2] != b'="':
                raise SyslogError(f'STRUCTURED-DATA: expected =" after {sd_id} {name}')
            value, pos = _sd_value(data, pos + 2, f"{sd_id} {name}")
            params.append((name, value))
        elements.append((sd_id, tuple(params)))
    return tuple(elements), pos


def _sd_name(data: bytes, pos: int, what: str) -> tuple[str, int]:
    """An SD-NAME (RFC 5424 6.3): 1 to 32 printable ASCII but '=', ' ', ']' and '"'."""
    name = _SD_NAME.match(data, pos)
    if not name:
        raise SyslogError(f"STRUCTURED-DATA: {what} is missing, got {excerpt(data[pos:])}")
    end = name.end()
    if end - pos > 32:
        raise SyslogError(f"STRUCTURED-DATA: {what} longer than 32 characters")
    return data[pos:end].decode("ascii"), end


def _sd_value(data: bytes, pos: int, what: str) -> tuple[str, int]:
    """A PARAM-VALUE up to its closing quote, unescaped; and the position after the quote.

    RFC 5424 6.3.3: '"', '\\' and ']' are escaped with a backslash; a backslash
    before anything else is itself."""
    value = bytearray()
    while pos < len(data):
        byte = data[pos]
        if byte == 0x5C and pos + 1 < len(data) and data[pos + 1] in b'"\\]':  # backslash
            value.append(data[pos + 1])
            pos += 2
        elif byte == 0x22:  # the closing quote
            try:
                return value.decode(), pos + 1
            except UnicodeDecodeError:
                raise SyslogError(f"STRUCTURED-DATA: the value of {what} is not UTF-8") from None
        elif byte == 0x5D:  # "]"
            raise SyslogError(f"STRUCTURED-DATA: unescaped ']' in the value of {what}")
        else:
            value.append(byte)
            pos += 1
    raise SyslogError(f"STRUCTURED-DATA: the value of {what} not closed with '\"'")


def _rfc3164(pri: int, data: bytes) -> Message:
    """The message after "<PRI>" in the BSD form (RFC 3164 4.1): a TIMESTAMP and
    HOSTNAME when present, then TAG[PID]: and the text."""
    timestamp = host = None
    stamp = _BSD_TIMESTAMP.match(data)
    if stamp:
        timestamp = stamp.group().decode("ascii").rstrip()
        data = data[stamp.end() :]
        word, space, rest = data.partition(b" ")
        # A sender that leaves out HOSTNAME goes straight on to its TAG ("app[7]:").
        if space and word and not word.endswith(b":") and b"[" not in word:
            host, data = _text(word), rest
    app = procid = None
    tag = _BSD_TAG.match(data)
    if tag:
        app = tag.group(1).decode("utf-8", "backslashreplace")
        if tag.group(2):
            procid = tag.group(2).decode("utf-8", "backslashreplace")
        data = data[tag.end() :]
    return Message(
        pri >> 3, pri & 7, _text(data), host=host, app=app, procid=procid,
        timestamp=timestamp, rfc=3164,
    )  # fmt: skip


def _text(data: bytes) -> str:
    """A message's text: UTF-8, any other bytes shown as \\xNN; no trailing newline."""
    return data.decode("utf-8", "backslashreplace").rstrip("\r\n")


def shown(text: str) -> str:
    """``text`` safe to log: control characters escaped, so that a message cannot
    forge log lines (a newline) or drive the terminal (an escape sequence)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def excerpt(data: bytes) -> str:
    """The start of ``data`` as a bytes literal, for a warning."""
    if len(data) <= EXCERPT:
        return repr(data)
    return f"{data[:EXCERPT]!r}..."
