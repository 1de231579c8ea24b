"""PROXY protocol v1 and v2: byte-exact cases from the specification, early and
useful errors, byte-at-a-time feeding, round trips and fuzzing. No network."""

from __future__ import annotations

import ast
import ipaddress
import itertools
import os
import socket
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Literal, get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from servekit import proxy
from servekit.proxy import (
    NEED_DATA,
    PP2_TYPE_ALPN,
    PP2_TYPE_AUTHORITY,
    PP2_TYPE_CRC32C,
    PP2_TYPE_NOOP,
    PP2_TYPE_UNIQUE_ID,
    UNIX_SOCKETS,
    V1_MAX_LENGTH,
    V2_SIGNATURE,
    ProxyFamily,
    ProxyHeader,
    ProxyHeaderError,
    ProxyParser,
    ProxyTransport,
    build_v1,
    build_v2,
    is_trusted,
    parse_networks,
)

SIG = b"\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a"  # spelled out as in the spec
FFFF6 = ":".join(["ffff"] * 8)
#: How this Python's ipaddress prints IPv4-mapped addresses (dotted from 3.13 on).
MAPPED = str(ipaddress.ip_address("::ffff:192.0.2.1"))
APP = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"  # what follows the header


def parse(data: bytes, **options: int) -> tuple[ProxyHeader, bytes]:
    """Feed everything at once; return the header and the trailing data."""
    parser = ProxyParser(**options)
    parser.receive_data(data)
    header = parser.next_event()
    assert isinstance(header, ProxyHeader)
    return header, parser.trailing_data


def parse_error(data: bytes, *, eof: bool = False, **options: int) -> str:
    """Feed everything (then EOF if asked); return the ProxyHeaderError's message."""
    parser = ProxyParser(**options)
    parser.receive_data(data)
    if eof:
        parser.receive_data(b"")
    with pytest.raises(ProxyHeaderError) as info:
        parser.next_event()
    return str(info.value)


def v2(ver_cmd: int, family: int, body: bytes, length: int | None = None) -> bytes:
    """A v2 header built by hand: the 16-byte fixed part, then ``body``."""
    size = len(body) if length is None else length
    return SIG + struct.pack("!BBH", ver_cmd, family, size) + body


def ip_block(source: str, destination: str, source_port: int, destination_port: int) -> bytes:
    """Both addresses in network order, then both ports (spec 2.2, union proxy_addr)."""
    addresses = ipaddress.ip_address(source).packed + ipaddress.ip_address(destination).packed
    return addresses + struct.pack("!HH", source_port, destination_port)


def tlv(kind: int, value: bytes) -> bytes:
    return struct.pack("!BH", kind, len(value)) + value


def unix_block(source: bytes, destination: bytes) -> bytes:
    return source.ljust(108, b"\0") + destination.ljust(108, b"\0")


# --- Version 1, byte-exact ----------------------------------------------------------


def test_signature_constant_matches_the_specification() -> None:
    assert V2_SIGNATURE == SIG
    assert V1_MAX_LENGTH == 107


@pytest.mark.parametrize(
    ("line", "length", "family", "source", "destination"),
    [
        (
            b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n",
            56,
            "AF_INET",
            ("255.255.255.255", 65535),
            ("255.255.255.255", 65535),
        ),
        (
            f"PROXY TCP6 {FFFF6} {FFFF6} 65535 65535\r\n".encode(),
            104,
            "AF_INET6",
            (FFFF6, 65535),
            (FFFF6, 65535),
        ),
        (
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
            47,
            "AF_INET",
            ("192.168.0.1", 56324),
            ("192.168.0.11", 443),
        ),
        (
            b"PROXY TCP4 0.0.0.0 10.0.0.1 0 0\r\n",
            33,
            "AF_INET",
            ("0.0.0.0", 0),
            ("10.0.0.1", 0),
        ),
        (  # IPv6 comes back canonical: lower case, zeros compressed
            b"PROXY TCP6 2001:DB8:0:0:0:0:0:1 ::1 1 2\r\n",
            41,
            "AF_INET6",
            ("2001:db8::1", 1),
            ("::1", 2),
        ),
        (  # inet_ntop writes IPv4-mapped addresses with a dotted tail
            b"PROXY TCP6 ::ffff:192.0.2.1 ::1 1 2\r\n",
            37,
            "AF_INET6",
            (MAPPED, 1),
            ("::1", 2),
        ),
    ],
)
def test_v1_tcp_lines(
    line: bytes,
    length: int,
    family: ProxyFamily,
    source: tuple[str, int],
    destination: tuple[str, int],
) -> None:
    assert len(line) == length
    header, trailing = parse(line + APP)
    assert header == ProxyHeader(
        version=1,
        command="PROXY",
        family=family,
        protocol="STREAM",
        source=source,
        destination=destination,
        tlvs=(),
        header_length=length,
    )
    assert trailing == APP


