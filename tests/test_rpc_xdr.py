"""XDR (RFC 4506): every type round-trips, decoding is exact and bounded, and nothing
but XdrError comes out of hostile bytes."""

from __future__ import annotations

import enum
import math
import struct
from typing import Annotated, Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from servekit.rpc import xdr


class ShapeKind(enum.IntEnum):
    SHAPE_CIRCLE = 1
    SHAPE_RECT = 2
    SHAPE_NONE = 3


@xdr.struct
class Rect:
    w: xdr.Int
    h: xdr.Int


@xdr.union(of=ShapeKind)
class Shape:
    kind: ShapeKind = xdr.discriminant()


@xdr.case(ShapeKind.SHAPE_CIRCLE)
class ShapeCircle(Shape):
    radius: xdr.Int


@xdr.case(ShapeKind.SHAPE_RECT)
class ShapeRect(Shape):
    r: Rect


@xdr.default
class ShapeOther(Shape):
    pass


@xdr.struct
class Node:
    value: xdr.Int
    next: Annotated[Node | None, xdr.optional("Node")]


@xdr.struct
class ComplexArg:
    """demo.x's complex_arg: a field named ``list`` too, as there."""

    name: Annotated[str, xdr.string(64)]
    big: xdr.Hyper
    ubig: xdr.UHyper
    opt: Annotated[int | None, xdr.optional(xdr.int32)]
    s: Shape
    values: Annotated[list[int], xdr.var_array(xdr.int32, 16)]
    blob: Annotated[bytes, xdr.var_opaque()]
    fixed4: Annotated[bytes, xdr.opaque(3)]
    list: Annotated[Node | None, xdr.optional(Node)]
    flag: xdr.Bool
    d: xdr.Double
    f: xdr.Float


@xdr.union(of=xdr.int32)
class Numbered:
    n: int = xdr.discriminant()


@xdr.case(1, 2)
class Small(Numbered):
    text: Annotated[str, xdr.string()]


@xdr.case(3)
class Three(Numbered):
    pass


def _nodes(*values: int) -> Node | None:
    head = None
    for value in reversed(values):
        head = Node(value, head)
    return head


COMPLEX = ComplexArg(
    name="hi", big=-5, ubig=2**64 - 1, opt=7, s=ShapeCircle(radius=3), values=[1, 2, 3],
    blob=b"xyz", fixed4=b"abc", list=_nodes(1, 2), flag=True, d=1.5, f=2.5,
)  # fmt: skip


# -- the wire format, byte for byte (RFC 4506 section 4) ---------------------------------


@pytest.mark.parametrize(
    ("xdr_type", "value", "wire"),
    [
        (xdr.int32, -1, b"\xff\xff\xff\xff"),
        (xdr.int32, 2**31 - 1, b"\x7f\xff\xff\xff"),
        (xdr.uint32, 2**32 - 1, b"\xff\xff\xff\xff"),
        (xdr.int64, -2, b"\xff" * 7 + b"\xfe"),
        (xdr.uint64, 2**64 - 1, b"\xff" * 8),
        (xdr.float32, 1.0, b"\x3f\x80\x00\x00"),
        (xdr.float64, -2.0, b"\xc0\x00" + bytes(6)),
        (xdr.quadruple, 1.0, b"\x3f\xff" + bytes(14)),
        (xdr.quadruple, -2.0, b"\xc0\x00" + bytes(14)),
        (xdr.quadruple, 0.0, bytes(16)),
        (xdr.quadruple, math.inf, b"\x7f\xff" + bytes(14)),
        (xdr.boolean, True, b"\0\0\0\1"),
        (xdr.boolean, False, b"\0\0\0\0"),
        (xdr.void, None, b""),
        (xdr.opaque(3), b"abc", b"abc\0"),
        (xdr.opaque(4), b"abcd", b"abcd"),
        (xdr.var_opaque(), b"", b"\0\0\0\0"),
        (xdr.var_opaque(8), b"hello", b"\0\0\0\5hello\0\0\0"),
        (xdr.string(), "sillyprog", b"\0\0\0\x09sillyprog\0\0\0"),
        (xdr.array(xdr.int32, 2), [1, -1], b"\0\0\0\1\xff\xff\xff\xff"),
        (xdr.var_array(xdr.uint32), [7], b"\0\0\0\1\0\0\0\7"),
        (xdr.optional(xdr.int32), None, b"\0\0\0\0"),
        (xdr.optional(xdr.int32), 5, b"\0\0\0\1\0\0\0\5"),
        (ShapeKind, ShapeKind.SHAPE_RECT, b"\0\0\0\2"),
        (Rect, Rect(1, 2), b"\0\0\0\1\0\0\0\2"),
        (Shape, ShapeCircle(radius=9), b"\0\0\0\1\0\0\0\x09"),
        (Shape, ShapeOther(kind=ShapeKind.SHAPE_NONE), b"\0\0\0\3"),
        (Numbered, Small("a", n=2), b"\0\0\0\2\0\0\0\1a\0\0\0"),
        (Node, _nodes(1, 2), b"\0\0\0\1\0\0\0\1\0\0\0\2\0\0\0\0"),
    ],
)
def test_wire_format_and_round_trip(xdr_type: Any, value: Any, wire: bytes) -> None:
    assert xdr.encode(xdr_type, value) == wire
    decoded = xdr.decode(xdr_type, wire)
    assert decoded == value
    assert type(decoded) is type(value)


