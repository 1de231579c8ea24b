"""The PROXY protocol (HAProxy), versions 1 and 2: a parser and a builder.

This module contains no networking code at all: no sockets, no threads, no
clocks. It does not even import ``socket`` for constants: address families and
transports are strings, the specification's names (``"AF_INET"``,
``"STREAM"``). The caller reads bytes from wherever they come from and hands
them to a :class:`ProxyParser`, which answers either :data:`NEED_DATA` ("more,
please") or the :class:`ProxyHeader` the proxy sent. Every engine (threads,
fork, asyncio) drives the same object. The specification is
https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt.

Theory of operation:

- A receiver must never guess whether a header is present (specification,
  section 2), or anyone could spoof their address by sending one. So a parser
  demands a header and fails on anything else; put it only in front of
  listeners whose peers are trusted proxies (:func:`is_trusted`).
- Malformed input fails as early as the bytes allow, so the sender can notice
  and log it: the first byte decides the version; then every byte of a v1 line
  is checked against the grammar as it arrives, and the fixed part and each
  TLV head of a v2 header are checked as soon as they are complete.
- Bounded: a v1 line is at most :data:`V1_MAX_LENGTH` bytes, a v2 header at
  most ``max_v2_length``; nothing beyond the header is ever parsed.
- Linear: ``next_event()`` re-reads at most 107 bytes of a v1 line, and only
  the new TLV heads of a v2 header, so a peer that sends one byte at a time
  costs time proportional to the header, not to its square.
"""

from __future__ import annotations

import enum
import ipaddress
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal, TypeAlias

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = [
    "DEFAULT_MAX_V2_LENGTH",
    "NEED_DATA",
    "PP2_TYPE_ALPN",
    "PP2_TYPE_AUTHORITY",
    "PP2_TYPE_CRC32C",
    "PP2_TYPE_NETNS",
    "PP2_TYPE_NOOP",
    "PP2_TYPE_SSL",
    "PP2_TYPE_UNIQUE_ID",
    "UNIX_SOCKETS",
    "V1_MAX_LENGTH",
    "V1_SIGNATURE",
    "V2_FIXED_LENGTH",
    "V2_MAX_LENGTH",
    "V2_SIGNATURE",
    "NeedData",
    "ProxyAddress",
    "ProxyCommand",
    "ProxyFamily",
    "ProxyHeader",
    "ProxyHeaderError",
    "ProxyParser",
    "ProxyTransport",
    "TrustedNetwork",
    "UnixSockets",
    "build_v1",
    "build_v2",
    "is_trusted",
    "parse_networks",
]

ProxyCommand: TypeAlias = Literal["PROXY", "LOCAL"]
#: The address family of a header's addresses, by the specification's name (v2 byte 14,
#: high nibble 1, 2, 3; v1's TCP4 and TCP6). Not a ``socket.AF_*`` constant.
ProxyFamily: TypeAlias = Literal["AF_INET", "AF_INET6", "AF_UNIX"]
#: The proxied connection's transport, by the specification's name (v2 byte 14, low
#: nibble 1, 2; always STREAM in v1). Not a ``socket.SOCK_*`` constant.
ProxyTransport: TypeAlias = Literal["STREAM", "DGRAM"]
#: ``(host, port)`` for TCP/UDP, a path (``"\0name"`` if abstract) for Unix, None if unknown.
ProxyAddress: TypeAlias = tuple[str, int] | str | None
_IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Every v1 header starts with these 6 bytes: "PROXY" and exactly one space.
V1_SIGNATURE: Final = b"PROXY "
#: The longest v1 line a receiver must accept, CRLF included: "PROXY UNKNOWN"
#: followed by two full-length IPv6 addresses and two 5-digit ports (spec 2.1).
V1_MAX_LENGTH: Final = 107
#: Every v2 header starts with these 12 bytes; the NUL makes it no C string.
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
#: Signature, version and command, family and protocol, 2-byte length.
V2_FIXED_LENGTH: Final = 16
#: The length field is 16 bits, so no v2 header can be longer than this.
V2_MAX_LENGTH: Final = V2_FIXED_LENGTH + 0xFFFF
#: The default bound on a v2 header. The longest address block is 216 bytes
#: (AF_UNIX); the TLVs senders add (ALPN, SNI up to 255 bytes, a unique ID of
#: at most 128, the SSL block with its cipher and certificate CN, cloud
#: endpoint IDs) come to a few hundred more. 4 KiB holds all of them with room
#: to spare and bounds what a half-open connection can make us buffer.
DEFAULT_MAX_V2_LENGTH: Final = 4096