@pytest.mark.parametrize(
    ("line", "length"),
    [
        (b"PROXY UNKNOWN\r\n", 15),
        (f"PROXY UNKNOWN {FFFF6} {FFFF6} 65535 65535\r\n".encode(), 107),
        (b"PROXY UNKNOWN anything \xff at all\r\n", 33),
    ],
)
def test_v1_unknown_means_local_and_ignores_the_rest(line: bytes, length: int) -> None:
    assert len(line) == length
    header, trailing = parse(line + APP)
    assert header == ProxyHeader(1, "LOCAL", None, None, None, None, (), length)
    assert trailing == APP


def test_v1_line_of_exactly_107_bytes_is_accepted_and_108_is_not() -> None:
    line = b"PROXY UNKNOWN " + b"x" * 91 + b"\r\n"
    assert len(line) == 107
    assert parse(line)[0].header_length == 107
    assert "no CRLF within its first 107 bytes" in parse_error(
        b"PROXY UNKNOWN " + b"x" * 92 + b"\r\n"
    )


def test_v1_without_crlf_fails_at_byte_107_and_looks_no_further() -> None:
    parser = ProxyParser()
    parser.receive_data(b"PROXY UNKNOWN " + b"x" * 92)  # 106 bytes: the CRLF may still come
    assert parser.next_event() is NEED_DATA
    parser.receive_data(b"x")
    with pytest.raises(ProxyHeaderError, match="first 107 bytes"):
        parser.next_event()
    # Megabytes of junk are refused for the same reason, at once.
    assert "first 107 bytes" in parse_error(b"PROXY UNKNOWN " + b"y" * 1_000_000)


# --- Version 2, byte-exact ----------------------------------------------------------


def test_v2_tcp4() -> None:
    data = v2(0x21, 0x11, ip_block("192.0.2.1", "198.51.100.7", 56324, 443))
    assert len(data) == 28
    header, trailing = parse(data + APP)
    assert header == ProxyHeader(
        version=2,
        command="PROXY",
        family="AF_INET",
        protocol="STREAM",
        source=("192.0.2.1", 56324),
        destination=("198.51.100.7", 443),
        tlvs=(),
        header_length=28,
    )
    assert trailing == APP


def test_v2_tcp6() -> None:
    data = v2(0x21, 0x21, ip_block("2001:db8::1", "::ffff:192.0.2.1", 1, 65535))
    assert len(data) == 52
    header, trailing = parse(data + APP)
    assert header == ProxyHeader(
        2,
        "PROXY",
        "AF_INET6",
        "STREAM",
        ("2001:db8::1", 1),
        (MAPPED, 65535),
        (),
        52,
    )
    assert trailing == APP


@pytest.mark.parametrize(
    ("family_byte", "source", "family"),
    [(0x12, "10.1.2.3", "AF_INET"), (0x22, "fe80::1", "AF_INET6")],
)
def test_v2_udp(family_byte: int, source: str, family: ProxyFamily) -> None:
    data = v2(0x21, family_byte, ip_block(source, source, 53, 5353))
    header, trailing = parse(data)
    assert (header.family, header.protocol) == (family, "DGRAM")
    assert (header.source, header.destination) == ((source, 53), (source, 5353))
    assert trailing == b""


@pytest.mark.parametrize(("family_byte", "protocol"), [(0x31, "STREAM"), (0x32, "DGRAM")])
def test_v2_unix(family_byte: int, protocol: ProxyTransport) -> None:
    data = v2(0x21, family_byte, unix_block(b"/run/client.sock", b"\0abstract"))
    assert len(data) == 16 + 216
    header, trailing = parse(data + APP)
    assert header == ProxyHeader(
        2, "PROXY", "AF_UNIX", protocol, "/run/client.sock", "\0abstract", (), 232
    )
    assert trailing == APP


def test_v2_unix_path_stops_at_its_nul_and_unnamed_is_empty() -> None:
    data = v2(0x21, 0x31, b"/a\0junk".ljust(108, b"\0") + bytes(108))
    header, _ = parse(data)
    assert (header.source, header.destination) == ("/a", "")


def test_v2_unix_path_that_is_not_utf8_decodes_like_the_os() -> None:
    data = v2(0x21, 0x31, unix_block(b"/tmp/\xff.sock", b"/x"))
    header, _ = parse(data)
    assert header.source == os.fsdecode(b"/tmp/\xff.sock")


def test_v2_local_without_addresses() -> None:
    data = v2(0x20, 0x00, b"")
    assert len(data) == 16
    header, trailing = parse(data + APP)
    assert header == ProxyHeader(2, "LOCAL", None, None, None, None, (), 16)
    assert trailing == APP


def test_v2_local_ignores_the_address_block_it_announces() -> None:
    data = v2(0x20, 0x11, ip_block("1.2.3.4", "5.6.7.8", 1, 2) + tlv(PP2_TYPE_NOOP, b""))
    header, _ = parse(data)
    assert header == ProxyHeader(2, "LOCAL", None, None, None, None, ((PP2_TYPE_NOOP, b""),), 31)


def test_v2_local_may_combine_any_defined_family_and_protocol() -> None:
    header, _ = parse(v2(0x20, 0x10, bytes(12)))  # family ignored, as the spec says
    assert header.command == "LOCAL"


