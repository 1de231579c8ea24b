"""Declaring XDR structs and unions as Python classes (see servekit.rpc.xdr).

A struct is a slotted dataclass; a union a base class whose arms are slotted
dataclasses, each holding the discriminant as a keyword field. Their codecs are
made when first used, so that a type may name one declared after it, and a struct
that ends with optional data of itself (a linked list) is read and written in a
loop, never by recursion. A codec is generated code (see "generated codecs" below),
with the closures over each field's type kept as the reference it falls back on.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import keyword
import linecache
import struct as _struct
import sys
import typing
from typing import Any, TypeVar, dataclass_transform

from servekit.rpc.xdr import (
    _CLASS_TYPES,
    _DECLARING_MODULES,
    _LENGTH,
    _ZEROS,
    Pack,
    Unpack,
    XdrError,
    XdrType,
    _Decoding,
    _Inline,
    _lazy,
    _present,
    boolean,
    int32,
    type_of,
    uint32,
)

if typing.TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = ["case", "default", "discriminant", "struct", "union"]

C = TypeVar("C")


# -- structs -----------------------------------------------------------------------------


@dataclass_transform()
def struct(cls: type[C]) -> type[C]:
    """Declare a struct: ``cls`` becomes a slotted dataclass whose fields, in order,
    are the struct's, each typed as the module's docstring shows."""
    made = dataclasses.dataclass(slots=True)(cls)
    _remember_module(made)
    _CLASS_TYPES[made] = XdrType(made.__name__, lambda: _struct_codec(made))
    return made


def _remember_module(cls: type[Any]) -> None:
    module = sys.modules.get(cls.__module__)
    if module is not None and module not in _DECLARING_MODULES:
        _DECLARING_MODULES.append(module)


def _field_types(cls: type[Any], skip: Sequence[str] = ()) -> list[tuple[str, XdrType[Any]]]:
    """(name, XDR type) of each field of the dataclass ``cls``, in order."""
    module = sys.modules.get(cls.__module__)
    namespace = dict(vars(module)) if module is not None else {}
    # The module's names, not the class's: a field named like a type (``list``)
    # would otherwise stand for that type in the annotations after it.
    hints = typing.get_type_hints(cls, globalns=namespace, localns=namespace, include_extras=True)
    found = []
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        declared = hints[field.name]
        try:
            found.append((field.name, _lazy(declared, namespace)()))
        except TypeError as exc:
            raise TypeError(f"{cls.__name__}.{field.name}: {exc}") from None
    return found


def _struct_codec(cls: type[Any]) -> tuple[Pack, Unpack]:
    fields = _field_types(cls)
    chain = _self_chain(cls, fields)
    if chain is not None:
        reference = _chain_codec(cls, fields, chain)
    else:
        reference = _plain_codec(cls, fields)
    if not _can_generate(fields):
        return reference
    return _generated_struct(cls, fields, chain, reference)


def _plain_codec(cls: type[Any], fields: list[tuple[str, XdrType[Any]]]) -> tuple[Pack, Unpack]:
    """The reference codec of a struct: each field through its type's closures."""
    owner = cls.__name__
    packs = tuple((name, xdr_type.pack) for name, xdr_type in fields)
    unpacks = tuple((name, xdr_type.unpack) for name, xdr_type in fields)

    def pack(out: bytearray, value: Any) -> None:
        if not isinstance(value, cls):
            raise TypeError(f"{owner} takes a {owner}, not {type(value).__name__}")
        _pack_fields(out, value, owner, packs)

    def unpack(data: bytes, pos: int, ctx: _Decoding) -> tuple[Any, int]:
        values, pos = _unpack_fields(data, pos, ctx, owner, unpacks)
        return cls(*values), pos

    return pack, unpack


def _self_chain(cls: type[Any], fields: list[tuple[str, XdrType[Any]]]) -> int | None:
    """The index of the last field if it is optional data of ``cls`` itself (``node
    *next``: a linked list), which is then read and written in a loop, not by recursion."""
    if not fields:
        return None
    last = fields[-1][1]
    element = last.element
    if element is None:
        return None
    declared = getattr(element, "declared", None)
    if declared is cls or declared == cls.__name__:
        return len(fields) - 1
    return None


def _chain_codec(
    cls: type[Any], fields: list[tuple[str, XdrType[Any]]], link: int
) -> tuple[Pack, Unpack]:
    owner = cls.__name__
    link_name = fields[link][0]
    packs = tuple((name, xdr_type.pack) for name, xdr_type in fields[:link])
    unpacks = tuple((name, xdr_type.unpack) for name, xdr_type in fields[:link])

    def pack(out: bytearray, value: Any) -> None:
        while True:
            if not isinstance(value, cls):
                raise TypeError(f"{owner} takes a {owner}, not {type(value).__name__}")
            _pack_fields(out, value, owner, packs)
            value = getattr(value, link_name)
            if value is None:
                out += _ZEROS
                return
            out += _ONE

    def unpack(data: bytes, pos: int, ctx: _Decoding) -> tuple[Any, int]:
        first: Any = None
        previous: Any = None
        while True:
            values, pos = _unpack_fields(data, pos, ctx, owner, unpacks)
            node = cls(*values, None)
            if previous is None:
                first = node
            else:
                setattr(previous, link_name, node)
            previous = node
            present, pos = _present(data, pos)
            if not present:
                return first, pos
            ctx.node()

    return pack, unpack