# TLV types registered by the specification (section 2.2). Values stay raw
# bytes in ProxyHeader.tlvs; only the CRC32C is interpreted, to verify it.
PP2_TYPE_ALPN: Final = 0x01
PP2_TYPE_AUTHORITY: Final = 0x02
PP2_TYPE_CRC32C: Final = 0x03
PP2_TYPE_NOOP: Final = 0x04
PP2_TYPE_UNIQUE_ID: Final = 0x05
PP2_TYPE_SSL: Final = 0x20
PP2_TYPE_NETNS: Final = 0x30

_TLV_HEAD_LENGTH = 3  # type (1 byte) and value length (2 bytes, big endian)
_UNIX_PATH_LENGTH = 108  # sizeof(sun_path) on Linux, fixed by the specification


class ProxyHeaderError(ValueError):
    """The bytes are not a valid PROXY header; the message says what is wrong.

    The specification says to close the connection at once, so that the sender
    notices; nothing from it can be trusted.
    """


class NeedData(enum.Enum):
    """The type of :data:`NEED_DATA`, so that ``event is NEED_DATA`` narrows types."""

    NEED_DATA = "NEED_DATA"

    def __repr__(self) -> str:
        return self.value


#: ``next_event()`` returns this until the whole header has been received.
NEED_DATA: Final = NeedData.NEED_DATA


@dataclass(frozen=True)
class ProxyHeader:
    """What a PROXY header said.

    ``command`` is "PROXY" when the addresses are those of the proxied client,
    "LOCAL" when the proxy connected on its own behalf (health checks) and the
    real endpoints of the connection apply; v1's "UNKNOWN" means the same.
    ``family`` is the address family by the specification's name, a str:
    ``"AF_INET"``, ``"AF_INET6"`` or ``"AF_UNIX"`` (not a ``socket.AF_*``
    number). ``protocol`` is the proxied connection's transport, likewise:
    ``"STREAM"`` (TCP or a Unix stream socket; always, in v1) or ``"DGRAM"``
    (UDP or a Unix datagram socket), not a ``socket.SOCK_*`` number.
    ``family``, ``protocol``, ``source`` and ``destination`` are None when the
    header carries no addresses (LOCAL, UNKNOWN, AF_UNSPEC). IP addresses are
    in canonical form, as ``str(ipaddress.ip_address(...))`` prints them on this
    Python (IPv4-mapped ones are dotted from 3.13 on). ``tlvs`` holds v2's
    type-length-value extensions, raw and in order. ``header_length`` is the
    number of bytes the header took from the stream.
    """

    version: int
    command: ProxyCommand
    family: ProxyFamily | None
    protocol: ProxyTransport | None
    source: ProxyAddress
    destination: ProxyAddress
    tlvs: tuple[tuple[int, bytes], ...]
    header_length: int


class _State(enum.Enum):
    SIGNATURE = "awaiting the first byte"
    V1 = "reading a v1 line"
    V2 = "reading a v2 header"
    DONE = "header complete"
    ERROR = "malformed header"