def test_v2_proxy_with_unspec_family_has_no_addresses() -> None:
    data = v2(0x21, 0x00, tlv(PP2_TYPE_AUTHORITY, b"example.com"))
    header, _ = parse(data + APP)
    assert header == ProxyHeader(
        2, "PROXY", None, None, None, None, ((PP2_TYPE_AUTHORITY, b"example.com"),), len(data)
    )


def test_v2_tlvs_are_returned_raw_and_in_order() -> None:
    tlvs = (
        (PP2_TYPE_ALPN, b"h2"),
        (PP2_TYPE_AUTHORITY, b"example.com"),
        (PP2_TYPE_NOOP, b""),
        (PP2_TYPE_UNIQUE_ID, bytes(range(128))),
        (0xE0, b"\x00\x01custom"),
        (0xE0, b"twice"),
    )
    body = ip_block("127.0.0.1", "127.0.0.2", 1000, 2000) + b"".join(tlv(*t) for t in tlvs)
    data = v2(0x21, 0x11, body)
    header, trailing = parse(data + b"\x00rest")
    assert header.tlvs == tlvs
    assert header.header_length == 16 + 12 + sum(3 + len(value) for _, value in tlvs)
    assert header.source == ("127.0.0.1", 1000)
    assert trailing == b"\x00rest"


def test_crc32c_matches_the_standard_check_value() -> None:
    assert proxy._crc32c(b"123456789") == 0xE3069283  # RFC 3720 / iSCSI check value
    assert proxy._crc32c(b"") == 0


def test_v2_crc32c_is_verified() -> None:
    data = build_v2(("10.0.0.1", 1), ("10.0.0.2", 2), tlvs=[(PP2_TYPE_ALPN, b"h2")], crc32c=True)
    header, _ = parse(data)
    checksum = dict(header.tlvs)[PP2_TYPE_CRC32C]
    assert int.from_bytes(checksum, "big") == proxy._crc32c(data[:-4] + bytes(4))
    damaged = data[:19] + b"\x09" + data[20:]  # the source address's last byte
    assert "CRC32C" in parse_error(damaged)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (tlv(PP2_TYPE_CRC32C, b"\x00\x00\x00"), "holds 3 bytes, not 4"),
        (tlv(PP2_TYPE_CRC32C, bytes(4)) * 2, "more than one CRC32C"),
    ],
)
def test_v2_malformed_crc32c(body: bytes, message: str) -> None:
    assert message in parse_error(v2(0x21, 0x00, body))


# --- Incremental feeding ----------------------------------------------------------

VALID_HEADERS = [
    b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n",
    f"PROXY TCP6 {FFFF6} {FFFF6} 65535 65535\r\n".encode(),
    b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
    b"PROXY UNKNOWN\r\n",
    f"PROXY UNKNOWN {FFFF6} {FFFF6} 65535 65535\r\n".encode(),
    v2(0x21, 0x11, ip_block("192.0.2.1", "198.51.100.7", 56324, 443)),
    v2(0x21, 0x21, ip_block("2001:db8::1", "::1", 1, 2) + tlv(PP2_TYPE_ALPN, b"h2")),
    v2(0x21, 0x12, ip_block("10.0.0.1", "10.0.0.2", 53, 53)),
    v2(0x21, 0x31, unix_block(b"/run/a.sock", b"\0b")),
    v2(0x20, 0x00, b""),
    v2(0x20, 0x00, tlv(PP2_TYPE_NOOP, b"pad")),
    build_v2(("1.2.3.4", 5), ("6.7.8.9", 10), tlvs=[(0xE1, b"x" * 300)], crc32c=True),
]


@pytest.mark.parametrize("data", VALID_HEADERS)
def test_byte_at_a_time_gives_the_same_header_and_keeps_the_trailing_bytes(data: bytes) -> None:
    expected, _ = parse(data)
    assert expected.header_length == len(data)
    parser = ProxyParser()
    for index, byte in enumerate(data):
        parser.receive_data(bytes([byte]))
        event = parser.next_event()
        if index < len(data) - 1:
            assert event is NEED_DATA, f"complete after {index + 1} of {len(data)} bytes"
    assert event == expected
    assert parser.trailing_data == b""
    for byte in APP:
        parser.receive_data(bytes([byte]))
        assert parser.next_event() is event  # the same header, again and again
    assert parser.trailing_data == APP
    assert parser.header is event


def test_a_long_v2_header_fed_byte_by_byte_is_parsed_in_linear_time() -> None:
    # 1360 TLVs: a parser that re-walked every TLV on every byte would take
    # ~2.8 million steps here; this one takes one per TLV.
    data = build_v2(None, None, tlvs=[(PP2_TYPE_NOOP, b"")] * 1360)
    assert len(data) == 16 + 3 * 1360
    parser = ProxyParser()
    for byte in data:
        parser.receive_data(bytes([byte]))
        event = parser.next_event()
    assert isinstance(event, ProxyHeader)
    assert len(event.tlvs) == 1360


