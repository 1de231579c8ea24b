"""Listen-address parsing: every accepted form, and errors that name the bad part."""

from __future__ import annotations

import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from servekit.addresses import ACCEPTED_FORMS, format_address, parse_address


@pytest.mark.parametrize(
    ("text", "transport", "family", "address"),
    [
        ("127.0.0.1:8000", "tcp", socket.AF_INET, ("127.0.0.1", 8000)),
        ("tcp://127.0.0.1:0", "tcp", socket.AF_INET, ("127.0.0.1", 0)),
        (":8000", "tcp", socket.AF_INET, ("0.0.0.0", 8000)),
        ("localhost:80", "tcp", None, ("localhost", 80)),
        ("udp://10.0.0.1:53", "udp", socket.AF_INET, ("10.0.0.1", 53)),
        ("[::]:8000", "tcp", socket.AF_INET6, ("::", 8000)),
        ("[::1]:65535", "tcp", socket.AF_INET6, ("::1", 65535)),
        ("udp://[fe80::1%eth0]:5353", "udp", socket.AF_INET6, ("fe80::1%eth0", 5353)),
        ("unix:/run/app.sock", "unix", socket.AF_UNIX, "/run/app.sock"),
        ("unix:relative.sock", "unix", socket.AF_UNIX, "relative.sock"),
        ("unix-dgram:/dev/log", "unix-dgram", socket.AF_UNIX, "/dev/log"),
        ("unix:@servekit", "unix", socket.AF_UNIX, "\0servekit"),
        ("fd://3", "fd", None, 3),
        ("systemd", "systemd", None, None),
        ("systemd:web", "systemd", None, "web"),
    ],
)
def test_accepted_forms(text: str, transport: str, family: int | None, address: object) -> None:
    parsed = parse_address(text)
    assert (parsed.transport, parsed.family, parsed.address) == (transport, family, address)
    assert parsed.text == text


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("http://x:80", "unknown scheme 'http://'"),
        ("127.0.0.1", "the port is missing"),
        ("127.0.0.1:http", "the port 'http' is not a number"),
        ("127.0.0.1:70000", "out of range"),
        ("::1:8000", "needs brackets"),
        ("[::1:8000", "no closing"),
        ("[::1]8000", "port is missing after"),
        ("[nothost]:1", "not an IPv6 address"),
        ("bad_host!:1", "neither an IP address nor a host name"),
        ("unix:", "the socket path is empty"),
        ("unix:@", "abstract name after '@' is empty"),
        ("fd://x", "not a non-negative integer"),
        ("fd://-1", "not a non-negative integer"),
        ("systemd:", "not a systemd socket name"),
        ("systemd:a b", "not a systemd socket name"),
    ],
)
def test_bad_addresses_name_the_bad_part_and_the_forms(text: str, names: str) -> None:
    with pytest.raises(ValueError, match="accepted forms") as info:
        parse_address(text)
    assert names in str(info.value)
    assert ACCEPTED_FORMS in str(info.value)


@pytest.mark.parametrize(
    "text",
    ["tcp://127.0.0.1:8000", "udp://[::1]:53", "unix:/tmp/x.sock", "unix-dgram:/dev/log",
     "unix:@name"],
)  # fmt: skip
def test_format_reads_back(text: str) -> None:
    parsed = parse_address(text)
    assert parsed.family is not None
    assert parsed.socket_type is not None
    assert format_address(parsed.family, parsed.socket_type, parsed.address) == text


@given(st.text(max_size=40))
def test_parser_never_fails_unexpectedly(text: str) -> None:
    try:
        parse_address(text)
    except ValueError as exc:
        message = str(exc)
    else:
        return
    assert "accepted forms" in message