class ProxyParser:
    """Reads the PROXY header at the start of one byte stream.

    Methods for the caller:

    - receive_data(data)   # b"" means the peer closed the connection
    - next_event() -> ProxyHeader | NEED_DATA; raises ProxyHeaderError

    Properties:

    - header         # the ProxyHeader, once complete; None before
    - trailing_data  # the bytes received after the header: the application's
    - max_v2_length

    Once the header is complete, ``next_event()`` keeps returning it. Once it
    has raised, it raises again: a broken stream stays broken.
    """

    def __init__(self, *, max_v2_length: int = DEFAULT_MAX_V2_LENGTH) -> None:
        if not V2_FIXED_LENGTH <= max_v2_length <= V2_MAX_LENGTH:
            raise ValueError(
                f"max_v2_length={max_v2_length} is outside {V2_FIXED_LENGTH}-{V2_MAX_LENGTH}, "
                "the sizes a v2 header can have"
            )
        self._max_v2_length = max_v2_length
        self._buffer = bytearray()
        self._closed = False
        self._state = _State.SIGNATURE
        self._v2: _V2Fixed | None = None
        self._tlv_offset = 0  # where the next TLV head of a v2 header starts
        self._header: ProxyHeader | None = None
        self._error = ""

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self._state.value}, {len(self._buffer)} bytes buffered"
            f"{', peer closed' if self._closed else ''}>"
        )

    @property
    def max_v2_length(self) -> int:
        """The longest v2 header accepted, fixed part included."""
        return self._max_v2_length

    @property
    def header(self) -> ProxyHeader | None:
        """The header, once ``next_event()`` has returned it."""
        return self._header

    @property
    def trailing_data(self) -> bytes:
        """Every byte received after the header: the start of the application's stream.

        Raises RuntimeError before the header is complete, when every byte
        received still belongs to it.
        """
        if self._header is None:
            raise RuntimeError("the PROXY header is not complete yet: no data follows it")
        return bytes(self._buffer)

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Add bytes received from the peer; ``b""`` says the peer closed the stream
        (so never pass an empty chunk to mean "nothing yet").

        Bytes received after the header are kept for ``trailing_data``.
        """
        if not data:
            self._closed = True
            return
        if self._closed:
            raise RuntimeError("data received after the end of the stream (b'')")
        self._buffer += data

    def next_event(self) -> ProxyHeader | NeedData:
        """Return the header if it is complete, else NEED_DATA.

        Raises ProxyHeaderError as soon as the bytes received cannot begin a
        valid header, or when the stream ended before the header did.
        """
        if self._header is not None:
            return self._header
        if self._state is _State.ERROR:
            raise ProxyHeaderError(self._error)
        try:
            header = self._advance()
            if header is None and self._closed:
                raise ProxyHeaderError(
                    f"connection closed after {len(self._buffer)} bytes, "
                    "before the PROXY header was complete"
                )
        except ProxyHeaderError as exc:
            self._state, self._error = _State.ERROR, str(exc)
            raise
        if header is None:
            return NEED_DATA
        self._state, self._header = _State.DONE, header
        del self._buffer[: header.header_length]
        return header

    def _advance(self) -> ProxyHeader | None:
        if self._state is _State.SIGNATURE:
            if not self._buffer:
                return None
            self._state = _version_from_first_byte(self._buffer[0], bytes(self._buffer[:16]))
        if self._state is _State.V1:
            return _parse_v1(self._buffer)
        return self._advance_v2()

    def _advance_v2(self) -> ProxyHeader | None:
        buffer = self._buffer
        if self._v2 is None:
            self._v2 = _parse_v2_fixed(bytes(buffer[:V2_FIXED_LENGTH]), self._max_v2_length)
            if self._v2 is None:
                return None
            self._tlv_offset = V2_FIXED_LENGTH + self._v2.address_length
        fixed = self._v2
        self._tlv_offset = _skip_tlvs(buffer, self._tlv_offset, fixed.total_length)
        if len(buffer) < fixed.total_length:
            return None
        return _decode_v2(bytes(buffer[: fixed.total_length]), fixed)


def _version_from_first_byte(first: int, head: bytes) -> _State:
    """The first byte tells the versions apart: "P" for v1, CR for v2."""
    if first == V1_SIGNATURE[0]:
        return _State.V1
    if first == V2_SIGNATURE[0]:
        return _State.V2
    raise ProxyHeaderError(
        f"not a PROXY protocol header: the stream starts {head!r}, where v1 starts "
        f"{V1_SIGNATURE!r} and v2 {V2_SIGNATURE!r} (is a client bypassing the proxy?)"
    )


# --- Version 1: one line of US-ASCII text -------------------------------------------

#: Protocol name -> (address family, IP version); UNKNOWN carries no addresses.
_V1_PROTOCOLS: dict[bytes, tuple[ProxyFamily, int] | None] = {
    b"TCP4": ("AF_INET", 4),
    b"TCP6": ("AF_INET6", 6),
    b"UNKNOWN": None,
}
_V1_FIELD_NAMES = ("source address", "destination address", "source port", "destination port")
_DIGITS = b"0123456789"
#: Per IP version: the bytes an address may hold, and its longest spelling
#: (IPv6 with an embedded IPv4 tail, as inet_ntop writes ::ffff:a.b.c.d, is 45).
_V1_ADDRESS_RULES = {4: (_DIGITS + b".", 15), 6: (_DIGITS + b"abcdefABCDEF:.", 45)}
_V1_PORT_RULE = (_DIGITS, 5)


def _parse_v1(buffer: bytearray) -> ProxyHeader | None:
    """Parse a v1 line if its CRLF has arrived; otherwise check what has."""
    end = buffer.find(b"\r\n", 0, V1_MAX_LENGTH)
    if end >= 0:
        line = bytes(buffer[:end])
        _check_v1_text(line)
        return _decode_v1_line(line)
    head = bytes(buffer[:V1_MAX_LENGTH])
    # A CR at the very end may be the first half of the CRLF.
    _check_v1_text(head[:-1] if head.endswith(b"\r") else head)
    if len(buffer) >= V1_MAX_LENGTH:
        raise ProxyHeaderError(
            f"the PROXY v1 line has no CRLF within its first {V1_MAX_LENGTH} bytes, "
            "the longest a v1 line can be"
        )
    return None


def _check_v1_text(text: bytes) -> None:
    """Raise unless ``text`` (no line end) can be the beginning of a v1 line."""
    known = min(len(text), len(V1_SIGNATURE))
    if text[:known] != V1_SIGNATURE[:known]:
        raise ProxyHeaderError(
            f"not a PROXY protocol header: {text[:16]!r} does not start with {V1_SIGNATURE!r}, "
            "the v1 signature (in capitals, then exactly one space)"
        )
    if b"\r" in text or b"\n" in text:
        raise ProxyHeaderError(
            "the PROXY v1 line holds a CR or LF that is not part of a CRLF; "
            "a line ends with CRLF and nothing else"
        )
    name, space, fields = text[len(V1_SIGNATURE) :].partition(b" ")
    if not space:
        if not any(known_name.startswith(name) for known_name in _V1_PROTOCOLS):
            raise _unknown_v1_protocol(name)
        return
    if name not in _V1_PROTOCOLS:
        raise _unknown_v1_protocol(name)
    inet = _V1_PROTOCOLS[name]
    if inet is not None:  # UNKNOWN: the rest of the line is ignored
        _check_v1_fields(name, inet[1], fields)


def _unknown_v1_protocol(name: bytes) -> ProxyHeaderError:
    return ProxyHeaderError(
        f"unknown PROXY v1 protocol {name!r}: expected TCP4, TCP6 or UNKNOWN, in capitals"
    )


def _check_v1_fields(name: bytes, ip_version: int, fields: bytes) -> None:
    """Check the fields after TCP4/TCP6 so far: count, single spaces, alphabet, length."""
    parts = fields.split(b" ")
    if len(parts) > len(_V1_FIELD_NAMES):
        raise ProxyHeaderError(
            f"the PROXY v1 line has more than 4 fields after {name.decode()}: "
            "expected SOURCE DESTINATION SPORT DPORT"
        )
    rules = (_V1_ADDRESS_RULES[ip_version],) * 2 + (_V1_PORT_RULE,) * 2
    for index, part in enumerate(parts):
        field_name = _V1_FIELD_NAMES[index]
        if not part and index < len(parts) - 1:
            raise ProxyHeaderError(
                f"the PROXY v1 {field_name} is empty: fields are separated by exactly one space"
            )
        alphabet, longest = rules[index]
        stray = part.translate(None, alphabet)
        if stray:
            where = "a port" if index >= 2 else f"the IPv{ip_version} address {name.decode()} needs"
            raise ProxyHeaderError(
                f"the PROXY v1 {field_name} {part[:48]!r} holds {stray[:1]!r}, "
                f"which cannot appear in {where}"
            )
        if len(part) > longest:
            raise ProxyHeaderError(
                f"the PROXY v1 {field_name} {part!r} is longer than {longest} characters"
            )


def _decode_v1_line(line: bytes) -> ProxyHeader:
    """Decode a whole v1 line (CRLF removed) that passed ``_check_v1_text``."""
    length = len(line) + 2
    rest = line[len(V1_SIGNATURE) :]
    if rest == b"UNKNOWN" or rest.startswith(b"UNKNOWN "):
        return ProxyHeader(1, "LOCAL", None, None, None, None, (), length)
    parts = rest.split(b" ")
    inet = _V1_PROTOCOLS.get(parts[0])
    if inet is None or len(parts) != 5:
        raise ProxyHeaderError(
            f"the PROXY v1 line {line!r} is incomplete: expected "
            "'PROXY TCP4|TCP6 SOURCE DESTINATION SPORT DPORT' or 'PROXY UNKNOWN'"
        )
    family, ip_version = inet
    name = parts[0].decode()
    source = _v1_address(parts[1], ip_version, name, "source")
    destination = _v1_address(parts[2], ip_version, name, "destination")
    source_port = _v1_port(parts[3], "source")
    destination_port = _v1_port(parts[4], "destination")
    return ProxyHeader(
        version=1,
        command="PROXY",
        family=family,
        protocol="STREAM",
        source=(source, source_port),
        destination=(destination, destination_port),
        tlvs=(),
        header_length=length,
    )


def _v1_address(field: bytes, ip_version: int, name: str, role: str) -> str:
    text = field.decode("ascii")  # _check_v1_fields allowed only ASCII
    try:
        address = ipaddress.ip_address(text)  # rejects leading zeros in IPv4
    except ValueError:
        raise ProxyHeaderError(
            f"the PROXY v1 {role} address {text!r} is not a valid IPv{ip_version} address"
        ) from None
    if address.version != ip_version:
        raise ProxyHeaderError(
            f"the PROXY v1 {role} address {text!r} is IPv{address.version}, "
            f"but {name} announces IPv{ip_version}"
        )
    return str(address)


def _v1_port(field: bytes, role: str) -> int:
    text = field.decode("ascii")
    if not text:
        raise ProxyHeaderError(f"the PROXY v1 {role} port is missing")
    if len(text) > 1 and text.startswith("0"):
        raise ProxyHeaderError(
            f"the PROXY v1 {role} port {text!r} has a leading zero, which the specification "
            "forbids (it could be read as octal)"
        )
    port = int(text)
    if port > 0xFFFF:
        raise ProxyHeaderError(f"the PROXY v1 {role} port {port} is out of range 0-65535")
    return port


# --- Version 2: binary ---------------------------------------------------------------


@dataclass(frozen=True)
class _V2Family:
    family: ProxyFamily | None
    name: str
    address_length: int  # both addresses, and both ports for IP
    ip_width: int  # bytes in one IP address; 0 if not IP


#: High nibble of the 14th byte.
_V2_FAMILIES = {
    0x0: _V2Family(None, "AF_UNSPEC", 0, 0),
    0x1: _V2Family("AF_INET", "AF_INET", 2 * 4 + 2 * 2, 4),
    0x2: _V2Family("AF_INET6", "AF_INET6", 2 * 16 + 2 * 2, 16),
    0x3: _V2Family("AF_UNIX", "AF_UNIX", 2 * _UNIX_PATH_LENGTH, 0),
}
#: Low nibble of the 14th byte: (ProxyHeader.protocol, name).
_V2_PROTOCOLS: dict[int, tuple[ProxyTransport | None, str]] = {
    0x0: (None, "UNSPEC"),
    0x1: ("STREAM", "STREAM"),
    0x2: ("DGRAM", "DGRAM"),
}
#: Low nibble of the 13th byte.
_V2_COMMANDS: dict[int, ProxyCommand] = {0x0: "LOCAL", 0x1: "PROXY"}
_V2_COMMAND_NIBBLES = {command: nibble for nibble, command in _V2_COMMANDS.items()}
_V2_TRANSPORTS: dict[str, int] = {
    kind: nibble for nibble, (kind, _) in _V2_PROTOCOLS.items() if kind is not None
}
#: The family/protocol bytes the specification lists for real connections;
#: others (AF_INET over UNSPEC, ...) are ambiguous, so a PROXY command with
#: one is refused. A LOCAL command ignores the family, as the spec says.
_V2_PROXY_FAMILY_BYTES = frozenset({0x00, 0x11, 0x12, 0x21, 0x22, 0x31, 0x32})


@dataclass(frozen=True)
class _V2Fixed:
    """The 16-byte fixed part of a v2 header, validated."""

    command: ProxyCommand
    family: _V2Family
    protocol: ProxyTransport | None
    total_length: int

    @property
    def address_length(self) -> int:
        return self.family.address_length


def _parse_v2_fixed(head: bytes, max_length: int) -> _V2Fixed | None:
    """Check the fixed part as far as it has arrived; return it once complete."""
    for index, byte in enumerate(head[: len(V2_SIGNATURE)]):
        if byte != V2_SIGNATURE[index]:
            raise ProxyHeaderError(
                f"not a PROXY protocol header: byte {index + 1} is 0x{byte:02x} "
                f"where the v2 signature {V2_SIGNATURE!r} has 0x{V2_SIGNATURE[index]:02x}"
            )
    if len(head) <= len(V2_SIGNATURE):
        return None
    command = _v2_command(head[12])
    if len(head) <= 13:
        return None
    family, protocol = _v2_family(head[13], command)
    if len(head) < V2_FIXED_LENGTH:
        return None
    total_length = V2_FIXED_LENGTH + int.from_bytes(head[14:16], "big")
    if total_length > max_length:
        raise ProxyHeaderError(
            f"the PROXY v2 header announces {total_length} bytes, "
            f"over the limit max_v2_length={max_length}"
        )
    if total_length - V2_FIXED_LENGTH < family.address_length:
        raise ProxyHeaderError(
            f"the PROXY v2 header announces {total_length - V2_FIXED_LENGTH} bytes after its "
            f"fixed part, fewer than the {family.address_length} of an {family.name} "
            "address block"
        )
    return _V2Fixed(command, family, protocol, total_length)


def _v2_command(byte: int) -> ProxyCommand:
    """The 13th byte: version in the high nibble, command in the low one."""
    if byte >> 4 != 2:
        raise ProxyHeaderError(
            f"unsupported PROXY v2 version {byte >> 4} (byte 13 is 0x{byte:02x}); "
            "only version 2 is defined"
        )
    command = _V2_COMMANDS.get(byte & 0xF)
    if command is None:
        raise ProxyHeaderError(
            f"unknown PROXY v2 command {byte & 0xF} (byte 13 is 0x{byte:02x}); "
            "only LOCAL (0) and PROXY (1) are defined"
        )
    return command


def _v2_family(byte: int, command: ProxyCommand) -> tuple[_V2Family, ProxyTransport | None]:
    """The 14th byte: address family in the high nibble, transport in the low one."""
    family = _V2_FAMILIES.get(byte >> 4)
    if family is None:
        raise ProxyHeaderError(
            f"unknown PROXY v2 address family {byte >> 4} (byte 14 is 0x{byte:02x}); "
            "only AF_UNSPEC (0), AF_INET (1), AF_INET6 (2) and AF_UNIX (3) are defined"
        )
    protocol = _V2_PROTOCOLS.get(byte & 0xF)
    if protocol is None:
        raise ProxyHeaderError(
            f"unknown PROXY v2 transport protocol {byte & 0xF} (byte 14 is 0x{byte:02x}); "
            "only UNSPEC (0), STREAM (1) and DGRAM (2) are defined"
        )
    if command == "PROXY" and byte not in _V2_PROXY_FAMILY_BYTES:
        raise ProxyHeaderError(
            f"byte 14 (0x{byte:02x}) pairs {family.name} with {protocol[1]}, "
            "a combination the specification does not define"
        )
    return family, protocol[0]


def _tlv_at(buffer: bytes | bytearray, offset: int, end: int) -> tuple[int, int] | None:
    """Type and value length of the TLV at ``offset``; None until its head has arrived.

    Raises as soon as the head shows the TLV cannot fit before ``end``.
    """
    if end - offset < _TLV_HEAD_LENGTH:
        raise ProxyHeaderError(
            f"truncated TLV at offset {offset} of the PROXY v2 header: {end - offset} bytes "
            f"remain, and a TLV takes at least {_TLV_HEAD_LENGTH}"
        )
    if len(buffer) < offset + _TLV_HEAD_LENGTH:
        return None
    kind = buffer[offset]
    length = int.from_bytes(buffer[offset + 1 : offset + _TLV_HEAD_LENGTH], "big")
    if offset + _TLV_HEAD_LENGTH + length > end:
        raise ProxyHeaderError(
            f"truncated TLV: type 0x{kind:02x} at offset {offset} of the PROXY v2 header "
            f"announces {length} bytes, but only {end - offset - _TLV_HEAD_LENGTH} remain"
        )
    return kind, length


def _skip_tlvs(buffer: bytes | bytearray, offset: int, end: int) -> int:
    """Check each TLV head that has arrived; return where the next one starts."""
    while offset < end:
        tlv = _tlv_at(buffer, offset, end)
        if tlv is None:
            break
        offset += _TLV_HEAD_LENGTH + tlv[1]
    return offset


def _tlv_spans(data: bytes, offset: int) -> list[tuple[int, int, int]]:
    """(type, start, end) of each TLV's value in a complete header."""
    spans = []
    while offset < len(data):
        tlv = _tlv_at(data, offset, len(data))
        if tlv is None:  # cannot happen: data holds the whole header
            break
        start = offset + _TLV_HEAD_LENGTH
        spans.append((tlv[0], start, start + tlv[1]))
        offset = start + tlv[1]
    return spans