def test_empty_parser_needs_data_and_trailing_data_waits_for_the_header() -> None:
    parser = ProxyParser()
    assert parser.next_event() is NEED_DATA
    assert parser.header is None
    with pytest.raises(RuntimeError, match="not complete"):
        _ = parser.trailing_data
    assert "0 bytes buffered" in repr(parser)
    assert repr(NEED_DATA) == "NEED_DATA"


# --- Malformed input: early, clear errors -------------------------------------------


@pytest.mark.parametrize("signature", [b"PROXY ", SIG])
def test_a_wrong_signature_byte_fails_as_soon_as_it_arrives(signature: bytes) -> None:
    for bad_at in range(len(signature)):
        parser = ProxyParser()
        if bad_at:  # b"" would mean end of stream
            parser.receive_data(signature[:bad_at])
        assert parser.next_event() is NEED_DATA
        parser.receive_data(bytes([signature[bad_at] ^ 0x20]))
        with pytest.raises(ProxyHeaderError, match="not a PROXY protocol header"):
            parser.next_event()


@pytest.mark.parametrize(
    "data",
    [b"G", b"\x16\x03\x01", b"SSH-2.0-", b"proxy TCP4", b"\x00", b" PROXY"],
)
def test_other_protocols_fail_on_their_first_bytes(data: bytes) -> None:
    message = parse_error(data)
    assert "not a PROXY protocol header" in message
    assert repr(data[:16]) in message


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"PROXYTCP4", "does not start with b'PROXY '"),
        (b"PROXY  TCP4", "unknown PROXY v1 protocol b''"),
        (b"PROXY tcp4", "unknown PROXY v1 protocol b'tcp4'"),
        (b"PROXY TCP5", "unknown PROXY v1 protocol b'TCP5'"),
        (b"PROXY UDP4 ", "unknown PROXY v1 protocol b'UDP4'"),
        (b"PROXY UNKNOWNX", "unknown PROXY v1 protocol b'UNKNOWNX'"),
        (b"PROXY TCP4\r\n", "is incomplete"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "is incomplete"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3", "more than 4 fields"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 ", "more than 4 fields"),
        (b"PROXY TCP4 1.2.3.4  5.6.7.8", "destination address is empty"),
        (b"PROXY TCP4  1.2.3.4", "source address is empty"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 \r\n", "destination port is missing"),
        (b"PROXY UNKNOWN\n", "CR or LF that is not part of a CRLF"),
        (b"PROXY UNKNOWN\rX", "CR or LF that is not part of a CRLF"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n\r\n", "CR or LF"),
        (b"PROXY TCP4 \t", "holds b'\\t'"),
        (b"PROXY TCP4 ::1 ", "cannot appear in the IPv4 address TCP4 needs"),
    ],
)
def test_v1_grammar_errors(data: bytes, message: str) -> None:
    assert message in parse_error(data)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"PROXY TCP6 1.2.3.4 1.2.3.4 1 2", "'1.2.3.4' is IPv4, but TCP6 announces IPv6"),
        (b"PROXY TCP6 ::1 10.0.0.1 1 2", "destination address '10.0.0.1' is IPv4"),
        (b"PROXY TCP4 ::1 ::1 1 2", "IPv4 address TCP4 needs"),
        (b"PROXY TCP4 256.1.1.1 1.1.1.1 1 2", "'256.1.1.1' is not a valid IPv4 address"),
        (b"PROXY TCP4 01.2.3.4 1.1.1.1 1 2", "'01.2.3.4' is not a valid IPv4 address"),
        (b"PROXY TCP4 1.2.3 1.1.1.1 1 2", "'1.2.3' is not a valid IPv4 address"),
        (b"PROXY TCP6 1::2::3 ::1 1 2", "'1::2::3' is not a valid IPv6 address"),
        (b"PROXY TCP6 fe80::1%eth0 ::1 1 2", "holds b'%'"),
        (b"PROXY TCP4 1.2.3.4 1.1.1.1 65536 2", "source port 65536 is out of range 0-65535"),
        (b"PROXY TCP4 1.2.3.4 1.1.1.1 1 99999", "destination port 99999 is out of range"),
        (b"PROXY TCP4 1.2.3.4 1.1.1.1 080 2", "'080' has a leading zero"),
        (b"PROXY TCP4 1.2.3.4 1.1.1.1 00 2", "'00' has a leading zero"),
        (b"PROXY TCP4 1.2.3.4 1.1.1.1 +1 2", "holds b'+', which cannot appear in a port"),
        (b"PROXY TCP4 1.2.3.4 1.1.1.1 -1 2", "holds b'-'"),
        (b"PROXY TCP4 1.2.3.4 1.1.1.1 1 123456", "longer than 5 characters"),
        (b"PROXY TCP4 1.2.3.4 1.1.1.1 0x1 2", "holds b'x'"),
    ],
)
def test_v1_bad_addresses_and_ports(line: bytes, message: str) -> None:
    assert message in parse_error(line + b"\r\n")


def test_v1_bad_field_fails_before_the_line_ends() -> None:
    parser = ProxyParser()
    parser.receive_data(b"PROXY TCP4 1.2.3.4 5.6.7.8 12")
    assert parser.next_event() is NEED_DATA
    parser.receive_data(b"x")
    with pytest.raises(ProxyHeaderError, match="source port"):
        parser.next_event()


