"""The names of a parsed ``.x`` file, checked: every name defined once, every type and
constant used defined (anywhere in the file: XDR types may be used before they are
defined), every number in range, every union switching on a type it may.

rpcgen's C understands a few type names no ``.x`` defines, from libtirpc's headers;
real files use them (``u_int``, ``uint32_t``, ``netobj``, ``bool_t``, ...). They mean
the XDR types libtirpc's ``xdr_u_int``, ``xdr_uint32_t``, ... read and write
(``long`` and ``char`` are 4 bytes on the wire, as ``xdr_long``/``xdr_char`` write
them; ``netobj`` is ``opaque<1024>``, ``des_block`` ``opaque[8]``, ``netbuf``
``opaque<>``, ``rpcprog_t`` and its kin ``unsigned int``), unless the file defines
the name itself. So are the constants ``MAXNETNAMELEN`` and ``MAX_NETOBJ_SZ``, and
C's ``TRUE`` and ``FALSE``.
"""

from __future__ import annotations

import dataclasses
import re

from servekit.rpc._xast import (
    Const,
    Decl,
    Definition,
    Enum,
    Program,
    Spec,
    Struct,
    Typedef,
    TypeRef,
    Union,
    Value,
)
from servekit.rpc._xlex import CompileError, Token, _number

__all__ = ["C_TYPES", "Symbols", "check"]

C_TYPES = {
    "char": "int", "short": "int", "long": "int", "int32_t": "int",
    "u_char": "unsigned int", "u_short": "unsigned int", "u_long": "unsigned int",
    "u_int": "unsigned int", "uint32_t": "unsigned int", "u_int32_t": "unsigned int",
    "int64_t": "hyper", "quad_t": "hyper",
    "uint64_t": "unsigned hyper", "u_int64_t": "unsigned hyper", "u_quad_t": "unsigned hyper",
    "bool_t": "bool",
    "rpcprog_t": "unsigned int", "rpcvers_t": "unsigned int", "rpcproc_t": "unsigned int",
    "rpcprot_t": "unsigned int", "rpcport_t": "unsigned int",
}  # fmt: skip
#: Constants of libtirpc's headers that real files use as their own.
C_CONSTANTS = {"MAXNETNAMELEN": 255, "MAX_NETOBJ_SZ": 1024}
#: libtirpc's types that are not numbers, as xdr_netobj and xdr_des_block write them.
C_TYPEDEFS: dict[str, tuple[str, int | None]] = {
    "netobj": ("var_opaque", 1024), "des_block": ("opaque", 8), "netbuf": ("var_opaque", None),
}  # fmt: skip
_SWITCHABLE = ("int", "unsigned int", "bool")
_UINT_MAX = 2**32 - 1


@dataclasses.dataclass
class Symbols:
    """What the generator needs to know of each name."""

    spec: Spec
    #: Every constant and enum member, with its value.
    values: dict[str, int] = dataclasses.field(default_factory=dict)
    #: The enum of each enum member.
    member_of: dict[str, str] = dataclasses.field(default_factory=dict)
    #: Every type the file defines.
    types: dict[str, Definition] = dataclasses.field(default_factory=dict)
    #: The C_TYPEDEFS the file uses without defining them.
    c_typedefs: set[str] = dataclasses.field(default_factory=set)
    #: The ``%#define``d and libtirpc's constants used, as values (see _xlex).
    c_constants: dict[str, Value] = dataclasses.field(default_factory=dict)
    #: Procedure names, which are constants too (C's #define), and version names.
    procedures: set[str] = dataclasses.field(default_factory=set)
    versions: set[str] = dataclasses.field(default_factory=set)

    def number(self, value: Value) -> int:
        if value.name is None:
            return value.number
        return self.values[value.name] + value.step

    def builtin(self, ref: TypeRef) -> str | None:
        """The built-in type ``ref`` is, through typedefs and libtirpc's C names, or None."""
        seen: set[str] = set()
        while True:
            if ref.builtin:
                return ref.name
            if ref.name in seen:
                return None
            seen.add(ref.name)
            found = self.types.get(ref.name)
            if found is None:
                return C_TYPES.get(ref.name)
            if not isinstance(found, Typedef) or found.decl.kind != "plain":
                return None
            assert found.decl.type is not None
            ref = found.decl.type

    def enum_of(self, ref: TypeRef) -> Enum | None:
        """The enum ``ref`` names, through typedefs, or None."""
        seen: set[str] = set()
        while not ref.builtin and ref.name not in seen:
            seen.add(ref.name)
            found = self.types.get(ref.name)
            if isinstance(found, Enum):
                return found
            if not isinstance(found, Typedef) or found.decl.kind != "plain":
                return None
            assert found.decl.type is not None
            ref = found.decl.type
        return None