def _decode_v2(data: bytes, fixed: _V2Fixed) -> ProxyHeader:
    """Decode a complete v2 header whose fixed part passed ``_parse_v2_fixed``."""
    addresses_end = V2_FIXED_LENGTH + fixed.address_length
    spans = _tlv_spans(data, addresses_end)
    _verify_crc32c(data, spans)
    tlvs = tuple((kind, data[start:end]) for kind, start, end in spans)
    family = fixed.family
    if fixed.command == "LOCAL" or family.family is None:
        return ProxyHeader(2, fixed.command, None, None, None, None, tlvs, len(data))
    block = data[V2_FIXED_LENGTH:addresses_end]
    source: ProxyAddress
    destination: ProxyAddress
    if family.ip_width:
        source, destination = _v2_ip_endpoints(block, family.ip_width)
    else:
        source = _v2_unix_path(block[:_UNIX_PATH_LENGTH])
        destination = _v2_unix_path(block[_UNIX_PATH_LENGTH:])
    return ProxyHeader(
        2, "PROXY", family.family, fixed.protocol, source, destination, tlvs, len(data)
    )


def _v2_ip_endpoints(block: bytes, width: int) -> tuple[tuple[str, int], tuple[str, int]]:
    """Source and destination of an address block: both addresses, then both ports."""
    source = ipaddress.ip_address(block[:width])
    destination = ipaddress.ip_address(block[width : 2 * width])
    source_port = int.from_bytes(block[2 * width : 2 * width + 2], "big")
    destination_port = int.from_bytes(block[2 * width + 2 : 2 * width + 4], "big")
    return (str(source), source_port), (str(destination), destination_port)