def test_v1_leaves_the_bytes_after_crlf_alone() -> None:
    # Trailing bytes are the application's, whatever they look like.
    header, trailing = parse(b"PROXY UNKNOWN\r\n\n\r\xff" + b"z" * 200)
    assert header.header_length == 15
    assert trailing == b"\n\r\xff" + b"z" * 200


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (SIG + b"\x11", "unsupported PROXY v2 version 1 (byte 13 is 0x11)"),
        (SIG + b"\x31", "unsupported PROXY v2 version 3"),
        (SIG + b"\x01", "unsupported PROXY v2 version 0"),
        (SIG + b"\x22", "unknown PROXY v2 command 2 (byte 13 is 0x22)"),
        (SIG + b"\x2f", "unknown PROXY v2 command 15"),
        (SIG + b"\x21\x41", "unknown PROXY v2 address family 4"),
        (SIG + b"\x20\xf0", "unknown PROXY v2 address family 15"),
        (SIG + b"\x21\x13", "unknown PROXY v2 transport protocol 3"),
        (SIG + b"\x21\x10", "pairs AF_INET with UNSPEC"),
        (SIG + b"\x21\x01", "pairs AF_UNSPEC with STREAM"),
        (SIG + b"\x21\x30", "pairs AF_UNIX with UNSPEC"),
        (SIG + b"\x21\x11\x00\x0b", "announces 11 bytes after its fixed part, fewer than the 12"),
        (SIG + b"\x21\x21\x00\x0c", "fewer than the 36 of an AF_INET6 address block"),
        (SIG + b"\x21\x31\x00\xd7", "fewer than the 216 of an AF_UNIX address block"),
        (SIG + b"\x20\x11\x00\x00", "fewer than the 12"),
        (SIG + b"\x21\x11\x0f\xf1", "announces 4097 bytes, over the limit max_v2_length=4096"),
        (SIG + b"\x21\x00\xff\xff", "announces 65551 bytes, over the limit max_v2_length"),
    ],
)
def test_v2_fixed_part_errors_need_no_more_bytes(data: bytes, message: str) -> None:
    assert message in parse_error(data)


def test_v2_max_length_is_configurable_and_counts_the_whole_header() -> None:
    data = v2(0x21, 0x11, ip_block("1.2.3.4", "1.2.3.4", 1, 2) + tlv(0xE0, b"x" * 100))
    assert len(data) == 131
    assert parse(data, max_v2_length=131)[0].header_length == 131
    assert "max_v2_length=130" in parse_error(data[:16], max_v2_length=130)
    long = build_v2(None, None, tlvs=[(0xE0, b"x" * 65000)])
    assert parse(long, max_v2_length=proxy.V2_MAX_LENGTH)[0].tlvs == ((0xE0, b"x" * 65000),)


@pytest.mark.parametrize("limit", [0, 15, 16 + 65536])
def test_max_v2_length_must_be_a_possible_size(limit: int) -> None:
    with pytest.raises(ValueError, match="max_v2_length"):
        ProxyParser(max_v2_length=limit)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            tlv(1, b"ab")[:-1],
            "type 0x01 at offset 28 of the PROXY v2 header announces 2 bytes, but only 1 remain",
        ),
        (tlv(1, b"") + b"\x02\x00", "truncated TLV at offset 31 of the PROXY v2 header: 2 bytes"),
        (b"\x05", "truncated TLV at offset 28"),
        (tlv(0x20, b"x" * 10) + struct.pack("!BH", 2, 0xFFFF), "announces 65535 bytes"),
    ],
)
def test_v2_truncated_tlvs(body: bytes, message: str) -> None:
    data = v2(0x21, 0x11, ip_block("1.2.3.4", "1.2.3.4", 1, 2) + body)
    assert message in parse_error(data + APP)


def test_v2_truncated_tlv_fails_when_its_head_arrives() -> None:
    data = v2(0x21, 0x00, struct.pack("!BH", 0xE0, 50), length=20)
    parser = ProxyParser()
    parser.receive_data(data[:18])
    assert parser.next_event() is NEED_DATA  # the TLV's head is not complete yet
    parser.receive_data(data[18:])
    with pytest.raises(ProxyHeaderError, match="announces 50 bytes, but only 17 remain"):
        parser.next_event()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"P",
        b"PROXY TCP4 1.2.3.4",
        b"PROXY UNKNOWN\r",
        SIG[:5],
        SIG + b"\x21\x11\x00",
        v2(0x21, 0x11, ip_block("1.2.3.4", "1.2.3.4", 1, 2))[:-1],
    ],
)
def test_eof_before_the_header_is_complete(data: bytes) -> None:
    message = parse_error(data, eof=True)
    assert message == (
        f"connection closed after {len(data)} bytes, before the PROXY header was complete"
    )


def test_malformed_input_is_reported_before_eof() -> None:
    assert "not a PROXY protocol header" in parse_error(b"HELO", eof=True)


