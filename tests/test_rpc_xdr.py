"""XDR (RFC 4506): every type round-trips, decoding is exact and bounded, and nothing
but XdrError comes out of hostile bytes."""

from __future__ import annotations

import dataclasses
import enum
import linecache
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


# -- generated codecs: fixed-size runs fused into one struct call -------------------------


class Mode(enum.IntEnum):
    MODE_READ = 1
    MODE_WRITE = 2


@xdr.struct
class AllFixed:
    a: xdr.Int
    b: xdr.UHyper
    c: xdr.Bool
    d: Mode
    e: xdr.Double


@xdr.struct
class Mixed:
    first: xdr.Int
    second: xdr.Bool
    name: Annotated[str, xdr.string(8)]
    mode: Mode
    count: xdr.UInt
    tail: Annotated[list[int], xdr.var_array(xdr.int32, 4)]
    flag: xdr.Bool


@xdr.union(of=Mode)
class Access:
    mode: Mode = xdr.discriminant()


@xdr.case(Mode.MODE_READ)
class AccessRead(Access):
    offset: xdr.UHyper
    ok: xdr.Bool


@xdr.case(Mode.MODE_WRITE)
class AccessWrite(Access):
    data: Annotated[bytes, xdr.var_opaque(16)]
    sync: xdr.Bool


ALL_FIXED_WIRE = (
    b"\xff\xff\xff\xfe" + b"\0" * 7 + b"\x09" + b"\0\0\0\1" + b"\0\0\0\2" + b"\x3f\xf8" + bytes(6)
)
MIXED_WIRE = (
    b"\0\0\0\7\0\0\0\0" + b"\0\0\0\2ab\0\0" + b"\0\0\0\1\0\0\0\x05"
    + b"\0\0\0\3\0\0\0\2\0\0\0\1\0\0\0\2" + b"\0\0\0\1"
)  # fmt: skip


def _generated_source(xdr_type: Any, direction: str) -> str:
    code = getattr(xdr.type_of(xdr_type), direction).__code__
    return "".join(linecache.getlines(code.co_filename))


def test_a_struct_of_fixed_size_fields_is_one_struct_call_each_way() -> None:
    value = AllFixed(-2, 9, True, Mode.MODE_WRITE, 1.5)
    assert xdr.encode(AllFixed, value) == ALL_FIXED_WIRE
    back = xdr.decode(AllFixed, ALL_FIXED_WIRE)
    assert back == value
    assert back.c is True
    assert back.d is Mode.MODE_WRITE
    assert _generated_source(AllFixed, "pack").count("out += ") == 1
    assert _generated_source(AllFixed, "unpack").count("(data, pos)") == 1


def test_a_struct_mixing_fused_runs_and_variable_fields_round_trips() -> None:
    value = Mixed(7, False, "ab", Mode.MODE_READ, 5, [2, 1, 2], True)
    assert xdr.encode(Mixed, value) == MIXED_WIRE
    assert xdr.decode(Mixed, MIXED_WIRE) == value
    with pytest.raises(xdr.XdrError, match="2 bytes left over"):
        xdr.decode(Mixed, MIXED_WIRE + b"\0\0")
    for cut in range(len(MIXED_WIRE)):
        with pytest.raises(xdr.XdrError):
            xdr.decode(Mixed, MIXED_WIRE[:cut])


def test_an_error_inside_a_fused_run_names_its_field() -> None:
    with pytest.raises(xdr.XdrError, match=r"AllFixed\.b: int too large to convert"):
        xdr.encode(AllFixed, AllFixed(1, -1, True, Mode.MODE_READ, 0.0))
    with pytest.raises(xdr.XdrError, match=r"AllFixed\.a: int takes an int, not str"):
        xdr.encode(AllFixed, AllFixed("1", 1, True, Mode.MODE_READ, 0.0))  # type: ignore[arg-type]
    with pytest.raises(xdr.XdrError, match=r"AllFixed\.e: .*not a float"):
        xdr.encode(AllFixed, AllFixed(1, 1, True, Mode.MODE_READ, "x"))  # type: ignore[arg-type]
    wire = bytearray(MIXED_WIRE)
    wire[16:20] = b"\0\0\0\x09"  # the mode, in the run after the name
    with pytest.raises(xdr.XdrError, match=r"Mixed\.mode: 9 is not a value of enum Mode"):
        xdr.decode(Mixed, bytes(wire))


