"""Declaring XDR structs and unions as Python classes (see servekit.rpc.xdr).

A struct is a slotted dataclass; a union a base class whose arms are slotted
dataclasses, each holding the discriminant as a keyword field. Their codecs are
made when first used, so that a type may name one declared after it, and a struct
that ends with optional data of itself (a linked list) is read and written in a
loop, never by recursion.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import sys
import typing
from typing import Any, TypeVar, dataclass_transform

from servekit.rpc.xdr import (
    _CLASS_TYPES,
    _DECLARING_MODULES,
    _ZEROS,
    Pack,
    Unpack,
    XdrError,
    XdrType,
    _Decoding,
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
    names = [name for name, _ in fields]
    packs = [(name, xdr_type.pack) for name, xdr_type in fields]
    chain = _self_chain(cls, fields)
    if chain is not None:
        return _chain_codec(cls, fields, chain)
    unpacks = [xdr_type.unpack for _, xdr_type in fields]

    def pack(out: bytearray, value: Any) -> None:
        if not isinstance(value, cls):
            raise TypeError(f"{cls.__name__} takes a {cls.__name__}, not {type(value).__name__}")
        for name, pack_field in packs:
            pack_field(out, getattr(value, name))

    def unpack(data: bytes, pos: int, ctx: _Decoding) -> tuple[Any, int]:
        values = []
        for unpack_field in unpacks:
            field_value, pos = unpack_field(data, pos, ctx)
            values.append(field_value)
        return cls(*values), pos

    del names
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
    head = fields[:link]
    link_name = fields[link][0]
    packs = [(name, xdr_type.pack) for name, xdr_type in head]
    unpacks = [xdr_type.unpack for _, xdr_type in head]

    def pack(out: bytearray, value: Any) -> None:
        while True:
            if not isinstance(value, cls):
                raise TypeError(
                    f"{cls.__name__} takes a {cls.__name__}, not {type(value).__name__}"
                )
            for name, pack_field in packs:
                pack_field(out, getattr(value, name))
            value = getattr(value, link_name)
            if value is None:
                out += _ZEROS
                return
            out += b"\0\0\0\1"

    def unpack(data: bytes, pos: int, ctx: _Decoding) -> tuple[Any, int]:
        first: Any = None
        previous: Any = None
        while True:
            values = []
            for unpack_field in unpacks:
                field_value, pos = unpack_field(data, pos, ctx)
                values.append(field_value)
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
    arms: dict[type[Any], list[tuple[str, Pack]]] = {}
    readers: dict[int, tuple[type[Any], list[Unpack]]] = {}

    def arm_codec(arm: type[Any]) -> None:
        fields = _field_types(arm, skip=(switch,))
        arms[arm] = [(name, xdr_type.pack) for name, xdr_type in fields]
        readers_of[arm] = [xdr_type.unpack for _, xdr_type in fields]

    readers_of: dict[type[Any], list[Unpack]] = {}
    for arm in {*spec.arms.values(), *([spec.default] if spec.default else [])}:
        arm_codec(arm)
    for number, arm in spec.arms.items():
        readers[number] = (arm, readers_of[arm])
    default_arm = spec.default

    def pack(out: bytearray, value: Any) -> None:
        fields = arms.get(type(value))
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
        for name, pack_field in fields:
            pack_field(out, getattr(value, name))

    def unpack(data: bytes, pos: int, ctx: _Decoding) -> tuple[Any, int]:
        # An enum discriminant is read as the enum: a value it does not declare is
        # refused even where a default arm would take it (RFC 4506 4.15).
        discriminant, pos = unpack_switch(data, pos, ctx)
        found = readers.get(int(discriminant))
        if found is None:
            if default_arm is None:
                raise XdrError(f"{cls.__name__}: no arm for {switch}={discriminant!r}")
            arm, unpacks = default_arm, readers_of[default_arm]
        else:
            arm, unpacks = found
        values = []
        for unpack_field in unpacks:
            field_value, pos = unpack_field(data, pos, ctx)
            values.append(field_value)
        made = arm(*values, **{switch: discriminant})
        return made, pos

    return pack, unpack