def test_errors_are_sticky_and_eof_is_final() -> None:
    parser = ProxyParser()
    parser.receive_data(b"X")
    with pytest.raises(ProxyHeaderError) as first:
        parser.next_event()
    parser.receive_data(b"PROXY UNKNOWN\r\n")
    with pytest.raises(ProxyHeaderError) as second:
        parser.next_event()
    assert str(first.value) == str(second.value)
    assert "malformed header" in repr(parser)

    parser = ProxyParser()
    parser.receive_data(b"PROXY")
    parser.receive_data(b"")
    with pytest.raises(RuntimeError, match="after the end of the stream"):
        parser.receive_data(b" UNKNOWN\r\n")
    assert "peer closed" in repr(parser)


def test_eof_after_a_complete_header_is_not_an_error() -> None:
    parser = ProxyParser()
    parser.receive_data(b"PROXY UNKNOWN\r\nbye")
    parser.receive_data(b"")
    header = parser.next_event()
    assert isinstance(header, ProxyHeader)
    assert parser.trailing_data == b"bye"


# --- Building headers ----------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "destination", "line"),
    [
        (None, None, b"PROXY UNKNOWN\r\n"),
        (
            ("192.168.0.1", 56324),
            ("192.168.0.11", 443),
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
        ),
        (("2001:DB8::0:1", 0), ("::1", 65535), b"PROXY TCP6 2001:db8::1 ::1 0 65535\r\n"),
        (("::1", 1, 0, 0), ("::2", 2, 0, 0), b"PROXY TCP6 ::1 ::2 1 2\r\n"),  # getpeername()
    ],
)
def test_build_v1(
    source: tuple[str, int] | None, destination: tuple[str, int] | None, line: bytes
) -> None:
    assert build_v1(source, destination) == line


def test_build_v2_matches_the_hand_built_bytes() -> None:
    tlvs = [(PP2_TYPE_ALPN, b"h2")]
    assert build_v2(("192.0.2.1", 56324), ("198.51.100.7", 443), tlvs=tlvs) == v2(
        0x21, 0x11, ip_block("192.0.2.1", "198.51.100.7", 56324, 443) + tlv(PP2_TYPE_ALPN, b"h2")
    )
    assert build_v2(("::1", 1), ("::2", 2), protocol="DGRAM") == v2(
        0x21, 0x22, ip_block("::1", "::2", 1, 2)
    )
    assert build_v2("/a", b"\0b") == v2(0x21, 0x31, unix_block(b"/a", b"\0b"))
    assert build_v2(None, None) == v2(0x21, 0x00, b"")
    assert build_v2(None, None, command="LOCAL") == v2(0x20, 0x00, b"")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: build_v1(("1.2.3.4", 1), None), "both the source and the destination"),
        (lambda: build_v1(("1.2.3.4", 1), ("::1", 2)), "not of the same IP version"),
        (lambda: build_v1(("localhost", 1), ("1.2.3.4", 2)), "'localhost' is not an IP"),
        (lambda: build_v1(("1.2.3.4", 65536), ("1.2.3.4", 2)), "port 65536 is not"),
        (lambda: build_v1(("1.2.3.4", True), ("1.2.3.4", 2)), "port True is not"),
        (lambda: build_v1(("fe80::1%eth0", 1), ("::1", 2)), "has a scope"),
        (lambda: build_v2(("1.2.3.4", 1), ("::1", 2)), "not of the same IP version"),
        (lambda: build_v2(("1.2.3.4", 1), "/path"), "both be (ip, port) pairs"),
        (lambda: build_v2(("1.2.3.4", 1), None), "both be (ip, port) pairs"),
        (lambda: build_v2(("1.2.3.4", 1), ("1.2.3.4", 2), command="LOCAL"), "no addresses"),
        (lambda: build_v2(None, None, command="BOGUS"), "command must be"),  # type: ignore[arg-type]
        (lambda: build_v2(None, None, protocol="RAW"), "'STREAM' or 'DGRAM', not 'RAW'"),  # type: ignore[arg-type]
        (lambda: build_v2(None, None, protocol=1), "'STREAM' or 'DGRAM', not 1"),  # type: ignore[arg-type]
        (lambda: build_v2("/" + "x" * 108, "/y"), "longer than 108 bytes"),
        (lambda: build_v2("/a\0b", "/y"), "contains a NUL"),
        (lambda: build_v2(None, None, tlvs=[(256, b"")]), "TLV type is one byte"),
        (lambda: build_v2(None, None, tlvs=[(1, bytes(65536))]), "at most 65535 bytes"),
        (lambda: build_v2(None, None, tlvs=[(1, bytes(40000))] * 2), "at most 65535"),
    ],
)
def test_build_errors(call: Callable[[], bytes], message: str) -> None:
    with pytest.raises(ValueError) as info:
        call()
    assert message in str(info.value)


@pytest.mark.parametrize("kind", [socket.SOCK_STREAM, socket.SOCK_DGRAM])
def test_build_v2_refuses_the_socket_constants_it_used_to_take(kind: socket.SocketKind) -> None:
    """``protocol`` was a socket.SOCK_* before; an old caller hears why, not a wrong header."""
    with pytest.raises(ValueError, match=r"protocol must be 'STREAM' or 'DGRAM', not "):
        build_v2(None, None, protocol=kind)  # type: ignore[arg-type]


