"""XDR (RFC 4506): every type, encoded and decoded exactly, without I/O.

A type is a value of this module (``int32``, ``string(64)``, ``var_array(int32, 16)``,
...), a class declared with ``@struct``, ``@union``/``@case``, or an ``enum.IntEnum``.
``encode(T, value) -> bytes`` and ``decode(T, data) -> value`` work with any of them;
decoding is exact (the whole input is one value, padding is zero, a bool is 0 or 1, an
enum is one of its declared values) and bounded (``Limits``): a length is checked
against the bytes left before anything is allocated, unbounded ``<>`` items have a
default bound, and optional-data chains (linked lists) are decoded without recursion,
under a cap on their nodes. Anything wrong raises ``XdrError``, and nothing else.

Declaring types, as ``servekit rpcgen`` writes them::

    class ShapeKind(enum.IntEnum):
        SHAPE_CIRCLE = 1
        SHAPE_RECT = 2

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
    class ShapeOther(Shape):  # void
        pass

    @xdr.struct
    class Node:
        value: xdr.Int
        next: Annotated[Node | None, xdr.optional("Node")]

A struct is a slotted dataclass; a union is a base class whose arms are slotted
dataclasses that ``match`` tells apart (``case ShapeCircle(radius=r):``), each holding
the discriminant (``kind``) as a keyword field, fixed for a single-case arm. Field types
are Python's where XDR has one meaning for them (a struct, a union, an enum) and
``Annotated`` with an XDR type otherwise (``xdr.Int`` is ``Annotated[int, int32]``).
"""

from __future__ import annotations

import dataclasses
import enum
import math
import struct as _struct
import sys
import typing
from collections.abc import Callable
from typing import Annotated, Any, Generic, TypeVar, overload

__all__ = [
    "DEFAULT_LIMITS",
    "Bool",
    "Double",
    "Float",
    "Hyper",
    "Int",
    "Limits",
    "Quadruple",
    "UHyper",
    "UInt",
    "XdrError",
    "XdrType",
    "array",
    "boolean",
    "case",
    "decode",
    "default",
    "discriminant",
    "encode",
    "float32",
    "float64",
    "int32",
    "int64",
    "opaque",
    "optional",
    "quadruple",
    "string",
    "struct",
    "type_of",
    "uint32",
    "uint64",
    "union",
    "var_array",
    "var_opaque",
    "void",
]

V = TypeVar("V")
C = TypeVar("C")


class XdrError(ValueError):
    """Bytes that are not a value of the type, or a value that cannot be encoded as it."""


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on what decoding may build, beyond what the input's own size bounds.

    A length is always checked against the bytes left before anything is made, so no
    value takes more memory than a small multiple of its input; these bound the rest.
    """

    #: Elements of a variable-length array declared without a maximum (``<>``).
    max_array: int = 65536
    #: Bytes of an opaque or a string declared without a maximum (``<>``).
    max_bytes: int = 1024 * 1024
    #: Nodes of optional data (``T *``) in one value: a linked list of 100,000 nodes
    #: is 800 KB of input and 100,000 objects; the C stack of rpcgen's code overflows on it.
    max_nodes: int = 10000


DEFAULT_LIMITS = Limits()


class _Decoding:
    """One decode's state: its limits and how many optional nodes it has made."""

    __slots__ = ("limits", "nodes")

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.nodes = 0

    def node(self) -> None:
        self.nodes += 1
        if self.nodes > self.limits.max_nodes:
            raise XdrError(
                f"more than {self.limits.max_nodes} optional-data nodes (Limits.max_nodes)"
            )


Pack = Callable[[bytearray, Any], None]
Unpack = Callable[[bytes, int, _Decoding], tuple[Any, int]]


@dataclasses.dataclass(frozen=True, slots=True)
class _Inline:
    """What the code generated for a struct or union needs to write a field of this
    type in line (servekit.rpc._declare), not through its ``pack``/``unpack``.

    ``kind`` is "fixed" (a struct format character ``fmt`` and a ``check``: "int",
    "float", "bool" or "enum" of ``enum``), "bytes" (``text``, ``maximum``),
    "opaque" (``size``), "array" (``element``, ``size`` or ``maximum``; ``size`` is
    None for a variable-length one) or "optional" (``element``). The generated code
    takes the common case in line and leaves anything else to the type's own
    ``pack``/``unpack``, which stay the reference.
    """

    kind: str
    fmt: str = ""
    check: str = ""
    enum: type[enum.IntEnum] | None = None
    text: bool = False
    size: int | None = None
    maximum: int | None = None
    element: Callable[[], XdrType[Any]] | None = None