class _Checker:
    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.symbols = Symbols(spec)
        self.defined: dict[str, Token] = {}
        self.consts: dict[str, Value] = {}
        self.strings: set[str] = set()

    def define(self, name: str, token: Token) -> None:
        first = self.defined.get(name)
        if first is not None:
            where = f"line {first.line}"
            if first.file != token.file:  # from an #include
                where = f"{first.file}:{first.line}"
            raise token.error(f"'{name}' is already defined (at {where})")
        self.defined[name] = token

    def run(self) -> Symbols:
        for definition in self.spec.definitions:
            self.collect(definition)
        for name, number in (("TRUE", 1), ("FALSE", 0)):  # C's, which rpcgen's files use
            if name not in self.defined:
                self.consts[name] = Value(number, text=str(number))
        for name in list(self.consts):
            self.resolve(name, ())
        for definition in self.spec.definitions:
            self.check(definition)
        return self.symbols

    # -- names ---------------------------------------------------------------------

    def collect(self, definition: Definition) -> None:
        self.define(definition.name, definition.token)
        if isinstance(definition, Const) and definition.string is not None:
            self.strings.add(definition.name)
        elif isinstance(definition, Const):
            self.consts[definition.name] = definition.value
        elif isinstance(definition, Enum):
            self.symbols.types[definition.name] = definition
            for member, value, token in definition.members:
                self.define(member, token)
                self.consts[member] = value
                self.symbols.member_of[member] = definition.name
        elif isinstance(definition, Program):
            self.consts[definition.name] = definition.number
            for version in definition.versions:
                self.define(version.name, version.token)
                self.consts[version.name] = version.number
                self.symbols.versions.add(version.name)
                procs: dict[str, Token] = {}  # a version's own: C's #defines may repeat
                for proc in version.procs:
                    if proc.name in procs:
                        line = procs[proc.name].line
                        raise proc.token.error(f"'{proc.name}' is already defined (at line {line})")
                    procs[proc.name] = proc.token
                    if proc.name not in self.consts:  # another version's: the same number
                        self.consts[proc.name] = proc.number
                        self.symbols.procedures.add(proc.name)
        else:
            self.symbols.types[definition.name] = definition

    def resolve(self, name: str, chain: tuple[str, ...]) -> int:
        known = self.symbols.values.get(name)
        if known is not None:
            return known
        value = self.consts[name]
        if value.name is None:
            number = value.number
        else:
            if value.name in chain or value.name == name:
                raise _at(value).error(f"constant '{name}' is defined from itself")
            if not self.known(value):
                raise self.undefined_constant(value)
            number = self.resolve(value.name, (*chain, name)) + value.step
        if not -(2**63) <= number < 2**64:
            raise _at(value).error(f"constant {number} does not fit 64 bits")
        self.symbols.values[name] = number
        return number

    def known(self, value: Value) -> bool:
        """Whether ``value``'s name is a constant (a ``%#define`` becomes one here)."""
        assert value.name is not None
        if value.name in self.consts:
            return True
        if value.name in self.defined:
            return False
        token = self.spec.c_defines.get(value.name)
        if token is not None:
            found = _c_value(token)
        elif value.name in C_CONSTANTS:
            number = C_CONSTANTS[value.name]
            found = Value(number, text=str(number), token=value.token)
        else:
            return False
        if found is None:
            return False
        self.consts[value.name] = found
        self.symbols.c_constants[value.name] = found
        self.resolve(value.name, ())
        return True

    def undefined_constant(self, value: Value) -> CompileError:
        assert value.name is not None
        if value.name in self.strings:
            return _at(value).error(f"'{value.name}' is a string, not a number")
        if value.name in self.symbols.types:
            return _at(value).error(f"'{value.name}' is a type, not a constant")
        return _at(value).error(f"undefined constant '{value.name}'")

    def value(self, value: Value, low: int, high: int, what: str) -> int:
        if value.name is not None and not self.known(value):
            raise self.undefined_constant(value)
        number = self.symbols.number(value)
        if not low <= number <= high:
            raise _at(value).error(f"{what} is {low} to {high}, not {number}")
        return number

    # -- definitions ------------------------------------------------------------------

    def check(self, definition: Definition) -> None:
        if isinstance(definition, Enum):
            for _, value, _ in definition.members:
                self.value(value, -(2**31), 2**31 - 1, "an enum's value")
        elif isinstance(definition, Struct):
            self.fields(definition.fields)
        elif isinstance(definition, Typedef):
            self.decl(definition.decl)
        elif isinstance(definition, Union):
            self.union(definition)
        elif isinstance(definition, Program):
            self.program(definition)

    def fields(self, decls: tuple[Decl, ...]) -> None:
        seen: dict[str, Token] = {}
        for decl in decls:
            if decl.kind == "void":
                continue
            if decl.name in seen:
                raise decl.token.error(
                    f"'{decl.name}' is already a field here (at line {seen[decl.name].line})"
                )
            seen[decl.name] = decl.token
            self.decl(decl)

    def decl(self, decl: Decl) -> None:
        if decl.type is not None:
            self.type_ref(decl.type)
            if decl.kind in ("array", "var_array") and decl.type.name in ("string", "void"):
                raise decl.type.token.error(f"an array of {decl.type.name}: use a typedef")
        if decl.size is not None:
            self.value(decl.size, 0, _UINT_MAX, "a size")

    def type_ref(self, ref: TypeRef) -> None:
        if ref.builtin:
            return
        if ref.name in self.symbols.types:
            return
        if ref.name in C_TYPEDEFS:
            self.symbols.c_typedefs.add(ref.name)
            return
        if ref.name in C_TYPES:
            return
        if ref.name in self.consts or ref.name in self.defined:
            raise ref.token.error(f"'{ref.name}' is not a type")
        raise ref.token.error(f"undefined type '{ref.name}'")

    def union(self, union: Union) -> None:
        switch = union.discriminant
        assert switch.type is not None
        self.type_ref(switch.type)
        enum = self.symbols.enum_of(switch.type)
        builtin = self.symbols.builtin(switch.type)
        if enum is None and builtin not in _SWITCHABLE:
            raise switch.type.token.error(
                f"a union switches on an enum, int, unsigned int or bool, not '{switch.type.name}'"
            )
        allowed = {self.symbols.number(v) for _, v, _ in enum.members} if enum else None
        low, high = {"unsigned int": (0, _UINT_MAX), "bool": (0, 1)}.get(
            builtin or "", (-(2**31), 2**31 - 1)
        )
        seen: dict[int, Token] = {}
        for arm in union.arms:
            for label, token in arm.labels:
                number = self.value(label, low, high, "a case label")
                if allowed is not None and number not in allowed:
                    assert enum is not None
                    raise token.error(f"case {number} is not a value of enum {enum.name}")
                if number in seen:
                    line = seen[number].line
                    raise token.error(f"case {number} is already an arm (at line {line})")
                seen[number] = token
        arms = [arm.decl for arm in union.arms]
        if union.default is not None:
            arms.append(union.default.decl)
        names = [decl.name for decl in arms if decl.kind != "void"]
        if switch.name in names:
            clash = next(d for d in arms if d.name == switch.name)
            raise clash.token.error(f"'{switch.name}' is the union's discriminant")
        for decl in arms:
            self.decl(decl)

    def program(self, program: Program) -> None:
        self.value(program.number, 0, _UINT_MAX, "a program number")
        versions: dict[int, Token] = {}
        for version in program.versions:
            number = self.value(version.number, 0, _UINT_MAX, "a version number")
            if number in versions:
                raise version.token.error(f"version {number} is already defined")
            versions[number] = version.token
            procs: dict[int, Token] = {}
            for proc in version.procs:
                proc_number = self.value(proc.number, 0, _UINT_MAX, "a procedure number")
                if proc_number in procs:
                    raise proc.token.error(f"procedure {proc_number} is already defined")
                procs[proc_number] = proc.token
                for ref in (proc.result, *proc.args):
                    if not ref.builtin:
                        self.type_ref(ref)


def _c_value(token: Token) -> Value | None:
    """A ``%#define``'s value, if it is a constant here: a number, or a name plus or
    minus a number (``LM_MAXSTRLEN+1``)."""
    match = re.fullmatch(r"\(?(-?)(\w+)(?:([+-])(\w+))?\)?", token.text)
    if match is None:
        return None
    sign, first, op, second = match.groups()
    number = _number(first)
    step = _number(second) if second else 0
    if step is None or (number is None and sign) or (number is not None and op):
        return None
    if number is not None:
        return Value(-number if sign else number, text=sign + first, token=token)
    return Value(0, name=first, token=token, step=-step if op == "-" else step)


def _at(value: Value) -> Token:
    assert value.token is not None
    return value.token


def check(spec: Spec) -> Symbols:
    """The symbols of ``spec``; CompileError at the first name that is wrong."""
    return _Checker(spec).run()