# -- the fields, one by one: the reference, and the rare paths of generated code ---------

_ONE = b"\0\0\0\1"
_NAMED = (XdrError, TypeError, _struct.error, OverflowError, AttributeError)


def _in_field(exc: Exception, owner: str, name: str) -> Exception:
    """``exc`` with the field it happened in leading its message. Only the innermost
    field is named, once: an error deep in a value is not renamed at every level."""
    if type(exc) not in _NAMED or exc.__dict__.get("_xdr_field"):
        return exc
    named = type(exc)(f"{owner}.{name}: {exc}")
    named.__dict__["_xdr_field"] = True
    return named


def _pack_fields(
    out: bytearray, value: Any, owner: str, fields: tuple[tuple[str, Pack], ...]
) -> None:
    for name, pack in fields:
        try:
            pack(out, getattr(value, name))
        except Exception as exc:
            raise _in_field(exc, owner, name) from None


def _unpack_fields(
    data: bytes, pos: int, ctx: _Decoding, owner: str, fields: tuple[tuple[str, Unpack], ...]
) -> tuple[list[Any], int]:
    values = []
    for name, unpack in fields:
        try:
            value, pos = unpack(data, pos, ctx)
        except Exception as exc:
            raise _in_field(exc, owner, name) from None
        values.append(value)
    return values, pos


# -- values in a row ---------------------------------------------------------------------


def row_unpack(owner: str, fields: Sequence[tuple[str, XdrType[Any]]]) -> Unpack:
    """Read values of the types of ``fields`` one after the other, as a tuple: a
    procedure's arguments (rpcgen -N's several arguments follow each other on the
    wire). Generated as a struct's reading is, for the time of a struct's; the
    names only say where a value was wrong."""
    fields = list(fields)
    reference = tuple((name, xdr_type.unpack) for name, xdr_type in fields)
    if not _can_generate(fields):

        def unpack(data: bytes, pos: int, ctx: _Decoding) -> tuple[Any, int]:
            values, pos = _unpack_fields(data, pos, ctx, owner, reference)
            return tuple(values), pos

        return unpack
    reader = _Source()
    names, _ = _emit_unpack(reader, 1, reader.bind(owner, "o"), fields)
    reader.add(1, f"return ({''.join(name + ', ' for name in names)}), pos")
    built: Unpack = reader.build("unpack(data, pos, ctx)", _preamble(reader), owner)
    return built


# -- unions ------------------------------------------------------------------------------

_UNION_OF: dict[type[Any], _UnionSpec] = {}


@dataclasses.dataclass
class _UnionSpec:
    switch: str
    discriminant: XdrType[Any]
    discriminant_type: Any
    arms: dict[int, type[Any]] = dataclasses.field(default_factory=dict)
    default: type[Any] | None = None


class _Switch:
    """What discriminant() leaves on a union's class: where its switch is named."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<xdr discriminant>"


def discriminant() -> Any:
    """Declare a union's discriminant: ``kind: ShapeKind = xdr.discriminant()``.

    Every arm holds it as a keyword field, fixed for an arm of one case value (a
    type checker sees a keyword field with a default: optional everywhere).
    """
    return _Switch()


@dataclass_transform(kw_only_default=True)
def union(*, of: Any) -> Callable[[type[C]], type[C]]:
    """Declare a union that switches on ``of`` (an IntEnum, ``int32``, ``uint32`` or
    ``boolean``); the class names its discriminant with ``= xdr.discriminant()``. Its
    arms are subclasses declared with ``@case(value, ...)`` or ``@default``."""
    switch_type = type_of(of)
    if switch_type not in (int32, uint32, boolean) and not (
        isinstance(of, type) and issubclass(of, enum.IntEnum)
    ):
        raise TypeError(f"a union switches on an enum, int, unsigned int or bool, not {of!r}")

    def declare(cls: type[C]) -> type[C]:
        names = [name for name, value in vars(cls).items() if isinstance(value, _Switch)]
        if len(names) != 1:
            raise TypeError(
                f"{cls.__name__}: name its discriminant once, as in "
                "'kind: ShapeKind = xdr.discriminant()'"
            )
        _UNION_OF[cls] = _UnionSpec(names[0], switch_type, of)
        _remember_module(cls)
        _CLASS_TYPES[cls] = XdrType(cls.__name__, lambda: _union_codec(cls))
        return cls

    return declare


def _union_spec(arm: type[Any]) -> tuple[type[Any], _UnionSpec]:
    for base in arm.__mro__[1:]:
        spec = _UNION_OF.get(base)
        if spec is not None:
            return base, spec
    raise TypeError(
        f"{arm.__name__} is an arm of no union: subclass a class declared with @xdr.union"
    )


@dataclass_transform()
def case(*values: Any) -> Callable[[type[C]], type[C]]:
    """Declare an arm of the union ``cls`` subclasses, for the discriminant ``values``;
    its fields are the arm's (none for a ``void`` arm)."""
    if not values:
        raise TypeError("case() needs at least one discriminant value")

    def declare(cls: type[C]) -> type[C]:
        return _declare_arm(cls, values)

    return declare