# --- Hypothesis ----------------------------------------------------------------

_junk = st.binary(max_size=300)
_fuzz_input = st.one_of(
    _junk,
    st.builds(lambda tail: b"PROXY " + tail, _junk),
    st.builds(
        lambda tail: b"PROXY " + tail,
        st.text(alphabet="TCP46UNKOW 0123456789abcdef.:\r\n", max_size=120).map(str.encode),
    ),
    st.builds(lambda tail: SIG + tail, _junk),
    st.builds(
        lambda head, tail: SIG + head + tail,
        st.sampled_from([b"\x20\x00", b"\x21\x11", b"\x21\x21", b"\x21\x31", b"\x21\x12"]),
        _junk,
    ),
)


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(cut, len(data)) for cut in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@settings(max_examples=300)
@given(data=_fuzz_input, cuts=st.lists(st.integers(0, 400), max_size=6), eof=st.booleans())
def test_fuzz_arbitrary_bytes_only_ever_raise_proxy_header_error(
    data: bytes, cuts: list[int], eof: bool
) -> None:
    parser = ProxyParser(max_v2_length=256)
    event: ProxyHeader | proxy.NeedData = NEED_DATA
    error = None
    try:
        for chunk in [*_chunks(data, cuts), *([b""] if eof else [])]:
            parser.receive_data(chunk)
            event = parser.next_event()
    except ProxyHeaderError as exc:  # the one exception malformed input may cause
        error = str(exc)
    if error is not None:
        assert error
        return
    if isinstance(event, ProxyHeader):
        limit = V1_MAX_LENGTH if event.version == 1 else 256
        assert event.header_length <= min(limit, len(data))
        assert parser.trailing_data == data[event.header_length :]
    else:
        assert not eof
        assert len(data) < max(V1_MAX_LENGTH, 256)


@settings(max_examples=150)
@given(
    data=st.sampled_from(VALID_HEADERS),
    trailing=st.binary(max_size=40),
    cuts=st.lists(st.integers(0, 400), max_size=10),
)
def test_fuzz_any_split_of_a_valid_header_gives_the_same_result(
    data: bytes, trailing: bytes, cuts: list[int]
) -> None:
    expected, _ = parse(data)
    parser = ProxyParser()
    events = []
    for chunk in _chunks(data + trailing, cuts):
        parser.receive_data(chunk)
        events.append(parser.next_event())
    assert events[-1] == expected
    assert parser.trailing_data == trailing


_ports = st.integers(0, 65535)


def _endpoints(version: Literal[4, 6]) -> st.SearchStrategy[tuple[str, int]]:
    return st.tuples(st.ip_addresses(v=version).map(str), _ports)


@settings(max_examples=100)
@given(version=st.sampled_from([4, 6]), data=st.data())
def test_fuzz_v1_round_trip(version: Literal[4, 6], data: st.DataObject) -> None:
    source, destination = data.draw(_endpoints(version)), data.draw(_endpoints(version))
    line = build_v1(source, destination)
    assert len(line) <= V1_MAX_LENGTH
    header, trailing = parse(line + b"after")
    assert (header.source, header.destination) == (source, destination)
    assert header.family == ("AF_INET" if version == 4 else "AF_INET6")
    assert header.protocol == "STREAM"
    assert trailing == b"after"


_unix_paths = st.one_of(
    st.binary(max_size=108).filter(lambda raw: b"\0" not in raw),
    st.binary(min_size=1, max_size=107)
    .filter(lambda raw: b"\0" not in raw)
    .map(lambda raw: b"\0" + raw),
).map(os.fsdecode)


_tlv_types = st.integers(0, 255).filter(lambda kind: kind != PP2_TYPE_CRC32C)


@settings(max_examples=100)
@given(
    addresses=st.one_of(
        st.tuples(_endpoints(4), _endpoints(4)),
        st.tuples(_endpoints(6), _endpoints(6)),
        st.tuples(_unix_paths, _unix_paths),
    ),
    protocol=st.sampled_from(get_args(ProxyTransport)),
    tlvs=st.lists(st.tuples(_tlv_types, st.binary(max_size=30)), max_size=4),
    crc32c=st.booleans(),
)
def test_fuzz_v2_round_trip(
    addresses: tuple[tuple[str, int] | str, tuple[str, int] | str],
    protocol: ProxyTransport,
    tlvs: list[tuple[int, bytes]],
    crc32c: bool,
) -> None:
    source, destination = addresses
    data = build_v2(source, destination, protocol=protocol, tlvs=tlvs, crc32c=crc32c)
    header, trailing = parse(data + b"after")
    assert (header.source, header.destination, header.protocol) == (source, destination, protocol)
    if isinstance(source, str):
        assert header.family == "AF_UNIX"
    else:
        assert header.family == ("AF_INET6" if ":" in source[0] else "AF_INET")
    assert header.tlvs[: len(tlvs)] == tuple(tlvs)
    assert len(header.tlvs) == len(tlvs) + crc32c
    assert header.header_length == len(data)
    assert trailing == b"after"