def test_the_complex_argument_round_trips_and_match_tells_the_arms_apart() -> None:
    data = xdr.encode(ComplexArg, COMPLEX)
    back = xdr.decode(ComplexArg, data)
    assert back == COMPLEX
    match back.s:
        case ShapeCircle(radius=radius):
            assert radius == 3
        case _:
            pytest.fail(f"{back.s!r} is not the circle")
    assert ShapeCircle(radius=1).kind is ShapeKind.SHAPE_CIRCLE  # fixed for a one-value arm


def test_quadruple_keeps_every_double_exactly() -> None:
    for value in (1 / 3, -1e-310, 5e-324, 1.7976931348623157e308, -0.0, 2.0**-1022):
        back = xdr.decode(xdr.quadruple, xdr.encode(xdr.quadruple, value))
        assert back == value
        assert math.copysign(1, back) == math.copysign(1, value)
    assert math.isnan(xdr.decode(xdr.quadruple, xdr.encode(xdr.quadruple, math.nan)))


# -- exact decoding ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("xdr_type", "wire", "message"),
    [
        (xdr.int32, b"\0\0\0\1\0", "1 bytes left over"),
        (xdr.int32, b"\0\0\1", "ends too soon"),
        (xdr.boolean, b"\0\0\0\2", "a bool is 0 or 1, not 2"),
        (xdr.opaque(3), b"abc\1", "non-zero padding"),
        (xdr.var_opaque(), b"\0\0\0\1a\0\1\0", "non-zero padding"),
        (xdr.string(), b"\0\0\0\2\xff\xfe\0\0", "not UTF-8"),
        (xdr.string(4), b"\0\0\0\5hello\0\0\0", "over its maximum, 4"),
        (xdr.var_array(xdr.int32, 1), b"\0\0\0\2" + bytes(8), "over its maximum, 1"),
        (xdr.optional(xdr.int32), b"\0\0\0\2\0\0\0\1", "presence flag is 0 or 1"),
        (ShapeKind, b"\0\0\0\x09", "9 is not a value of enum ShapeKind"),
        # The union has a default arm, but its discriminant is an enum: 9 is no value of it.
        (Shape, b"\0\0\0\x09", "9 is not a value of enum ShapeKind"),
        (Numbered, b"\0\0\0\x07", "no arm for n=7"),
    ],
)
def test_anything_but_exactly_a_value_is_refused(xdr_type: Any, wire: bytes, message: str) -> None:
    with pytest.raises(xdr.XdrError, match=message):
        xdr.decode(xdr_type, wire)