@dataclass_transform()
def default(cls: type[C]) -> type[C]:
    """Declare the union's ``default`` arm: every discriminant value no case names."""
    return _declare_arm(cls, ())


def _declare_arm(cls: type[C], values: tuple[Any, ...]) -> type[C]:
    union_class, spec = _union_spec(cls)
    switch = spec.switch
    # The discriminant is a keyword field of every arm: fixed by default for an arm
    # of one value, given for the others (a default arm, several values).
    fixed = values[0] if len(values) == 1 else dataclasses.MISSING
    annotations = dict(inspect.get_annotations(cls))
    cls.__annotations__ = {**annotations, switch: spec.discriminant_type}
    if fixed is not dataclasses.MISSING:
        setattr(cls, switch, dataclasses.field(default=fixed, kw_only=True))
    else:
        setattr(cls, switch, dataclasses.field(kw_only=True))
    made: type[C] = dataclasses.dataclass(slots=True)(cls)
    for value in values:
        number = int(value)
        if number in spec.arms:
            raise TypeError(f"{union_class.__name__}: two arms for {value!r}")
        spec.arms[number] = made
    if not values:
        if spec.default is not None:
            raise TypeError(f"{union_class.__name__}: two default arms")
        spec.default = made
    _remember_module(made)
    return made


def _union_codec(cls: type[Any]) -> tuple[Pack, Unpack]:
    spec = _UNION_OF[cls]
    switch = spec.switch
    pack_switch, unpack_switch = spec.discriminant.pack, spec.discriminant.unpack
    arm_fields: dict[type[Any], list[tuple[str, XdrType[Any]]]] = {}
    for arm in _arms(spec):
        arm_fields[arm] = _field_types(arm, skip=(switch,))
    packs = {
        arm: tuple((name, xdr_type.pack) for name, xdr_type in fields)
        for arm, fields in arm_fields.items()
    }
    unpacks = {
        arm: tuple((name, xdr_type.unpack) for name, xdr_type in fields)
        for arm, fields in arm_fields.items()
    }
    default_arm = spec.default

    def pack(out: bytearray, value: Any) -> None:
        fields = packs.get(type(value))
        if fields is None:
            raise TypeError(f"{value!r} is not an arm of {cls.__name__}")
        discriminant = getattr(value, switch)
        chosen = spec.arms.get(int(discriminant), default_arm)
        if chosen is not type(value):
            raise TypeError(
                f"{type(value).__name__} is not the arm of {cls.__name__} "
                f"for {switch}={discriminant!r}"
            )
        pack_switch(out, discriminant)
        _pack_fields(out, value, type(value).__name__, fields)

    def unpack(data: bytes, pos: int, ctx: _Decoding) -> tuple[Any, int]:
        # An enum discriminant is read as the enum: a value it does not declare is
        # refused even where a default arm would take it (RFC 4506 4.15).
        discriminant, pos = unpack_switch(data, pos, ctx)
        arm = spec.arms.get(int(discriminant), default_arm)
        if arm is None:
            raise XdrError(f"{cls.__name__}: no arm for {switch}={discriminant!r}")
        values, pos = _unpack_fields(data, pos, ctx, arm.__name__, unpacks[arm])
        return arm(*values, **{switch: discriminant}), pos

    if not all(_can_generate(fields) for fields in arm_fields.values()) or not _is_name(switch):
        return pack, unpack
    return _generated_union(cls, spec, arm_fields, (pack, unpack))


def _arms(spec: _UnionSpec) -> list[type[Any]]:
    """The arms of a union, each once, in the order they were declared."""
    found = list(dict.fromkeys(spec.arms.values()))
    if spec.default is not None and spec.default not in found:
        found.append(spec.default)
    return found


# -- generated codecs --------------------------------------------------------------------
#
# A struct's or union's codec is, once built, the source of one function for each
# direction run through exec(), as attrs and msgspec do: every field in line, the
# position a local, and each run of fixed-size fields (ints, floats, bools, enums)
# one struct.Struct call. Calling a closure per field, and returning a (value, pos)
# tuple from each, cost as much as xdrlib's whole work (docs/performance.md).
#
# The generated code only takes the common case. Anything else (a value to refuse,
# an int subclass, a length over its bound, a flag that is not 0 or 1, ...) goes to
# the field's own pack/unpack, the reference, which raises the precise error or does
# the right thing: correctness lives there once. Nothing is written to ``out`` before
# a field's checks pass, so that the reference may write it after.
#
# The only names in the source are made here: every value (a class, a Struct, a
# message) is a name bound in the function's namespace, and field names, checked to be
# identifiers, appear only as attributes and keywords.