# --- Trusted peers --------------------------------------------------------------


def test_parse_networks() -> None:
    assert parse_networks(["127.0.0.1/32", "10.0.0.0/8", "::1", "fd00::/8", "unix"]) == (
        ipaddress.IPv4Network("127.0.0.1/32"),
        ipaddress.IPv4Network("10.0.0.0/8"),
        ipaddress.IPv6Network("::1/128"),
        ipaddress.IPv6Network("fd00::/8"),
        UNIX_SOCKETS,
    )
    assert parse_networks(["192.0.2.7"]) == (ipaddress.IPv4Network("192.0.2.7/32"),)
    assert parse_networks("unix") == (UNIX_SOCKETS,)
    assert parse_networks(" 10.0.0.0/8, ::1  UNIX ") == (
        ipaddress.IPv4Network("10.0.0.0/8"),
        ipaddress.IPv6Network("::1/128"),
        UNIX_SOCKETS,
    )
    assert parse_networks([]) == ()
    assert repr(UNIX_SOCKETS) == "UNIX_SOCKETS"


@pytest.mark.parametrize(
    "bad", ["10.0.0.0/33", "10.0.0.1/8", "example.com", "", "1.2.3", "::1/129"]
)
def test_parse_networks_names_the_bad_entry(bad: str) -> None:
    with pytest.raises(ValueError, match="bad trusted network") as info:
        parse_networks(["127.0.0.1", bad])
    assert repr(bad) in str(info.value)


@pytest.mark.parametrize(
    ("address", "trusted"),
    [
        (("127.0.0.1", 5000), True),
        (("10.200.3.4", 1), True),
        (("11.0.0.1", 1), False),
        (("::1", 1, 0, 0), True),
        (("::2", 1, 0, 0), False),
        (("::ffff:10.1.2.3", 1, 0, 0), True),  # IPv4 client on a dual-stack socket
        (("::ffff:11.1.2.3", 1, 0, 0), False),
        (("fe80::1%eth0", 1, 0, 2), True),
        (("fe81::1", 1), False),
        ("", False),  # Unix peers need "unix"
        ("/run/client.sock", False),
        (b"\0abstract", False),
        (("not an address", 1), False),
        ((), False),
        (None, False),
    ],
)
def test_is_trusted(address: object, trusted: bool) -> None:
    networks = parse_networks(["127.0.0.1", "10.0.0.0/8", "::1", "fe80::/64"])
    assert is_trusted(address, networks) is trusted


@pytest.mark.parametrize("address", ["", "/run/client.sock", b"", b"\0abstract"])
def test_unix_peers_are_trusted_only_with_the_marker(address: str | bytes) -> None:
    assert is_trusted(address, parse_networks(["127.0.0.1", "unix"]))
    assert not is_trusted(address, parse_networks(["0.0.0.0/0", "::/0"]))
    assert not is_trusted(("127.0.0.1", 1), parse_networks("unix"))


def test_nothing_is_trusted_by_an_empty_list() -> None:
    assert not is_trusted(("127.0.0.1", 1), ())
    assert not is_trusted("", ())


# --- Public surface -------------------------------------------------------------


def test_family_and_protocol_are_the_specifications_names() -> None:
    assert get_args(ProxyFamily) == ("AF_INET", "AF_INET6", "AF_UNIX")
    assert get_args(ProxyTransport) == ("STREAM", "DGRAM")
    seen: set[tuple[str | None, str | None]] = set()
    for byte in (0x11, 0x12, 0x21, 0x22, 0x31, 0x32):
        width = {1: 12, 2: 36, 3: 216}[byte >> 4]
        header, _ = parse(v2(0x21, byte, bytes(width)))
        assert type(header.family) is str
        assert type(header.protocol) is str
        seen.add((header.family, header.protocol))
    assert seen == {(f, p) for f in get_args(ProxyFamily) for p in get_args(ProxyTransport)}


def test_the_module_imports_no_io() -> None:
    """Sans-IO (issue 12): no socket, ssl, select, selectors or asyncio, not even for constants."""
    tree = ast.parse(Path(proxy.__file__).read_text(encoding="utf-8"))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            imported.add(node.module.partition(".")[0])
    assert not imported & {"socket", "ssl", "select", "selectors", "asyncio"}, imported


def test_all_is_the_intended_public_names() -> None:
    assert set(proxy.__all__) == {
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
    }
    assert len(proxy.__all__) == len(set(proxy.__all__))
    for name in proxy.__all__:
        assert hasattr(proxy, name), name
    # Every other top-level name is private or imported.
    for name in vars(proxy):
        # "@py_builtins", "@pytest_ar": pytest rewrites the asserts of every module of
        # a distribution that has a pytest11 plugin (servekit.testing's).
        if name not in proxy.__all__ and not name.startswith(("_", "@")):
            assert name in {
                "annotations",
                "enum",
                "ipaddress",
                "os",
                "dataclass",
                "TYPE_CHECKING",
                "Final",
                "Literal",
                "TypeAlias",
            }, name