class XdrType(Generic[V]):
    """An XDR type: how a Python value of type ``V`` is written and read.

    ``pack`` and ``unpack`` are made when first used, so that a type may name
    one declared after it (a linked list names itself).
    """

    __slots__ = ("_building", "_make", "_pack", "_unpack", "element", "inline", "name")

    def __init__(
        self,
        name: str,
        make: Callable[[], tuple[Pack, Unpack]],
        inline: _Inline | None = None,
    ) -> None:
        self.name = name
        #: For optional data, its type (looked up when first needed): how a struct
        #: that ends with a pointer to itself is found to be a linked list.
        self.element: Callable[[], XdrType[Any]] | None = None
        self.inline = inline
        self._make = make
        self._pack: Pack | None = None
        self._unpack: Unpack | None = None
        self._building = False

    def __repr__(self) -> str:
        return f"<xdr {self.name}>"

    def _build(self) -> None:
        self._building = True
        try:
            self._pack, self._unpack = self._make()
        finally:
            self._building = False

    @property
    def pack(self) -> Pack:
        if self._pack is None:
            if self._building:  # a type inside itself (S holds S<>): call it late
                return lambda out, value: self.pack(out, value)
            self._build()
        assert self._pack is not None
        return self._pack

    @property
    def unpack(self) -> Unpack:
        if self._unpack is None:
            if self._building:
                return lambda data, pos, ctx: self.unpack(data, pos, ctx)
            self._build()
        assert self._unpack is not None
        return self._unpack


# -- encode and decode -------------------------------------------------------------------