def _v2_unix_path(raw: bytes) -> str:
    """A 108-byte sun_path: an abstract name keeps its leading NUL and loses its padding;
    a path name ends at its first NUL, as the kernel reads it."""
    if raw.startswith(b"\0"):
        return os.fsdecode(raw.rstrip(b"\0"))
    return os.fsdecode(raw.partition(b"\0")[0])


def _verify_crc32c(data: bytes, spans: list[tuple[int, int, int]]) -> None:
    """Check a PP2_TYPE_CRC32C TLV, if present: the spec says a receiver that
    supports it MUST drop a header whose checksum does not match."""
    checksums = [(start, end) for kind, start, end in spans if kind == PP2_TYPE_CRC32C]
    if not checksums:
        return
    if len(checksums) > 1:
        raise ProxyHeaderError("the PROXY v2 header holds more than one CRC32C TLV")
    start, end = checksums[0]
    if end - start != 4:
        raise ProxyHeaderError(f"the PROXY v2 CRC32C TLV holds {end - start} bytes, not 4")
    announced = int.from_bytes(data[start:end], "big")
    computed = _crc32c(data[:start] + bytes(4) + data[end:])
    if announced != computed:
        raise ProxyHeaderError(
            f"the PROXY v2 header's CRC32C is 0x{announced:08x} but its bytes give "
            f"0x{computed:08x}: the header was damaged or altered"
        )