def test_encoding_refuses_what_is_not_a_value_of_the_type() -> None:
    for xdr_type, value in [
        (xdr.int32, True), (xdr.int32, 2**31), (xdr.uint32, -1), (xdr.int32, "1"),
        (xdr.boolean, 1), (xdr.opaque(3), b"ab"), (xdr.string(2), "abc"),
        (xdr.var_array(xdr.int32, 1), [1, 2]), (ShapeKind, 9), (Rect, (1, 2)),
        (Shape, Rect(1, 2)), (Shape, ShapeCircle(radius=1, kind=ShapeKind.SHAPE_RECT)),
        (xdr.void, 0),
    ]:  # fmt: skip
        with pytest.raises(xdr.XdrError):
            xdr.encode(xdr_type, value)


# -- bounded decoding --------------------------------------------------------------------


def test_a_length_claiming_4_gb_allocates_nothing() -> None:
    """The "rpcbomb" (CVE-2017-8779): a length past what is left is refused before
    anything of that size is made."""
    for xdr_type in (xdr.var_opaque(), xdr.string(), xdr.var_opaque(2**32 - 1)):
        with pytest.raises(xdr.XdrError, match="4294967295 bytes"):
            xdr.decode(xdr_type, b"\xff\xff\xff\xff" + bytes(8))
    with pytest.raises(xdr.XdrError, match="4294967295 elements"):
        xdr.decode(xdr.var_array(xdr.int32), b"\xff\xff\xff\xff" + bytes(8))
    with pytest.raises(xdr.XdrError, match="but 8 bytes are left"):
        xdr.decode(xdr.var_array(xdr.int32, 2**32 - 1), b"\xff\xff\xff\xff" + bytes(8))


def test_unbounded_items_have_a_default_bound_and_it_can_be_raised() -> None:
    wire = struct.pack(">I", 70000) + bytes(4 * 70000)
    with pytest.raises(xdr.XdrError, match=r"Limits\.max_array"):
        xdr.decode(xdr.var_array(xdr.int32), wire)
    assert len(xdr.decode(xdr.var_array(xdr.int32), wire, xdr.Limits(max_array=70000))) == 70000


def test_a_long_list_is_read_without_recursion_up_to_the_node_cap() -> None:
    values = list(range(9999))
    wire = xdr.encode(xdr.optional(Node), _nodes(*values))
    head = xdr.decode(xdr.optional(Node), wire)  # far past Python's recursion limit
    seen = []
    while head is not None:
        seen.append(head.value)
        head = head.next
    assert seen == values
    hostile = xdr.encode(xdr.optional(Node), _nodes(*range(100_000)))
    with pytest.raises(xdr.XdrError, match="more than 10000 optional-data nodes"):
        xdr.decode(xdr.optional(Node), hostile)
    assert xdr.decode(xdr.optional(Node), hostile, xdr.Limits(max_nodes=100_000)) is not None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_give_a_value_or_an_xdr_error(data: bytes) -> None:
    for xdr_type in (ComplexArg, Shape, Numbered, xdr.optional(Node), xdr.quadruple):
        try:
            xdr.decode(xdr_type, data)
        except xdr.XdrError:
            pass


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=4, max_size=256), st.integers(0, 255), st.integers(0, 255))
def test_a_value_with_one_byte_changed_decodes_or_is_refused(
    noise: bytes, where: int, byte: int
) -> None:
    data = bytearray(xdr.encode(ComplexArg, COMPLEX))
    data[where % len(data)] = byte
    try:
        xdr.decode(ComplexArg, bytes(data) + noise[: where % 8])
    except xdr.XdrError:
        pass


def test_a_declaration_mistake_is_a_type_error_at_first_use() -> None:
    @xdr.struct
    class Broken:
        x: int  # no XDR type: Annotated[int, xdr.int32] was meant

    with pytest.raises(TypeError, match=r"Broken\.x: .* is not an XDR type"):
        xdr.encode(Broken, Broken(1))
    with pytest.raises(TypeError, match="name its discriminant once"):

        @xdr.union(of=ShapeKind)
        class NoSwitch:
            pass