def test_an_enum_inside_a_fused_run_still_refuses_undeclared_values() -> None:
    wire = bytearray(ALL_FIXED_WIRE)
    wire[16:20] = b"\0\0\0\3"
    with pytest.raises(xdr.XdrError, match=r"AllFixed\.d: 3 is not a value of enum Mode"):
        xdr.decode(AllFixed, bytes(wire))
    for mode in (3, True, "x"):
        with pytest.raises(xdr.XdrError, match=r"AllFixed\.d: "):
            xdr.encode(AllFixed, AllFixed(1, 1, True, mode, 0.0))  # type: ignore[arg-type]
    # a plain int that the enum declares is its member, as through the enum's own codec
    assert xdr.encode(AllFixed, AllFixed(-2, 9, True, 2, 1.5)) == ALL_FIXED_WIRE  # type: ignore[arg-type]


def test_bools_inside_a_fused_run_are_0_or_1() -> None:
    wire = bytearray(ALL_FIXED_WIRE)
    wire[12:16] = b"\0\0\0\2"
    with pytest.raises(xdr.XdrError, match=r"AllFixed\.c: a bool is 0 or 1, not 2"):
        xdr.decode(AllFixed, bytes(wire))
    for flag in (2, 1, None):
        with pytest.raises(xdr.XdrError, match=r"AllFixed\.c: bool takes True or False"):
            xdr.encode(AllFixed, AllFixed(1, 1, flag, Mode.MODE_READ, 0.0))  # type: ignore[arg-type]


def test_a_union_arm_with_fused_fields() -> None:
    read = AccessRead(offset=2**40, ok=True)
    wire = b"\0\0\0\1" + b"\0\0\1\0\0\0\0\0" + b"\0\0\0\1"
    assert xdr.encode(Access, read) == wire
    assert xdr.decode(Access, wire) == read
    write = AccessWrite(data=b"xyz", sync=False)
    assert xdr.decode(Access, xdr.encode(Access, write)) == write
    with pytest.raises(xdr.XdrError, match=r"AccessRead\.ok: a bool is 0 or 1, not 2"):
        xdr.decode(Access, wire[:-1] + b"\2")
    with pytest.raises(
        xdr.XdrError, match=r"AccessRead\.offset: unsigned hyper takes an int, not float"
    ):
        xdr.encode(Access, AccessRead(offset=1.0, ok=True))  # type: ignore[arg-type]
    with pytest.raises(xdr.XdrError, match="AccessWrite is not the arm of Access"):
        xdr.encode(Access, AccessWrite(data=b"", sync=True, mode=Mode.MODE_READ))
    with pytest.raises(xdr.XdrError, match="7 is not a value of enum Mode"):
        xdr.decode(Access, b"\0\0\0\7" + wire[4:])


def test_what_the_generated_code_leaves_to_the_reference_still_encodes() -> None:
    """An int subclass, a bytearray, a tuple: not the common case the generated code
    takes in line, but values of the type all the same."""
    value = Mixed(Mode.MODE_READ, False, "ab", 1, 5, (2, 1, 2), True)  # type: ignore[arg-type]
    wire = xdr.encode(Mixed, value)
    assert xdr.decode(Mixed, wire) == Mixed(1, False, "ab", Mode.MODE_READ, 5, [2, 1, 2], True)
    assert xdr.encode(xdr.opaque(3), bytearray(b"abc")) == b"abc\0"
    assert xdr.encode(
        ComplexArg,
        dataclasses.replace(COMPLEX, fixed4=bytearray(b"abc"), blob=memoryview(b"xyz")),
    ) == xdr.encode(ComplexArg, COMPLEX)


@xdr.struct
class Tree:
    """A type that holds itself in an array: its codec is built without recursing for ever."""

    label: xdr.Int
    children: Annotated[list[Tree], xdr.var_array("Tree")]


def test_a_type_inside_itself_through_an_array() -> None:
    tree = Tree(1, [Tree(2, []), Tree(3, [Tree(4, [])])])
    assert xdr.decode(Tree, xdr.encode(Tree, tree)) == tree


def test_what_cannot_be_encoded_is_an_xdr_error_not_another() -> None:
    with pytest.raises(xdr.XdrError, match="not encodable as UTF-8"):
        xdr.encode(xdr.string(), "\udcff")
    with pytest.raises(xdr.XdrError):
        xdr.encode(Numbered, Small("a", n="x"))  # type: ignore[arg-type]