def _crc32c_table() -> tuple[int, ...]:
    """Castagnoli CRC (RFC 4960, appendix B), reflected polynomial 0x82F63B78."""
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def _crc32c(data: bytes) -> int:
    # zlib.crc32 uses another polynomial, and the stdlib has no CRC32C. A
    # byte-wise table costs ~0.1 ms per kilobyte, paid only by headers that
    # carry a checksum.
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


# --- Building headers (for clients of PROXY-aware servers, and for tests) -------------


def build_v1(source: tuple[str, int] | None, destination: tuple[str, int] | None) -> bytes:
    """Return a v1 line for a TCP connection from ``source`` to ``destination``.

    Both None gives ``PROXY UNKNOWN``. Hosts must be IP addresses of the same
    version; they are written in canonical form.
    """
    if source is None and destination is None:
        return b"PROXY UNKNOWN\r\n"
    if source is None or destination is None:
        raise ValueError("give both the source and the destination, or neither")
    source_ip, source_port = _ip_endpoint("source", source)
    destination_ip, destination_port = _ip_endpoint("destination", destination)
    if source_ip.version != destination_ip.version:
        raise ValueError(
            f"the source {source_ip} and the destination {destination_ip} "
            "are not of the same IP version"
        )
    name = "TCP4" if source_ip.version == 4 else "TCP6"
    line = f"PROXY {name} {source_ip} {destination_ip} {source_port} {destination_port}\r\n"
    return line.encode("ascii")