@overload
def encode(xdr_type: XdrType[V], value: V) -> bytes: ...
@overload
def encode(xdr_type: type[V], value: V) -> bytes: ...
def encode(xdr_type: Any, value: Any) -> bytes:
    """``value`` as ``xdr_type``'s XDR bytes; XdrError if it is not a value of it."""
    out = bytearray()
    pack = type_of(xdr_type).pack  # a mistake in a declaration is a TypeError, raised here
    try:
        pack(out, value)
    except (_struct.error, TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise XdrError(f"cannot encode {value!r} as {_name(xdr_type)}: {exc}") from None
    return bytes(out)


@overload
def decode(xdr_type: XdrType[V], data: bytes, limits: Limits = ...) -> V: ...
@overload
def decode(xdr_type: type[V], data: bytes, limits: Limits = ...) -> V: ...
def decode(xdr_type: Any, data: bytes, limits: Limits = DEFAULT_LIMITS) -> Any:
    """The value ``data`` holds, all of it; XdrError if it is anything else."""
    value, end = decode_from(xdr_type, data, 0, limits)
    if end != len(data):
        raise XdrError(f"{len(data) - end} bytes left over after {_name(xdr_type)}")
    return value


def decode_from(
    xdr_type: Any, data: bytes, offset: int = 0, limits: Limits = DEFAULT_LIMITS
) -> tuple[Any, int]:
    """The value at ``offset`` of ``data`` and the offset just past it (for a
    message that holds several values in a row)."""
    unpack = type_of(xdr_type).unpack
    try:
        return unpack(data, offset, _Decoding(limits))
    except (_struct.error, IndexError):
        raise XdrError(f"{_name(xdr_type)}: the data ends too soon") from None


def _name(xdr_type: Any) -> str:
    return getattr(xdr_type, "__name__", None) or getattr(xdr_type, "name", None) or repr(xdr_type)


# -- what a type is ----------------------------------------------------------------------

_CLASS_TYPES: dict[type[Any], XdrType[Any]] = {}


def type_of(declared: Any) -> XdrType[Any]:
    """The XdrType of ``declared``: an XdrType, a class declared here, an IntEnum,
    or ``Annotated[python_type, xdr_type]``."""
    if isinstance(declared, XdrType):
        return declared
    # A class first: encode(ComplexArg, v) is the common call, and get_origin() costs.
    if isinstance(declared, type):
        found = _CLASS_TYPES.get(declared)
        if found is not None:
            return found
        if issubclass(declared, enum.IntEnum):
            made = _enum(declared)
            _CLASS_TYPES[declared] = made
            return made
    if typing.get_origin(declared) is Annotated:
        for meta in declared.__metadata__:
            if isinstance(meta, XdrType):
                return meta
        raise TypeError(f"{declared!r} carries no XDR type")
    raise TypeError(
        f"{declared!r} is not an XDR type: use an xdr type (xdr.int32, xdr.string(64), ...), "
        "a class declared with @xdr.struct or @xdr.union, an IntEnum, or Annotated[T, xdr_type]"
    )


# -- numbers -----------------------------------------------------------------------------


def _fixed(name: str, fmt: str, check: Callable[[Any], Any] | None = None) -> XdrType[Any]:
    codec = _struct.Struct(fmt)
    size = codec.size
    pack_into, unpack_from = codec.pack, codec.unpack_from

    def make() -> tuple[Pack, Unpack]:
        def pack(out: bytearray, value: Any) -> None:
            out += pack_into(value)

        def unpack(data: bytes, pos: int, ctx: _Decoding) -> tuple[Any, int]:
            (value,) = unpack_from(data, pos)
            if check is not None:
                check(value)
            return value, pos + size

        return pack, unpack

    inline = _Inline("fixed", fmt=fmt[1:], check="float") if check is None else None
    return XdrType(name, make, inline)


def _ints(name: str, fmt: str) -> XdrType[int]:
    # struct's own range check, with bools refused: True is no int32 on the wire.
    codec = _struct.Struct(fmt)
    size = codec.size
    pack_into, unpack_from = codec.pack, codec.unpack_from

    def make() -> tuple[Pack, Unpack]:
        def pack(out: bytearray, value: Any) -> None:
            if value.__class__ is not int and (
                isinstance(value, bool) or not isinstance(value, int)
            ):
                raise TypeError(f"{name} takes an int, not {type(value).__name__}")
            out += pack_into(value)

        def unpack(data: bytes, pos: int, ctx: _Decoding) -> tuple[Any, int]:
            return unpack_from(data, pos)[0], pos + size

        return pack, unpack

    return XdrType(name, make, _Inline("fixed", fmt=fmt[1:], check="int"))


int32: XdrType[int] = _ints("int", ">i")
uint32: XdrType[int] = _ints("unsigned int", ">I")
int64: XdrType[int] = _ints("hyper", ">q")
uint64: XdrType[int] = _ints("unsigned hyper", ">Q")
float32: XdrType[float] = _fixed("float", ">f")
float64: XdrType[float] = _fixed("double", ">d")


def _make_bool() -> tuple[Pack, Unpack]:
    def pack(out: bytearray, value: Any) -> None:
        if value is True:
            out += b"\0\0\0\1"
        elif value is False:
            out += b"\0\0\0\0"
        else:
            raise TypeError(f"bool takes True or False, not {value!r}")

    def unpack(data: bytes, pos: int, ctx: _Decoding) -> tuple[Any, int]:
        return _flag(data, pos, "a bool")

    return pack, unpack


boolean: XdrType[bool] = XdrType("bool", _make_bool, _Inline("fixed", fmt="I", check="bool"))


def _make_quadruple() -> tuple[Pack, Unpack]:
    """IEEE 754 binary128, 16 bytes (RFC 4506 4.8); Python's float is binary64, so a
    value is widened exactly when written and rounded to nearest when read."""

    def pack(out: bytearray, value: Any) -> None:
        out += _float_to_binary128(float(value))

    def unpack(data: bytes, pos: int, ctx: _Decoding) -> tuple[Any, int]:
        raw = data[pos : pos + 16]
        if len(raw) < 16:
            raise IndexError
        return _binary128_to_float(raw), pos + 16

    return pack, unpack


quadruple: XdrType[float] = XdrType("quadruple", _make_quadruple)


def _float_to_binary128(value: float) -> bytes:
    bits: int = _struct.unpack(">Q", _struct.pack(">d", value))[0]
    sign = bits >> 63
    exponent = (bits >> 52) & 0x7FF
    fraction = bits & ((1 << 52) - 1)
    if exponent == 0x7FF:  # infinity or NaN: all ones, the fraction widened
        q_exponent, q_fraction = 0x7FFF, fraction << 60
    elif exponent == 0:
        if fraction == 0:
            q_exponent, q_fraction = 0, 0
        else:  # a binary64 subnormal is a normal binary128
            shift = 53 - fraction.bit_length()
            q_exponent = 1 - 1023 - shift + 16383
            q_fraction = ((fraction << shift) & ((1 << 52) - 1)) << 60
    else:
        q_exponent, q_fraction = exponent - 1023 + 16383, fraction << 60
    return ((sign << 127) | (q_exponent << 112) | q_fraction).to_bytes(16, "big")


def _binary128_to_float(raw: bytes) -> float:
    bits = int.from_bytes(raw, "big")
    sign = -1.0 if bits >> 127 else 1.0
    exponent = (bits >> 112) & 0x7FFF
    fraction = bits & ((1 << 112) - 1)
    if exponent == 0x7FFF:
        return sign * math.inf if fraction == 0 else math.nan
    try:
        if exponent == 0:
            return sign * math.ldexp(fraction, -16382 - 112)
        return sign * math.ldexp(fraction | (1 << 112), exponent - 16383 - 112)
    except OverflowError:  # past the largest double: infinity, as C's conversion gives
        return sign * math.inf


def _make_void() -> tuple[Pack, Unpack]:
    def pack(out: bytearray, value: Any) -> None:
        if value is not None:
            raise TypeError(f"void takes None, not {value!r}")

    def unpack(data: bytes, pos: int, ctx: _Decoding) -> tuple[Any, int]:
        return None, pos

    return pack, unpack


void: XdrType[None] = XdrType("void", _make_void)

Int = Annotated[int, int32]
UInt = Annotated[int, uint32]
Hyper = Annotated[int, int64]
UHyper = Annotated[int, uint64]
Float = Annotated[float, float32]
Double = Annotated[float, float64]
Bool = Annotated[bool, boolean]
Quadruple = Annotated[float, quadruple]


# -- bytes and strings -------------------------------------------------------------------

_ZEROS = bytes(4)
_LENGTH = _struct.Struct(">I")


def _padding(size: int) -> int:
    return -size & 3


def _check_padding(data: bytes, start: int, end: int) -> None:
    if data[start:end] != _ZEROS[: end - start]:
        if end > len(data):
            raise IndexError
        raise XdrError("non-zero padding")


def opaque(size: int) -> XdrType[bytes]:
    """``opaque name[size]``: exactly ``size`` bytes."""
    _check_size(size, "opaque")
    pad = _padding(size)

    def make() -> tuple[Pack, Unpack]:
        def pack(out: bytearray, value: Any) -> None:
            if len(value) != size:
                raise TypeError(f"opaque[{size}] takes {size} bytes, not {len(value)}")
            out += value
            out += _ZEROS[:pad]

        def unpack(data: bytes, pos: int, ctx: _Decoding) -> tuple[Any, int]:
            end = pos + size
            if end > len(data):
                raise IndexError
            _check_padding(data, end, end + pad)
            return bytes(data[pos:end]), end + pad

        return pack, unpack

    return XdrType(f"opaque[{size}]", make, _Inline("opaque", size=size))


def var_opaque(maximum: int | None = None) -> XdrType[bytes]:
    """``opaque name<maximum>`` (None: ``<>``, bounded by ``Limits.max_bytes`` when read)."""
    return _var_bytes(maximum, "opaque", text=False)


def string(maximum: int | None = None) -> XdrType[str]:
    """``string name<maximum>``: text, written as UTF-8 (XDR says ASCII; UTF-8 is
    what C programs pass through), read back as UTF-8 with invalid bytes refused."""
    return _var_bytes(maximum, "string", text=True)


def _var_bytes(maximum: int | None, kind: str, *, text: bool) -> XdrType[Any]:
    if maximum is not None:
        _check_size(maximum, kind)
    shown = f"{kind}<{'' if maximum is None else maximum}>"
    length_pack, length_unpack = _LENGTH.pack, _LENGTH.unpack_from

    def make() -> tuple[Pack, Unpack]:
        def pack(out: bytearray, value: Any) -> None:
            try:
                raw = value.encode() if text else value
            except UnicodeEncodeError as exc:  # a lone surrogate
                raise TypeError(f"{shown}: not encodable as UTF-8 ({exc.reason})") from None
            if not isinstance(raw, (bytes, bytearray, memoryview)):
                raise TypeError(f"{shown} takes {'str' if text else 'bytes'}, not {value!r}")
            size = len(raw)
            if maximum is not None and size > maximum:
                raise TypeError(f"{shown} takes at most {maximum} bytes, not {size}")
            out += length_pack(size)
            out += raw
            out += _ZEROS[: -size & 3]

        def unpack(data: bytes, pos: int, ctx: _Decoding) -> tuple[Any, int]:
            (size,) = length_unpack(data, pos)
            bound = ctx.limits.max_bytes if maximum is None else maximum
            if size > bound:
                what = "Limits.max_bytes" if maximum is None else "its maximum"
                raise XdrError(f"{shown} of {size} bytes: over {what}, {bound}")
            start = pos + 4
            end = start + size
            if end > len(data):
                raise XdrError(f"{shown} of {size} bytes, but {len(data) - start} are left")
            padded = end + (-size & 3)
            _check_padding(data, end, padded)
            raw = bytes(data[start:end])
            if not text:
                return raw, padded
            try:
                return raw.decode(), padded
            except UnicodeDecodeError as exc:
                raise XdrError(f"{shown}: not UTF-8 ({exc.reason})") from None

        return pack, unpack

    return XdrType(shown, make, _Inline("bytes", text=text, maximum=maximum))


def _check_size(size: int, kind: str) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= 0xFFFFFFFF:
        raise TypeError(f"{kind}: a size is an int from 0 to 2**32-1, not {size!r}")


# -- arrays and optional data ------------------------------------------------------------


def array(element: Any, size: int) -> XdrType[list[Any]]:
    """``T name[size]``: exactly ``size`` elements."""
    _check_size(size, "array")
    item = _lazy(element, _caller_names(element))

    def make() -> tuple[Pack, Unpack]:
        pack_item, unpack_item = item().pack, item().unpack

        def pack(out: bytearray, value: Any) -> None:
            if len(value) != size:
                raise TypeError(f"array[{size}] takes {size} elements, not {len(value)}")
            for element_value in value:
                pack_item(out, element_value)

        def unpack(data: bytes, pos: int, ctx: _Decoding) -> tuple[Any, int]:
            if size * 4 > len(data) - pos:  # every element takes 4 bytes at least
                raise IndexError
            values = []
            for _ in range(size):
                element_value, pos = unpack_item(data, pos, ctx)
                values.append(element_value)
            return values, pos

        return pack, unpack

    return XdrType(f"{_name(element)}[{size}]", make, _Inline("array", size=size, element=item))


def var_array(element: Any, maximum: int | None = None) -> XdrType[list[Any]]:
    """``T name<maximum>`` (None: ``<>``, bounded by ``Limits.max_array`` when read)."""
    if maximum is not None:
        _check_size(maximum, "array")
    item = _lazy(element, _caller_names(element))
    shown = f"{_name(element)}<{'' if maximum is None else maximum}>"

    def make() -> tuple[Pack, Unpack]:
        pack_item, unpack_item = item().pack, item().unpack
        length_pack, length_unpack = _LENGTH.pack, _LENGTH.unpack_from

        def pack(out: bytearray, value: Any) -> None:
            if maximum is not None and len(value) > maximum:
                raise TypeError(f"{shown} takes at most {maximum} elements, not {len(value)}")
            out += length_pack(len(value))
            for element_value in value:
                pack_item(out, element_value)

        def unpack(data: bytes, pos: int, ctx: _Decoding) -> tuple[Any, int]:
            (count,) = length_unpack(data, pos)
            bound = ctx.limits.max_array if maximum is None else maximum
            if count > bound:
                what = "Limits.max_array" if maximum is None else "its maximum"
                raise XdrError(f"{shown} of {count} elements: over {what}, {bound}")
            pos += 4
            if count * 4 > len(data) - pos:  # checked before a list of that size is made
                raise XdrError(f"{shown} of {count} elements, but {len(data) - pos} bytes are left")
            values = []
            for _ in range(count):
                element_value, pos = unpack_item(data, pos, ctx)
                values.append(element_value)
            return values, pos

        return pack, unpack

    return XdrType(shown, make, _Inline("array", maximum=maximum, element=item))


def optional(element: Any) -> XdrType[Any]:
    """``T *name``: None, or a value of ``T`` (a string names a class of the module
    that declares the field, for a type that refers to itself)."""
    item = _lazy(element, _caller_names(element))

    def make() -> tuple[Pack, Unpack]:
        target = item()

        def pack(out: bytearray, value: Any) -> None:
            if value is None:
                out += _ZEROS
            else:
                out += b"\0\0\0\1"
                target.pack(out, value)

        def unpack(data: bytes, pos: int, ctx: _Decoding) -> tuple[Any, int]:
            present, pos = _present(data, pos)
            if not present:
                return None, pos
            ctx.node()
            return target.unpack(data, pos, ctx)

        return pack, unpack

    made: XdrType[Any] = XdrType(f"{_name(element)} *", make, _Inline("optional", element=item))
    made.element = item
    return made


def _present(data: bytes, pos: int) -> tuple[bool, int]:
    return _flag(data, pos, "optional data: a presence flag")


def _flag(data: bytes, pos: int, what: str) -> tuple[bool, int]:
    """The word at ``pos`` as a bool (a bool, or optional data's presence): 1 or 0 only."""
    word = data[pos : pos + 4]
    if word == b"\0\0\0\1":
        return True, pos + 4
    if word == b"\0\0\0\0":
        return False, pos + 4
    if len(word) < 4:
        raise IndexError
    raise XdrError(f"{what} is 0 or 1, not {int.from_bytes(word, 'big')}")


def _lazy(declared: Any, namespace: dict[str, Any] | None = None) -> Callable[[], XdrType[Any]]:
    """``declared``'s XdrType, looked up when first needed (it may not exist yet)."""
    found: list[XdrType[Any]] = []

    def get() -> XdrType[Any]:
        if not found:
            target = declared
            if isinstance(target, str):
                target = _resolve(target, namespace)
            found.append(type_of(target))
        return found[0]

    get.declared = declared  # type: ignore[attr-defined]
    return get


def _caller_names(element: Any) -> dict[str, Any] | None:
    """For a type named by a string: the names of the code that named it (a module, or
    the namespace annotations are evaluated in), where it is looked up first; a name
    two modules declare is then each one's own."""
    if not isinstance(element, str):
        return None
    return sys._getframe(2).f_globals


def _resolve(name: str, namespace: dict[str, Any] | None) -> Any:
    for space in (namespace or {}, *(vars(m) for m in _DECLARING_MODULES)):
        if name in space:
            return space[name]
    raise TypeError(f"XDR type {name!r} is not declared (in the module of the class that names it)")


# Modules that declared XDR classes: a name given as a string (a type that refers to
# itself) is looked up in them.
_DECLARING_MODULES: list[Any] = []


# -- enums -------------------------------------------------------------------------------


def _enum(declared: type[enum.IntEnum]) -> XdrType[Any]:
    """An enum: its declared values only, each read back as its member."""

    def make() -> tuple[Pack, Unpack]:
        members = {member.value: member for member in declared}
        for value in members:
            if not -(2**31) <= value < 2**31:
                raise TypeError(f"{declared.__name__}: {value} does not fit an XDR enum (int32)")
        word_pack, word_unpack = int32.pack, int32.unpack

        def pack(out: bytearray, value: Any) -> None:
            if value not in members or isinstance(value, bool):
                raise TypeError(f"{value!r} is not a value of {declared.__name__}")
            word_pack(out, int(value))

        def unpack(data: bytes, pos: int, ctx: _Decoding) -> tuple[Any, int]:
            number, pos = word_unpack(data, pos, ctx)
            member = members.get(number)
            if member is None:
                raise XdrError(f"{number} is not a value of enum {declared.__name__}")
            return member, pos

        return pack, unpack

    return XdrType(declared.__name__, make, _Inline("fixed", fmt="i", check="enum", enum=declared))


# The declarations of classes (structs, unions) live beside: they build on the above.
from servekit.rpc._declare import (  # noqa: E402
    case,
    default,
    discriminant,
    struct,
    union,
)
