"""servekit.rpc.record: ONC RPC record marking (RFC 5531, section 11), with no network."""

from __future__ import annotations

import itertools
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from servekit.rpc import record
from servekit.rpc.record import (
    CLOSED,
    DEFAULT_MAX_FRAGMENT,
    DEFAULT_MAX_FRAGMENTS,
    DEFAULT_MAX_RECORD_SIZE,
    HEADER_LENGTH,
    LAST_FRAGMENT,
    NEED_DATA,
    RecordError,
    RecordReader,
    encode_record,
    record_pieces,
)

GiB = 1024**3


def header(length: int, *, last: bool) -> bytes:
    """A fragment header, built by hand (not with the module's code)."""
    return (length | (0x8000_0000 if last else 0)).to_bytes(4, "big")


def fragment(data: bytes, *, last: bool) -> bytes:
    return header(len(data), last=last) + data


def drain(reader: RecordReader) -> list[bytes]:
    """Every whole record the reader has, until it needs data (or the stream is over)."""
    records: list[bytes] = []
    while True:
        result = reader.next_record()
        if result is NEED_DATA or result is CLOSED:
            return records
        records.append(result)


# --- the public surface ------------------------------------------------------------------------


def test_all_is_the_public_surface() -> None:
    assert sorted(record.__all__) == sorted({
        "CLOSED", "DEFAULT_MAX_FRAGMENT", "DEFAULT_MAX_FRAGMENTS", "DEFAULT_MAX_RECORD_SIZE",
        "HEADER_LENGTH", "LAST_FRAGMENT", "MAX_FRAGMENT_LENGTH", "NEED_DATA", "Closed",
        "NeedData", "RecordError", "RecordLimit", "RecordReader", "encode_record",
        "record_pieces",
    })  # fmt: skip
    for name in record.__all__:
        assert hasattr(record, name)


def test_the_documented_defaults() -> None:
    assert DEFAULT_MAX_RECORD_SIZE == 1024 * 1024
    assert DEFAULT_MAX_FRAGMENTS == 1024
    assert DEFAULT_MAX_FRAGMENT + HEADER_LENGTH == 64 * 1024  # libtirpc's TCP sendsize
    reader = RecordReader()
    assert (reader.max_record_size, reader.max_fragments) == (1024 * 1024, 1024)
    assert issubclass(RecordError, ValueError)