def build_v2(
    source: ProxyAddress | bytes,
    destination: ProxyAddress | bytes,
    *,
    command: ProxyCommand = "PROXY",
    protocol: ProxyTransport = "STREAM",
    tlvs: Iterable[tuple[int, bytes]] = (),
    crc32c: bool = False,
) -> bytes:
    """Return a v2 header.

    ``source`` and ``destination`` are both ``(ip, port)`` (AF_INET or
    AF_INET6), both Unix socket paths (``"\\0name"`` for an abstract name), or
    both None (AF_UNSPEC). A LOCAL header carries no addresses. ``protocol``
    is the proxied connection's transport by the specification's name:
    ``"STREAM"`` (TCP or Unix stream, the default) or ``"DGRAM"`` (UDP or
    Unix datagram), not a ``socket.SOCK_*`` constant. ``crc32c=True``
    appends a PP2_TYPE_CRC32C TLV holding the header's checksum.
    """
    command_nibble = _V2_COMMAND_NIBBLES.get(command)
    if command_nibble is None:
        raise ValueError(f"command must be 'PROXY' or 'LOCAL', not {command!r}")
    transport = _V2_TRANSPORTS.get(protocol)
    if transport is None:
        raise ValueError(f"protocol must be 'STREAM' or 'DGRAM', not {protocol!r}")
    family_byte, block = _v2_address_block(source, destination, command, transport)
    body = block + b"".join(_encode_tlv(kind, value) for kind, value in tlvs)
    if crc32c:
        body += _encode_tlv(PP2_TYPE_CRC32C, bytes(4))
    if len(body) > 0xFFFF:
        raise ValueError(f"the header body is {len(body)} bytes; v2 allows at most 65535")
    header = V2_SIGNATURE + bytes([0x20 | command_nibble, family_byte])
    header += len(body).to_bytes(2, "big") + body
    if crc32c:
        header = header[:-4] + _crc32c(header).to_bytes(4, "big")
    return header


def _v2_address_block(
    source: ProxyAddress | bytes,
    destination: ProxyAddress | bytes,
    command: ProxyCommand,
    transport: int,
) -> tuple[int, bytes]:
    """The family/protocol byte and the address block for ``build_v2``."""
    if source is None and destination is None:
        return 0x00, b""
    if command == "LOCAL":
        raise ValueError("a LOCAL header carries no addresses: pass None for both")
    if isinstance(source, tuple) and isinstance(destination, tuple):
        source_ip, source_port = _ip_endpoint("source", source)
        destination_ip, destination_port = _ip_endpoint("destination", destination)
        if source_ip.version != destination_ip.version:
            raise ValueError(
                f"the source {source_ip} and the destination {destination_ip} "
                "are not of the same IP version"
            )
        family = 0x10 if source_ip.version == 4 else 0x20
        block = source_ip.packed + destination_ip.packed
        block += source_port.to_bytes(2, "big") + destination_port.to_bytes(2, "big")
        return family | transport, block
    if isinstance(source, str | bytes) and isinstance(destination, str | bytes):
        return 0x30 | transport, _unix_path_field(source) + _unix_path_field(destination)
    raise ValueError(
        "source and destination must both be (ip, port) pairs, both Unix socket paths, "
        f"or both None; got {source!r} and {destination!r}"
    )