class _Retry(Exception):
    """Generated code giving a field to the reference path; never escapes."""


_BOOLS = {0: False, 1: True}
_PACK_CHECKS = {
    "int": "{x}.__class__ is not int",
    "float": "",
    "bool": "({x} is not True and {x} is not False)",
    "enum": "{x} not in {members} or {x}.__class__ is bool",
}
# Lengths up to this have a Struct made in advance for an array of fixed-size elements.
_COUNTED = 64


def _is_name(name: str) -> bool:
    return name.isidentifier() and not keyword.iskeyword(name)


def _can_generate(fields: list[tuple[str, XdrType[Any]]]) -> bool:
    return all(_is_name(name) for name, _ in fields)


def _fixed(xdr_type: XdrType[Any]) -> _Inline | None:
    form = xdr_type.inline
    return form if form is not None and form.kind == "fixed" else None


def _form(xdr_type: XdrType[Any]) -> _Inline | None:
    """How a field of ``xdr_type`` is written in line; None: through its own closures."""
    form = xdr_type.inline
    if form is not None and form.kind == "array":
        # Arrays of numbers only: one Struct call for them all, struct's own checks.
        element = _fixed(_element(form))
        if element is None or element.check not in ("int", "float"):
            return None
    return form


class _Source:
    """The source of one generated function, and the namespace it runs in."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.names: dict[str, Any] = {
            "_BOOLS": _BOOLS,
            "_ONE": _ONE,
            "_Retry": _Retry,
            "_ZEROS": _ZEROS,
            "_in_field": _in_field,
            "_length_pack": _LENGTH.pack,
            "_length_unpack": _LENGTH.unpack_from,
            "_pack_fields": _pack_fields,
            "_present": _present,
            "_struct_pack": _struct.pack,
            "_struct_unpack_from": _struct.unpack_from,
            "_unpack_fields": _unpack_fields,
        }
        self.count = 0
        self.wants_length = False
        self.wants_limits = False

    def bind(self, value: Any, stem: str = "k") -> str:
        self.count += 1
        name = f"_{stem}{self.count}"
        self.names[name] = value
        return name

    def local(self, stem: str = "x") -> str:
        self.count += 1
        return f"{stem}{self.count}"

    def add(self, depth: int, line: str) -> None:
        self.lines.append("    " * depth + line)

    def build(self, signature: str, preamble: list[str], where: str) -> Any:
        lines = [f"def {signature}:", *("    " + line for line in preamble), *self.lines]
        text = "\n".join(lines) + "\n"
        filename = f"<xdr {where}>"
        exec(compile(text, filename, "exec"), self.names)
        linecache.cache[filename] = (len(text), None, text.splitlines(True), filename)
        return self.names[signature.partition("(")[0]]


def _members(form: _Inline) -> dict[int, Any]:
    assert form.enum is not None
    return {member.value: member for member in form.enum}


# -- writing ------------------------------------------------------------------------------


def _emit_pack(
    src: _Source,
    depth: int,
    obj: str,
    owner: str,
    fields: Sequence[tuple[str, XdrType[Any]]],
    known: dict[str, str] | None = None,
) -> None:
    """Write the fields of the object named ``obj``; ``known`` names fields already in
    locals and checked (a union's discriminant)."""
    index = 0
    while index < len(fields):
        end = index
        while end < len(fields) and _fixed(fields[end][1]) is not None:
            end += 1
        if end > index:
            _pack_run(src, depth, obj, owner, fields[index:end], known or {})
            index = end
        else:
            _pack_one(src, depth, obj, owner, *fields[index])
            index += 1


def _pack_run(
    src: _Source,
    depth: int,
    obj: str,
    owner: str,
    run: Sequence[tuple[str, XdrType[Any]]],
    known: dict[str, str],
) -> None:
    values, checks, fmt = [], [], ">"
    src.add(depth, "try:")
    for name, xdr_type in run:
        form = _fixed(xdr_type)
        assert form is not None
        fmt += form.fmt
        if name in known:
            values.append(known[name])
            continue
        x = src.local()
        src.add(depth + 1, f"{x} = {obj}.{name}")
        values.append(x)
        check = _PACK_CHECKS[form.check]
        if check:
            members = src.bind(_members(form), "m") if form.check == "enum" else ""
            checks.append(check.format(x=x, members=members))
    if checks:
        src.add(depth + 1, f"if {' or '.join(checks)}:")
        src.add(depth + 2, "raise _Retry")
    packer = src.bind(_struct.Struct(fmt).pack, "s")
    src.add(depth + 1, f"out += {packer}({', '.join(values)})")
    src.add(depth, "except Exception:")
    reference = src.bind(tuple((name, xdr_type.pack) for name, xdr_type in run), "f")
    src.add(depth + 1, f"_pack_fields(out, {obj}, {owner}, {reference})")


def _pack_one(
    src: _Source, depth: int, obj: str, owner: str, name: str, xdr_type: XdrType[Any]
) -> None:
    form = _form(xdr_type)
    reference = src.bind(((name, xdr_type.pack),), "f")
    x = src.local()
    fallback = f"_pack_fields(out, {obj}, {owner}, {reference})"
    if form is None or (form.kind == "optional" and _fixed(_element(form)) is None):
        # Not in line, or optional data of a struct: its own code, the error named.
        src.add(depth, "try:")
        src.add(depth + 1, f"{x} = {obj}.{name}")
        if form is None:
            src.add(depth + 1, f"{src.bind(xdr_type.pack, 'p')}(out, {x})")
        else:
            target = src.bind(_element(form), "t")  # .pack at the call: a tree names itself
            src.add(depth + 1, f"if {x} is None:")
            src.add(depth + 2, "out += _ZEROS")
            src.add(depth + 1, "else:")
            src.add(depth + 2, "out += _ONE")
            src.add(depth + 2, f"{target}.pack(out, {x})")
        src.add(depth, "except Exception as exc:")
        src.add(depth + 1, f"raise _in_field(exc, {owner}, {src.bind(name, 'n')}) from None")
        return
    src.add(depth, "try:")
    src.add(depth + 1, f"{x} = {obj}.{name}")
    body = depth + 1
    if form.kind == "bytes":
        raw, size = src.local("raw"), src.local("n")
        src.add(body, f"if {x}.__class__ is not {'str' if form.text else 'bytes'}:")
        src.add(body + 1, "raise _Retry")
        src.add(body, f"{raw} = {x}.encode()" if form.text else f"{raw} = {x}")
        src.add(body, f"{size} = len({raw})")
        if form.maximum is not None:
            src.add(body, f"if {size} > {int(form.maximum)}:")
            src.add(body + 1, "raise _Retry")
        src.add(body, f"out += _length_pack({size})")
        src.add(body, f"out += {raw}")
        src.add(body, f"out += _ZEROS[:-{size} & 3]")
    elif form.kind == "opaque":
        assert form.size is not None
        src.add(body, f"if {x}.__class__ is not bytes or len({x}) != {int(form.size)}:")
        src.add(body + 1, "raise _Retry")
        src.add(body, f"out += {x}")
        if -form.size & 3:
            src.add(body, f"out += {src.bind(bytes(-form.size & 3), 'z')}")
    elif form.kind == "optional":
        element = _fixed(_element(form))
        assert element is not None
        src.add(body, f"if {x} is None:")
        src.add(body + 1, "out += _ZEROS")
        src.add(body, "else:")
        check = _PACK_CHECKS[element.check]
        if check:
            members = src.bind(_members(element), "m") if element.check == "enum" else ""
            src.add(body + 1, f"if {check.format(x=x, members=members)}:")
            src.add(body + 2, "raise _Retry")
        packer = src.bind(_struct.Struct(">I" + element.fmt).pack, "s")
        src.add(body + 1, f"out += {packer}(1, {x})")
    else:  # an array of numbers
        element = _fixed(_element(form))
        assert form.kind == "array"
        assert element is not None
        size = src.local("n")
        src.add(body, f"{size} = len({x})")
        bound = form.size if form.size is not None else form.maximum
        if form.size is not None:
            src.add(body, f"if {size} != {int(form.size)}:")
            src.add(body + 1, "raise _Retry")
        elif form.maximum is not None:
            src.add(body, f"if {size} > {int(form.maximum)}:")
            src.add(body + 1, "raise _Retry")
        if element.check == "int":
            item = src.local("e")
            src.add(body, f"for {item} in {x}:")
            src.add(body + 1, f"if {item}.__class__ is not int:")
            src.add(body + 2, "raise _Retry")
        if form.size is not None:
            packer = src.bind(_struct.Struct(f">{int(form.size)}{element.fmt}").pack, "s")
            src.add(body, f"out += {packer}(*{x})")
        elif bound is not None and bound <= _COUNTED:
            packers = [_struct.Struct(f">I{n}{element.fmt}").pack for n in range(bound + 1)]
            src.add(body, f"out += {src.bind(packers, 's')}[{size}]({size}, *{x})")
        else:  # struct's own cache of formats
            fmt = src.bind(element.fmt, "c")
            src.add(body, f"out += _struct_pack('>I' + str({size}) + {fmt}, {size}, *{x})")
    src.add(depth, "except Exception:")
    src.add(depth + 1, fallback)


def _element(form: _Inline) -> XdrType[Any]:
    assert form.element is not None
    return form.element()


# -- reading ------------------------------------------------------------------------------


def _emit_unpack(
    src: _Source,
    depth: int,
    owner: str,
    fields: Sequence[tuple[str, XdrType[Any]]],
    flag: str | None = None,
) -> tuple[list[str], bool]:
    """Read the fields into locals: their names, in order, and whether the word after
    them (a linked list's flag) was read too, into ``flag``, with the last run (None
    if that run was read by the reference, the word left to read)."""
    found: list[str] = []
    index = 0
    fused = False
    while index < len(fields):
        end = index
        while end < len(fields) and _fixed(fields[end][1]) is not None:
            end += 1
        if end > index:
            fused = flag is not None and end == len(fields)
            found += _unpack_run(src, depth, owner, fields[index:end], flag if fused else None)
            index = end
        else:
            found.append(_unpack_one(src, depth, owner, *fields[index]))
            index += 1
    return found, fused


def _unpack_run(
    src: _Source,
    depth: int,
    owner: str,
    run: Sequence[tuple[str, XdrType[Any]]],
    flag: str | None = None,
) -> list[str]:
    names = [src.local() for _ in run]
    fmt = "".join(_fixed(xdr_type).fmt for _, xdr_type in run)  # type: ignore[union-attr]
    codec = _struct.Struct(">" + fmt + ("I" if flag else ""))
    targets = ", ".join(names + ([flag] if flag else []))
    src.add(depth, "try:")
    src.add(depth + 1, f"{targets}, = {src.bind(codec.unpack_from, 'u')}(data, pos)")
    for x, (_, xdr_type) in zip(names, run, strict=True):
        form = _fixed(xdr_type)
        assert form is not None
        if form.check == "bool":
            src.add(depth + 1, f"{x} = _BOOLS[{x}]")
        elif form.check == "enum":
            src.add(depth + 1, f"{x} = {src.bind(_members(form), 'm')}[{x}]")
    src.add(depth + 1, f"pos += {codec.size}")
    src.add(depth, "except Exception:")
    reference = src.bind(tuple((name, xdr_type.unpack) for name, xdr_type in run), "f")
    src.add(
        depth + 1,
        f"({', '.join(names)},), pos = _unpack_fields(data, pos, ctx, {owner}, {reference})",
    )
    if flag:
        src.add(depth + 1, f"{flag} = None")
        src.add(depth + 1, "pos += 4")
    return names


def _unpack_one(src: _Source, depth: int, owner: str, name: str, xdr_type: XdrType[Any]) -> str:
    form = _form(xdr_type)
    x = src.local()
    reference = src.bind(((name, xdr_type.unpack),), "f")
    fallback = f"({x},), pos = _unpack_fields(data, pos, ctx, {owner}, {reference})"
    if form is None:
        src.add(depth, "try:")
        src.add(depth + 1, f"{x}, pos = {src.bind(xdr_type.unpack, 'u')}(data, pos, ctx)")
        src.add(depth, "except Exception as exc:")
        src.add(depth + 1, f"raise _in_field(exc, {owner}, {src.bind(name, 'n')}) from None")
        return x
    body = depth + 1
    if form.kind == "optional":
        src.wants_limits = True
        flag = src.local("w")
        src.add(depth, f"{flag} = data[pos:pos + 4]")
        src.add(depth, f"if {flag} == _ZEROS:")
        src.add(body, f"{x} = None")
        src.add(body, "pos += 4")
        src.add(depth, f"elif {flag} == _ONE and ctx.nodes < limits.max_nodes:")
        src.add(body, "ctx.nodes += 1")
        target = _element(form)
        element = _fixed(target)
        src.add(body, "try:")
        if element is None:
            src.add(body + 1, f"{x}, pos = {src.bind(target, 't')}.unpack(data, pos + 4, ctx)")
            src.add(body, "except Exception as exc:")
            src.add(body + 1, f"raise _in_field(exc, {owner}, {src.bind(name, 'n')}) from None")
        else:
            codec = _struct.Struct(">" + element.fmt)
            src.add(body + 1, f"{x}, = {src.bind(codec.unpack_from, 'u')}(data, pos + 4)")
            if element.check == "bool":
                src.add(body + 1, f"{x} = _BOOLS[{x}]")
            elif element.check == "enum":
                src.add(body + 1, f"{x} = {src.bind(_members(element), 'm')}[{x}]")
            src.add(body + 1, f"pos += {4 + codec.size}")
            src.add(body, "except Exception:")
            inner = src.bind(((name, target.unpack),), "f")
            src.add(body + 1, f"({x},), pos = _unpack_fields(data, pos + 4, ctx, {owner}, {inner})")
        src.add(depth, "else:  # a flag that is not 0 or 1, or a node past the cap: refused")
        src.add(body, fallback)
        return x
    src.wants_length = True
    if form.kind == "opaque":
        assert form.size is not None
        width, pad = int(form.size), -form.size & 3
        end = src.local("end")
        src.add(depth, f"{end} = pos + {width}")
        if pad:
            zeros = src.bind(bytes(pad), "z")
            src.add(depth, f"if {end} + {pad} <= length and data[{end}:{end} + {pad}] == {zeros}:")
        else:
            src.add(depth, f"if {end} <= length:")
        src.add(body, f"{x} = bytes(data[pos:{end}])")
        src.add(body, f"pos = {end} + {pad}")
        src.add(depth, "else:")
        src.add(body, fallback)
        return x
    src.add(depth, "try:")
    if form.kind == "bytes":
        size, end, padded = src.local("n"), src.local("end"), src.local("padded")
        if form.maximum is not None:
            bound = str(int(form.maximum))
        else:
            src.wants_limits = True
            bound = "limits.max_bytes"
        src.add(body, f"{size}, = _length_unpack(data, pos)")
        src.add(body, f"{end} = pos + 4 + {size}")
        src.add(body, f"{padded} = {end} + (-{size} & 3)")
        src.add(
            body,
            f"if {size} > {bound} or {padded} > length "
            f"or {size} & 3 and data[{end}:{padded}] != _ZEROS[:{padded} - {end}]:",
        )
        src.add(body + 1, "raise _Retry")
        if form.text:
            src.add(body, f"{x} = str(data[pos + 4:{end}], 'utf-8')")
        else:
            src.add(body, f"{x} = bytes(data[pos + 4:{end}])")
        src.add(body, f"pos = {padded}")
    else:  # an array of numbers
        element = _fixed(_element(form))
        assert form.kind == "array"
        assert element is not None
        item_size = _struct.calcsize(">" + element.fmt)
        size = src.local("n")
        if form.size is not None:
            src.add(body, f"{size} = {int(form.size)}")
            src.add(body, f"if {size} * {item_size} > length - pos:")
            src.add(body + 1, "raise _Retry")
            start = "pos"
            reader = src.bind(_struct.Struct(f">{int(form.size)}{element.fmt}").unpack_from, "u")
            src.add(body, f"{x} = list({reader}(data, pos))")
        else:
            if form.maximum is not None:
                bound = str(int(form.maximum))
            else:
                src.wants_limits = True
                bound = "limits.max_array"
            src.add(body, f"{size}, = _length_unpack(data, pos)")
            # Both checked before a list of that size is made.
            src.add(body, f"if {size} > {bound} or {size} * {item_size} > length - pos - 4:")
            src.add(body + 1, "raise _Retry")
            start = "pos + 4"
            if form.maximum is not None and form.maximum <= _COUNTED:
                readers = [
                    _struct.Struct(f">{n}{element.fmt}").unpack_from
                    for n in range(form.maximum + 1)
                ]
                src.add(body, f"{x} = list({src.bind(readers, 'u')}[{size}](data, {start}))")
            else:  # struct's own cache of formats
                fmt = src.bind(element.fmt, "c")
                src.add(
                    body,
                    f"{x} = list(_struct_unpack_from('>' + str({size}) + {fmt}, data, {start}))",
                )
        src.add(body, f"pos = {start} + {size} * {item_size}")
    src.add(depth, "except Exception:")
    src.add(body, fallback)
    return x


# -- the functions ------------------------------------------------------------------------


def _generated_struct(
    cls: type[Any],
    fields: list[tuple[str, XdrType[Any]]],
    link: int | None,
    reference: tuple[Pack, Unpack],
) -> tuple[Pack, Unpack]:
    where = f"{cls.__module__}.{cls.__qualname__}"
    head = fields if link is None else fields[:link]

    writer = _Source()
    owner, kind = writer.bind(cls.__name__, "o"), writer.bind(cls, "cls")
    wrong = f"return {writer.bind(reference[0], 'r')}(out, value)"  # raises the TypeError
    if link is None:
        writer.add(1, f"if not isinstance(value, {kind}):")
        writer.add(2, wrong)
        _emit_pack(writer, 1, "value", owner, head)
    else:
        writer.add(1, "while True:")
        writer.add(2, f"if not isinstance(value, {kind}):")
        writer.add(3, wrong)
        _emit_pack(writer, 2, "value", owner, head)
        writer.add(2, f"value = value.{fields[link][0]}")
        writer.add(2, "if value is None:")
        writer.add(3, "out += _ZEROS")
        writer.add(3, "return")
        writer.add(2, "out += _ONE")
    pack = writer.build("pack(out, value)", [], f"pack {where}")

    reader = _Source()
    owner, kind = reader.bind(cls.__name__, "o"), reader.bind(cls, "cls")
    if link is None:
        names, _ = _emit_unpack(reader, 1, owner, head)
        reader.add(1, f"return {kind}({', '.join(names)}), pos")
    else:
        reader.wants_limits = True
        reader.add(1, "first = previous = None")
        reader.add(1, "while True:")
        # The flag after a node read with its last fields when they are fixed-size:
        # one struct call a node.
        names, fused = _emit_unpack(reader, 2, owner, head, "flag")
        reader.add(2, f"node = {kind}({''.join(name + ', ' for name in names)}None)")
        reader.add(2, "if previous is None:")
        reader.add(3, "first = node")
        reader.add(2, "else:")
        reader.add(3, f"previous.{fields[link][0]} = node")
        reader.add(2, "previous = node")
        if not fused:
            reader.add(2, "word = data[pos:pos + 4]")
            reader.add(2, "flag = 1 if word == _ONE else 0 if word == _ZEROS else None")
            reader.add(2, "pos += 4")
        reader.add(2, "if flag == 1 and ctx.nodes < limits.max_nodes:")
        reader.add(3, "ctx.nodes += 1")
        reader.add(2, "elif flag == 0:")
        reader.add(3, "return first, pos")
        reader.add(2, "else:  # refused, as the reference refuses it")
        reader.add(3, "present, pos = _present(data, pos - 4)")
        reader.add(3, "if not present:")
        reader.add(4, "return first, pos")
        reader.add(3, "ctx.node()")
    unpack = reader.build("unpack(data, pos, ctx)", _preamble(reader), f"unpack {where}")
    return pack, unpack


def _preamble(src: _Source) -> list[str]:
    return (["length = len(data)"] if src.wants_length else []) + (
        ["limits = ctx.limits"] if src.wants_limits else []
    )


def _generated_union(
    cls: type[Any],
    spec: _UnionSpec,
    arm_fields: dict[type[Any], list[tuple[str, XdrType[Any]]]],
    reference: tuple[Pack, Unpack],
) -> tuple[Pack, Unpack]:
    where = f"{cls.__module__}.{cls.__qualname__}"
    switch = spec.switch
    form = _fixed(spec.discriminant)
    assert form is not None
    default_arm = spec.default
    arms = _arms(spec)
    if not arms:
        return reference

    writer = _Source()
    chosen = writer.bind(spec.arms, "a")
    fallback = f"return {writer.bind(reference[0], 'r')}(out, value)"
    check = _PACK_CHECKS[form.check].format(
        x="d", members=writer.bind(_members(form), "m") if form.check == "enum" else ""
    )
    writer.add(1, "t = value.__class__")
    for number, arm in enumerate(arms):
        writer.add(1, f"{'if' if number == 0 else 'elif'} t is {writer.bind(arm, 'cls')}:")
        writer.add(2, f"d = value.{switch}")
        # The discriminant checked as its type does, and it chooses this arm: else the
        # reference says which is wrong.
        test = f"{chosen}.get(d, {writer.bind(default_arm, 'cls')}) is not t"
        writer.add(2, f"if {check + ' or ' if check else ''}{test}:")
        writer.add(3, fallback)
        fields = [(switch, spec.discriminant), *arm_fields[arm]]
        _emit_pack(writer, 2, "value", writer.bind(arm.__name__, "o"), fields, {switch: "d"})
    writer.add(1, "else:")
    writer.add(2, fallback)
    pack = writer.build("pack(out, value)", [], f"pack {where}")

    reader = _Source()
    fallback = f"return {reader.bind(reference[1], 'r')}(data, pos, ctx)"
    reader.add(1, f"r, = {reader.bind(_struct.Struct('>' + form.fmt).unpack_from, 'u')}(data, pos)")
    if form.check in ("bool", "enum"):
        table = "_BOOLS" if form.check == "bool" else reader.bind(_members(form), "m")
        reader.add(1, f"d = {table}.get(r)")
        reader.add(1, "if d is None:")
        reader.add(2, fallback)
    else:
        reader.add(1, "d = r")
    first = True
    for arm in arms:
        numbers = sorted(number for number, chosen_arm in spec.arms.items() if chosen_arm is arm)
        if arm is default_arm and not numbers:
            continue
        test = " or ".join(f"r == {int(number)}" for number in numbers)
        reader.add(1, f"{'if' if first else 'elif'} {test}:")
        _unpack_arm(reader, 2, arm, arm_fields[arm], switch)
        first = False
    if default_arm is not None:
        if first:
            _unpack_arm(reader, 1, default_arm, arm_fields[default_arm], switch)
        else:
            reader.add(1, "else:")
            _unpack_arm(reader, 2, default_arm, arm_fields[default_arm], switch)
    else:
        if not first:
            reader.add(1, "else:")
        reader.add(2 if not first else 1, fallback)  # no arm: the reference's error
    unpack = reader.build("unpack(data, pos, ctx)", _preamble(reader), f"unpack {where}")
    return pack, unpack


def _unpack_arm(
    src: _Source, depth: int, arm: type[Any], fields: list[tuple[str, XdrType[Any]]], switch: str
) -> None:
    src.add(depth, "pos += 4")
    names, _ = _emit_unpack(src, depth, src.bind(arm.__name__, "o"), fields)
    arguments = "".join(name + ", " for name in names)
    src.add(depth, f"return {src.bind(arm, 'cls')}({arguments}{switch}=d), pos")