@pytest.mark.parametrize(
    "kwargs", [{"max_record_size": -1}, {"max_fragments": 0}, {"max_fragments": -5}]
)
def test_the_reader_refuses_impossible_limits(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        RecordReader(**kwargs)


# --- the writer --------------------------------------------------------------------------------


def test_a_small_record_is_one_last_fragment() -> None:
    assert encode_record(b"abc") == b"\x80\x00\x00\x03abc"
    assert encode_record(b"") == b"\x80\x00\x00\x00"
    assert record_pieces(b"") == [b"\x80\x00\x00\x00"]
    payload = b"x" * DEFAULT_MAX_FRAGMENT
    assert encode_record(payload) == header(DEFAULT_MAX_FRAGMENT, last=True) + payload


def test_a_large_record_is_split_at_max_fragment() -> None:
    assert encode_record(b"hello world", 4) == (
        fragment(b"hell", last=False) + fragment(b"o wo", last=False) + fragment(b"rld", last=True)
    )
    assert encode_record(b"abcdef", 3) == fragment(b"abc", last=False) + fragment(b"def", last=True)
    payload = bytes(range(256)) * 1024
    wire = encode_record(payload)
    assert wire[:4] == header(DEFAULT_MAX_FRAGMENT, last=False)
    assert len(wire) == len(payload) + 5 * HEADER_LENGTH  # 262144 bytes in 65532-byte fragments


def test_record_pieces_copy_nothing_of_the_payload() -> None:
    payload = bytearray(b"0123456789")
    pieces = record_pieces(payload, 4)
    assert [bytes(piece) for piece in pieces] == [
        header(4, last=False), b"0123", header(4, last=False), b"4567", header(2, last=True), b"89"
    ]  # fmt: skip
    for piece in pieces[1::2]:
        assert isinstance(piece, memoryview)
        assert piece.obj is payload
    small = b"small"
    assert record_pieces(small)[1] is small
    assert b"".join(record_pieces(memoryview(b"abcdef").cast("H"), 4)) == encode_record(
        b"abcdef", 4
    )


@pytest.mark.parametrize("max_fragment", [0, -1, 2**31])
def test_the_writer_refuses_impossible_fragment_sizes(max_fragment: int) -> None:
    with pytest.raises(ValueError, match="max_fragment"):
        encode_record(b"abc", max_fragment)


# --- round trips -------------------------------------------------------------------------------


@pytest.mark.parametrize("max_fragment", [1, 3, 4, 100, DEFAULT_MAX_FRAGMENT])
@pytest.mark.parametrize("size", [0, 1, 3, 4, 99, 100, 101, 70_000])
def test_round_trip(size: int, max_fragment: int) -> None:
    payload = bytes(i % 251 for i in range(size))
    fragments = -(-size // max_fragment)
    reader = RecordReader(max_fragments=max(fragments, DEFAULT_MAX_FRAGMENTS))
    reader.receive_data(encode_record(payload, max_fragment))
    assert reader.next_record() == payload
    assert reader.next_record() is NEED_DATA
    assert reader.buffered == 0
    reader.receive_data(b"")
    assert reader.next_record() is CLOSED
    assert reader.next_record() is CLOSED


def test_many_records_in_one_receive_data() -> None:
    payloads = [b"", b"a", b"bc" * 50, b"x" * 70_000, b"last"]
    wire = b"".join(
        encode_record(p, 100 if i % 2 else DEFAULT_MAX_FRAGMENT) for i, p in enumerate(payloads)
    )
    reader = RecordReader()
    reader.receive_data(wire)
    assert drain(reader) == payloads
    assert reader.buffered == 0


def test_records_split_byte_by_byte() -> None:
    payloads = [b"hello", b"", b"world" * 30, bytes(range(256))]
    wire = b"".join(encode_record(p, 16) for p in payloads)
    reader = RecordReader()
    got = []
    for i in range(len(wire)):
        reader.receive_data(wire[i : i + 1])
        got += drain(reader)
        assert reader.buffered <= 256 + 3
    assert got == payloads
    reader.receive_data(b"")
    assert reader.next_record() is CLOSED


def test_a_record_across_many_receive_data_calls_costs_linear_time() -> None:
    """8 MiB in 256-byte chunks: 32768 calls. Linear, that is well under a second; a
    reader that re-copied its buffer at each call would copy 128 GiB."""
    size = 8 * 1024 * 1024
    wire = encode_record(b"r" * size, 1024 * 1024)
    reader = RecordReader(max_record_size=size)
    start = time.perf_counter()
    with memoryview(wire) as view:
        for offset in range(0, len(wire), 256):
            reader.receive_data(view[offset : offset + 256])
            result = reader.next_record()
    assert result == b"r" * size
    assert time.perf_counter() - start < 10


def test_the_libtirpc_writer_s_empty_last_fragment() -> None:
    """libtirpc ends a record that filled its send buffer exactly with an empty last fragment."""
    data = b"z" * DEFAULT_MAX_FRAGMENT
    reader = RecordReader()
    reader.receive_data(fragment(data, last=False) + fragment(b"", last=True))
    assert reader.next_record() == data


def test_a_lone_empty_last_fragment_is_an_empty_record() -> None:
    reader = RecordReader()
    reader.receive_data(header(0, last=True) * 10_000)
    assert drain(reader) == [b""] * 10_000
    assert reader.buffered == 0


# --- limits ------------------------------------------------------------------------------------


def test_a_header_promising_1_gib_is_refused_with_4_bytes_received() -> None:
    reader = RecordReader()
    reader.receive_data(header(GiB, last=True))
    with pytest.raises(RecordError, match="max_record_size") as caught:
        reader.next_record()
    assert caught.value.limit == "max_record_size"
    assert reader.buffered == 0


def test_a_fragment_over_what_is_left_of_the_record_is_refused_at_its_header() -> None:
    reader = RecordReader(max_record_size=100)
    reader.receive_data(fragment(b"a" * 60, last=False) + header(41, last=True))
    with pytest.raises(RecordError) as caught:
        reader.next_record()
    assert caught.value.limit == "max_record_size"
    assert "101 bytes" in str(caught.value)


def test_a_record_of_exactly_max_record_size_passes() -> None:
    reader = RecordReader(max_record_size=100)
    reader.receive_data(fragment(b"a" * 60, last=False) + fragment(b"b" * 40, last=True))
    assert reader.next_record() == b"a" * 60 + b"b" * 40
    reader.receive_data(header(101, last=True))
    with pytest.raises(RecordError):
        reader.next_record()


def test_10000_one_byte_fragments_are_refused() -> None:
    reader = RecordReader()
    reader.receive_data(fragment(b"x", last=False) * 9_999 + fragment(b"x", last=True))
    with pytest.raises(RecordError, match="max_fragments") as caught:
        reader.next_record()
    assert caught.value.limit == "max_fragments"
    assert reader.buffered == 0


def test_the_1025th_fragment_is_refused_at_its_header() -> None:
    reader = RecordReader()
    reader.receive_data(fragment(b"x", last=False) * 1024)
    assert reader.next_record() is NEED_DATA
    assert reader.buffered == 1024
    reader.receive_data(header(1, last=True)[:3])
    assert reader.next_record() is NEED_DATA
    reader.receive_data(header(1, last=True)[3:])
    with pytest.raises(RecordError) as caught:
        reader.next_record()
    assert caught.value.limit == "max_fragments"


def test_max_fragments_fragments_pass_and_the_count_restarts_at_each_record() -> None:
    reader = RecordReader(max_fragments=4)
    one = fragment(b"x", last=False) * 3 + fragment(b"y", last=True)
    reader.receive_data(one * 3)
    assert drain(reader) == [b"xxxy"] * 3


def test_an_empty_last_fragment_counts_toward_max_fragments() -> None:
    reader = RecordReader(max_fragments=3)
    reader.receive_data(fragment(b"a", last=False) * 3 + header(0, last=True))
    with pytest.raises(RecordError) as caught:
        reader.next_record()
    assert caught.value.limit == "max_fragments"


@pytest.mark.parametrize("before", [b"", fragment(b"abc", last=False)])
def test_a_zero_length_fragment_that_is_not_the_last_is_refused(before: bytes) -> None:
    reader = RecordReader()
    reader.receive_data(before + header(0, last=False) + fragment(b"d", last=True))
    with pytest.raises(RecordError, match="zero-length") as caught:
        reader.next_record()
    assert caught.value.limit is None


def test_errors_are_sticky_and_later_bytes_are_dropped() -> None:
    reader = RecordReader()
    reader.receive_data(header(GiB, last=True))
    with pytest.raises(RecordError) as first:
        reader.next_record()
    reader.receive_data(encode_record(b"fine"))
    assert reader.buffered == 0
    with pytest.raises(RecordError) as second:
        reader.next_record()
    assert (str(second.value), second.value.limit) == (str(first.value), first.value.limit)
    assert "broken" in repr(reader)


# --- the end of the stream ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wire", "where"),
    [
        (header(5, last=True)[:2], "into a 4-byte fragment header"),
        (header(5, last=True), "5 bytes before the end"),
        (fragment(b"abcde", last=True)[:-2], "2 bytes before the end"),
        (fragment(b"abc", last=False), "which was not the last"),
        (encode_record(b"whole") + header(5, last=True)[:1], "into a 4-byte fragment header"),
    ],
)
def test_a_truncated_stream(wire: bytes, where: str) -> None:
    reader = RecordReader()
    reader.receive_data(wire)
    records = drain(reader)
    reader.receive_data(b"")
    with pytest.raises(RecordError, match=r"^truncated record") as caught:
        reader.next_record()
    assert where in str(caught.value)
    assert caught.value.limit is None
    assert records == ([b"whole"] if wire.startswith(encode_record(b"whole")) else [])


def test_records_before_the_end_come_out_before_closed() -> None:
    reader = RecordReader()
    reader.receive_data(encode_record(b"one") + encode_record(b"two", 2))
    reader.receive_data(b"")
    assert [reader.next_record() for _ in range(4)] == [b"one", b"two", CLOSED, CLOSED]


def test_an_empty_stream_is_closed() -> None:
    reader = RecordReader()
    assert reader.next_record() is NEED_DATA
    reader.receive_data(b"")
    assert reader.next_record() is CLOSED
    assert "closed" in repr(reader)


def test_data_after_the_end_of_the_stream_is_a_bug_of_the_caller() -> None:
    reader = RecordReader()
    reader.receive_data(b"")
    with pytest.raises(RuntimeError, match="after the end"):
        reader.receive_data(b"more")


# --- fuzzing -----------------------------------------------------------------------------------

SMALL_RECORD, FEW_FRAGMENTS = 64, 6


def reference(wire: bytes, max_record_size: int, max_fragments: int) -> tuple[list[bytes], str]:
    """The records of a whole stream and how it ends ("closed", "truncated", "zero-length" or
    the limit's name), parsed at once and without the reader's code."""
    records: list[bytes] = []
    pos = 0
    while True:
        parts: list[bytes] = []
        size = 0
        while True:
            if pos == len(wire):
                return records, "truncated" if parts else "closed"
            if pos + 4 > len(wire):
                return records, "truncated"
            word = int.from_bytes(wire[pos : pos + 4], "big")
            length, last = word & 0x7FFF_FFFF, word >= LAST_FRAGMENT
            pos += 4
            parts.append(b"")
            if len(parts) > max_fragments:
                return records, "max_fragments"
            if length == 0 and not last:
                return records, "zero-length"
            if size + length > max_record_size:
                return records, "max_record_size"
            if pos + length > len(wire):
                return records, "truncated"
            parts[-1] = wire[pos : pos + length]
            pos, size = pos + length, size + length
            if last:
                records.append(b"".join(parts))
                break


def feed(
    wire: bytes, cuts: list[int], max_record_size: int, max_fragments: int
) -> tuple[list[bytes], str]:
    """Feed ``wire`` cut at ``cuts``, draining after each chunk as an engine does, checking
    the memory bound as it goes; the records and how the stream ended."""
    reader = RecordReader(max_record_size=max_record_size, max_fragments=max_fragments)
    records: list[bytes] = []
    bounds = sorted({0, len(wire), *(cut % (len(wire) + 1) for cut in cuts)})
    chunks = [wire[a:b] for a, b in itertools.pairwise(bounds)] + [b""]
    try:
        for chunk in chunks:
            reader.receive_data(chunk)
            while (result := reader.next_record()) is not NEED_DATA:
                if result is CLOSED:
                    return records, "closed"
                records.append(result)
            assert reader.buffered <= max_record_size + HEADER_LENGTH - 1
    except RecordError as exc:
        assert reader.buffered == 0
        if exc.limit is not None:
            return records, exc.limit
        return records, "truncated" if str(exc).startswith("truncated record") else "zero-length"
    raise AssertionError("the stream ended and the reader never said CLOSED or raised")


fragments = st.tuples(st.integers(0, 24), st.booleans(), st.binary(max_size=24))


@st.composite
def framed_streams(draw: st.DrawFn) -> bytes:
    """Mostly well-framed fragments (of every length, last or not), sometimes garbage."""
    wire = b""
    for length, last, data in draw(st.lists(fragments, max_size=30)):
        data = (data * (length // max(len(data), 1) + 1))[:length] or bytes(length)
        wire += header(length, last=last) + data
        if draw(st.integers(0, 20)) == 0:
            wire += draw(st.binary(max_size=8))
    return wire


@settings(max_examples=400, deadline=1000, suppress_health_check=[HealthCheck.too_slow])
@given(framed_streams(), st.lists(st.integers(0, 2000), max_size=40))
def test_fuzz_framed_streams_match_a_reference_parser(wire: bytes, cuts: list[int]) -> None:
    assert feed(wire, cuts, SMALL_RECORD, FEW_FRAGMENTS) == reference(
        wire, SMALL_RECORD, FEW_FRAGMENTS
    )


@settings(max_examples=400, deadline=1000)
@given(
    st.binary(max_size=600),
    st.lists(st.integers(0, 600), max_size=40),
    st.integers(0, 200),
    st.integers(1, 8),
)
def test_fuzz_random_bytes_raise_only_record_error(
    wire: bytes, cuts: list[int], max_record_size: int, max_fragments: int
) -> None:
    assert feed(wire, cuts, max_record_size, max_fragments) == reference(
        wire, max_record_size, max_fragments
    )


@settings(max_examples=200, deadline=1000)
@given(
    st.lists(st.binary(max_size=300), max_size=8),
    st.integers(1, 70),
    st.lists(st.integers(0, 4000), max_size=30),
)
def test_fuzz_round_trip(payloads: list[bytes], max_fragment: int, cuts: list[int]) -> None:
    wire = b"".join(encode_record(payload, max_fragment) for payload in payloads)
    assert feed(wire, cuts, 300, DEFAULT_MAX_FRAGMENTS) == (payloads, "closed")