def _ip_endpoint(role: str, endpoint: tuple[str, int]) -> tuple[_IPAddress, int]:
    """Validate an ``(ip, port)`` pair; longer socket address tuples are accepted."""
    host, port = endpoint[0], endpoint[1]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"the {role} host {host!r} is not an IP address") from None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        raise ValueError(f"the {role} address {host!r} has a scope, which PROXY cannot carry")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 0xFFFF:
        raise ValueError(f"the {role} port {port!r} is not an integer in 0-65535")
    return address, port


def _unix_path_field(path: str | bytes) -> bytes:
    raw = os.fsencode(path)
    if len(raw) > _UNIX_PATH_LENGTH:
        raise ValueError(f"the Unix socket path {path!r} is longer than {_UNIX_PATH_LENGTH} bytes")
    if not raw.startswith(b"\0") and b"\0" in raw:
        raise ValueError(f"the Unix socket path {path!r} contains a NUL byte")
    return raw.ljust(_UNIX_PATH_LENGTH, b"\0")


def _encode_tlv(kind: int, value: bytes) -> bytes:
    if not 0 <= kind <= 0xFF:
        raise ValueError(f"a TLV type is one byte, 0-255, not {kind!r}")
    if len(value) > 0xFFFF:
        raise ValueError(f"a TLV value is at most 65535 bytes, not {len(value)}")
    return bytes([kind]) + len(value).to_bytes(2, "big") + bytes(value)


# --- Which peers may send a header --------------------------------------------------


class UnixSockets(enum.Enum):
    """The type of :data:`UNIX_SOCKETS`."""

    UNIX_SOCKETS = "unix"

    def __repr__(self) -> str:
        return "UNIX_SOCKETS"


#: In a list of trusted networks: peers on Unix sockets are trusted too.
UNIX_SOCKETS: Final = UnixSockets.UNIX_SOCKETS

TrustedNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network | UnixSockets


def parse_networks(specs: Iterable[str]) -> tuple[TrustedNetwork, ...]:
    """Parse trusted networks: ``"10.0.0.0/8"``, ``"::1"`` (one address), ``"unix"``.

    A single string is a list separated by commas or spaces, as a
    configuration file would hold it. Host bits set below the prefix
    (``10.0.0.1/8``) are refused, as they usually hide a typing mistake.
    Raises ValueError naming the bad entry.
    """
    if isinstance(specs, str):
        specs = specs.replace(",", " ").split()
    networks: list[TrustedNetwork] = []
    for spec in specs:
        text = spec.strip()
        if text.lower() == "unix":
            networks.append(UNIX_SOCKETS)
            continue
        try:
            networks.append(ipaddress.ip_network(text))
        except ValueError as exc:
            raise ValueError(
                f"bad trusted network {spec!r}: {exc}; write an address (127.0.0.1, ::1), "
                "a network (10.0.0.0/8, fd00::/8) or 'unix'"
            ) from None
    return tuple(networks)


def is_trusted(address: object, networks: Iterable[TrustedNetwork]) -> bool:
    """Whether a peer may send a PROXY header: is its address in ``networks``?

    ``address`` is what ``accept()`` returned: ``(host, port, ...)`` for IP,
    a str or bytes (often empty) for a Unix socket, which is trusted only if
    ``networks`` holds :data:`UNIX_SOCKETS`. An IPv4-mapped IPv6 peer
    (``::ffff:10.1.2.3``, as a dual-stack socket reports IPv4 clients) also
    matches IPv4 networks. Anything else is not trusted.
    """
    if isinstance(address, str | bytes | bytearray):
        return any(network is UNIX_SOCKETS for network in networks)
    if not isinstance(address, tuple) or not address or not isinstance(address[0], str):
        return False
    try:
        peer = ipaddress.ip_address(address[0].partition("%")[0])
    except ValueError:
        return False
    candidates: tuple[_IPAddress, ...] = (peer,)
    if isinstance(peer, ipaddress.IPv6Address) and peer.ipv4_mapped is not None:
        candidates += (peer.ipv4_mapped,)
    return any(
        candidate in network
        for network in networks
        if network is not UNIX_SOCKETS
        for candidate in candidates
    )
