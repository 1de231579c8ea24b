"""What the parser of ``.x`` files makes (servekit.rpc._xparse): sans-IO data only.

A constant used in a declaration (an array's size, a case label, a program's number)
is a ``Value``: its number, and the name it was written as, if any, so that the
generated Python says ``DEMO_MAXNAME`` where the ``.x`` file does.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from servekit.rpc._xlex import Token

__all__ = [
    "Arm",
    "Const",
    "Decl",
    "Definition",
    "Enum",
    "Proc",
    "Program",
    "Spec",
    "Struct",
    "TypeRef",
    "Typedef",
    "Union",
    "Value",
    "Version",
]


@dataclasses.dataclass(frozen=True)
class Value:
    """A constant: its number (a literal's); ``name`` the constant or enum member it
    names, or ``text`` the literal as written; ``token`` where it was written."""

    number: int
    name: str | None = None
    text: str = ""
    token: Token | None = dataclasses.field(default=None, compare=False)
    #: Added to the named constant: an enum member without ``= value`` (C's rule).
    step: int = 0


@dataclasses.dataclass(frozen=True)
class TypeRef:
    """A type specifier: a built-in ("int", "unsigned int", "hyper", "unsigned hyper",
    "float", "double", "quadruple", "bool", "string", "void") or a named type."""

    name: str
    builtin: bool
    token: Token


@dataclasses.dataclass(frozen=True)
class Decl:
    """A declaration: ``kind`` is "plain", "array" (``[size]``), "var_array"
    (``<size>``, size None for ``<>``), "optional" (``*``), "opaque" (``[size]``),
    "var_opaque", "string" or "void"."""

    name: str
    kind: str
    type: TypeRef | None
    size: Value | None
    token: Token


@dataclasses.dataclass(frozen=True)
class Const:
    name: str
    value: Value
    token: Token
    #: A string constant (rpcgen's ``const NAME = "text"``): the literal, quotes and all.
    string: str | None = None


@dataclasses.dataclass(frozen=True)
class Enum:
    name: str
    members: tuple[tuple[str, Value, Token], ...]
    token: Token


@dataclasses.dataclass(frozen=True)
class Struct:
    name: str
    fields: tuple[Decl, ...]
    token: Token


@dataclasses.dataclass(frozen=True)
class Arm:
    labels: tuple[tuple[Value, Token], ...]  # empty for the default arm
    decl: Decl


@dataclasses.dataclass(frozen=True)
class Union:
    name: str
    discriminant: Decl
    arms: tuple[Arm, ...]
    default: Arm | None
    token: Token


@dataclasses.dataclass(frozen=True)
class Typedef:
    name: str
    decl: Decl
    token: Token


@dataclasses.dataclass(frozen=True)
class Proc:
    name: str
    number: Value
    result: TypeRef
    args: tuple[TypeRef, ...]  # () for (void)
    token: Token


@dataclasses.dataclass(frozen=True)
class Version:
    name: str
    number: Value
    procs: tuple[Proc, ...]
    token: Token


@dataclasses.dataclass(frozen=True)
class Program:
    name: str
    number: Value
    versions: tuple[Version, ...]
    token: Token


Definition = Const | Enum | Struct | Union | Typedef | Program


@dataclasses.dataclass(frozen=True)
class Spec:
    """A whole ``.x`` file: its definitions, in order (an inline ``struct``, ``enum``
    or ``union`` in a declaration comes just before the definition that holds it)."""

    file: str
    definitions: tuple[Definition, ...]
    #: ``%#define NAME NUMBER`` lines: constants for a name nothing else defines.
    c_defines: dict[str, Token] = dataclasses.field(default_factory=dict)
