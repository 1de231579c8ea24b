"""The parser of ``.x`` files: tokens (servekit.rpc._xlex) to a Spec (servekit.rpc._xast).

The grammar is RFC 4506 section 6.3 with RFC 5531 section 12.2's programs, and what
rpcgen reads besides: procedures of several arguments (``rpcgen -N``), ``string`` as a
procedure's argument or result, ``struct``/``enum``/``union`` before a type's name,
``unsigned`` alone, enum members without ``= value`` (one more than the one before,
as in C), constants defined from constants and negative ones. An inline ``struct``,
``enum`` or ``union`` in a declaration becomes a definition of its own, named
``OWNER_FIELD`` (or the typedef's name). Names are checked afterwards
(servekit.rpc._xcheck); the parser knows only the grammar.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

from servekit.rpc._xast import (
    Arm,
    Const,
    Decl,
    Definition,
    Enum,
    Proc,
    Program,
    Spec,
    Struct,
    Typedef,
    TypeRef,
    Union,
    Value,
    Version,
)

if TYPE_CHECKING:
    from servekit.rpc._xlex import CompileError, Token

__all__ = ["KEYWORDS", "parse"]

KEYWORDS = frozenset({
    "bool", "case", "const", "default", "double", "enum", "float", "hyper", "int", "opaque",
    "program", "quadruple", "string", "struct", "switch", "typedef", "union", "unsigned",
    "version", "void",
})  # fmt: skip
_SIMPLE = {
    "int": "int",
    "hyper": "hyper",
    "float": "float",
    "double": "double",
    "quadruple": "quadruple",
    "bool": "bool",
}
#: rpcgen's ``unsigned char``, ``unsigned short``, ``unsigned long``: the C names it maps.
_UNSIGNED_C = {"char": "u_char", "short": "u_short", "long": "u_long"}

#: An inline definition waiting for its name.
_Inline = Callable[[str], Definition]


class _Parser:
    def __init__(self, tokens: list[Token], file: str, c_defines: dict[str, Token]) -> None:
        self.tokens, self.file, self.at, self.c_defines = tokens, file, 0, c_defines
        self.definitions: list[Definition] = []

    # -- tokens ---------------------------------------------------------------------

    @property
    def token(self) -> Token:
        return self.tokens[self.at]

    def peek(self, offset: int = 1) -> Token:
        return self.tokens[min(self.at + offset, len(self.tokens) - 1)]

    def next(self) -> Token:
        token = self.token
        if token.kind != "end":
            self.at += 1
        return token

    def is_(self, text: str) -> bool:
        return self.token.kind != "end" and self.token.text == text

    def accept(self, text: str) -> Token | None:
        return self.next() if self.is_(text) else None

    def expect(self, text: str) -> Token:
        if not self.is_(text):
            raise self.unexpected(f"'{text}'")
        return self.next()

    def unexpected(self, wanted: str) -> CompileError:
        token = self.token
        found = "the end of the file" if token.kind == "end" else f"'{token.text}'"
        return token.error(f"expected {wanted}, found {found}")

    def identifier(self, what: str = "a name") -> Token:
        token = self.token
        if token.kind != "name" or token.text in KEYWORDS:
            raise self.unexpected(what)
        return self.next()

    # -- definitions ----------------------------------------------------------------

    def spec(self) -> Spec:
        while self.token.kind != "end":
            self.definition()
        return Spec(self.file, tuple(self.definitions), self.c_defines)

    def definition(self) -> None:
        token = self.token
        if self.accept("const"):
            name = self.identifier()
            self.expect("=")
            if self.token.kind == "string":
                literal = self.next()
                self.expect(";")
                self.definitions.append(Const(name.text, Value(0), name, literal.text))
                return
            value = self.value()
            self.expect(";")
            self.definitions.append(Const(name.text, value, name))
        elif self.accept("typedef"):
            self.typedef()
        elif token.text in ("enum", "struct", "union") and token.kind == "name":
            self.next()
            name = self.identifier()
            self.definitions.append(self.body(token.text, name.text, name))
            self.expect(";")
        elif self.accept("program"):
            self.definitions.append(self.program())
        else:
            raise self.unexpected("a definition (const, typedef, enum, struct, union, program)")

    def typedef(self) -> None:
        decl, inline = self.declaration()
        if decl.kind == "void":
            raise decl.token.error("a typedef cannot be void")
        if inline is not None and decl.kind == "plain":
            self.definitions.append(inline(decl.name))  # typedef struct {...} name;
        else:
            decl = self.hoist(decl, inline, decl.name + "_t")
            self.definitions.append(Typedef(decl.name, decl, decl.token))
        self.expect(";")

    def body(self, kind: str, name: str, token: Token) -> Definition:
        if kind == "enum":
            return self.enum_body(name, token)
        if kind == "struct":
            return self.struct_body(name, token)
        return self.union_body(name, token)

    def enum_body(self, name: str, token: Token) -> Enum:
        self.expect("{")
        members = []
        previous: Value | None = None
        while True:
            member = self.identifier("an enum member")
            if self.accept("="):
                value = self.value()
            elif previous is None:
                value = Value(0, text="0", token=member)
            else:  # C's rule: one more than the member before
                step = previous.step + 1
                value = Value(previous.number + 1, previous.name, previous.text, member, step)
            members.append((member.text, value, member))
            previous = value
            if not self.accept(","):
                break
        self.expect("}")
        return Enum(name, tuple(members), token)

    def struct_body(self, name: str, token: Token) -> Struct:
        self.expect("{")
        fields = []
        while not self.is_("}"):
            decl, inline = self.declaration()
            decl = self.hoist(decl, inline, f"{name}_{decl.name}")
            if decl.kind == "void":
                raise decl.token.error("a struct's field cannot be void")
            fields.append(decl)
            self.expect(";")
        if not fields:
            raise self.unexpected("a field")
        self.expect("}")
        return Struct(name, tuple(fields), token)

    def hoist(self, decl: Decl, inline: _Inline | None, name: str) -> Decl:
        """``decl`` naming its inline definition, made now as ``name``."""
        if inline is None or decl.type is None:
            return decl
        self.definitions.append(inline(name))
        return dataclasses.replace(decl, type=TypeRef(name, False, decl.type.token))

    def union_body(self, name: str, token: Token) -> Union:
        self.expect("switch")
        self.expect("(")
        if self.is_(")") or (self.token.kind == "name" and self.peek().text == ")"):
            raise self.token.error(
                "a union needs a discriminant type and name, as in 'switch (int kind)'"
            )
        discriminant, inline = self.declaration()
        if inline is not None or discriminant.kind != "plain":
            raise discriminant.token.error(
                "a union switches on an enum, int, unsigned int or bool, named by one identifier"
            )
        self.expect(")")
        self.expect("{")
        arms: list[Arm] = []
        default: Arm | None = None
        while not self.is_("}"):
            if self.is_("default"):
                where = self.next()
                if default is not None:
                    raise where.error("a second default arm")
                self.expect(":")
                default = Arm((), self.arm_decl(name))
                continue
            labels = []
            while self.accept("case"):
                label_token = self.token
                labels.append((self.value(), label_token))
                self.expect(":")
            if not labels:
                raise self.unexpected("'case', 'default' or '}'")
            arms.append(Arm(tuple(labels), self.arm_decl(name)))
        if not arms:
            raise self.unexpected("'case'")
        self.expect("}")
        return Union(name, discriminant, tuple(arms), default, token)

    def arm_decl(self, union: str) -> Decl:
        decl, inline = self.declaration()
        decl = self.hoist(decl, inline, f"{union}_{decl.name}")
        self.expect(";")
        return decl

    # -- declarations ----------------------------------------------------------------

    def declaration(self) -> tuple[Decl, _Inline | None]:
        start = self.token
        if self.accept("void"):
            return Decl("", "void", None, None, start), None
        if self.is_("opaque") or self.is_("string"):
            kind = self.next().text
            name = self.identifier()
            if self.accept("["):
                if kind == "string":
                    raise self.token.error("a string has a maximum size, '<n>' or '<>', not '[n]'")
                size = self.value()
                self.expect("]")
                return Decl(name.text, "opaque", None, size, name), None
            if not self.is_("<"):
                raise self.unexpected(f"'<' after {kind} {name.text}")
            maximum = self.maximum()
            return Decl(
                name.text, "var_opaque" if kind == "opaque" else "string", None, maximum, name
            ), None
        type_ref, inline = self.type_specifier()
        if self.accept("*"):
            name = self.identifier()
            return Decl(name.text, "optional", type_ref, None, name), inline
        name = self.identifier()
        if self.accept("["):
            size = self.value()
            self.expect("]")
            return Decl(name.text, "array", type_ref, size, name), inline
        if self.is_("<"):
            return Decl(name.text, "var_array", type_ref, self.maximum(), name), inline
        return Decl(name.text, "plain", type_ref, None, name), inline

    def maximum(self) -> Value | None:
        self.expect("<")
        if self.accept(">"):
            return None
        size = self.value()
        self.expect(">")
        return size

    def type_specifier(self, procedure: bool = False) -> tuple[TypeRef, _Inline | None]:
        token = self.token
        if token.kind != "name":
            raise self.unexpected("a type")
        text = token.text
        if text == "unsigned":
            self.next()
            following = self.token.text if self.token.kind == "name" else ""
            if following in ("int", "hyper"):
                self.next()
                return TypeRef(f"unsigned {following}", True, token), None
            if following in _UNSIGNED_C:
                self.next()
                return TypeRef(_UNSIGNED_C[following], False, token), None
            return TypeRef("unsigned int", True, token), None
        if text in _SIMPLE:
            self.next()
            return TypeRef(_SIMPLE[text], True, token), None
        if procedure and text in ("string", "void"):
            self.next()
            return TypeRef(text, True, token), None
        if text in ("enum", "struct", "union"):
            self.next()
            if self.is_("{") or (text == "union" and self.is_("switch")):
                return self.inline(text, token)
            name = self.identifier(f"the name of a {text}")
            return TypeRef(name.text, False, name), None
        if text in KEYWORDS:
            raise self.unexpected("a type")
        self.next()
        return TypeRef(text, False, token), None

    def inline(self, kind: str, token: Token) -> tuple[TypeRef, _Inline]:
        """An inline definition: parsed now, named when its declaration's name is known."""
        start = self.at
        self.skip_body()
        placeholder = TypeRef("", False, token)

        def make(name: str) -> Definition:
            resumed = _Parser(self.tokens, self.file, self.c_defines)
            resumed.at = start
            made = resumed.body(kind, name, token)
            self.definitions.extend(resumed.definitions)
            return made

        return placeholder, make

    def skip_body(self) -> None:
        """Past an inline body (``switch (...)`` and ``{ ... }``), balanced."""
        if self.accept("switch"):
            self.expect("(")
            while not self.accept(")"):
                if self.token.kind == "end":
                    raise self.unexpected("')'")
                self.next()
        self.expect("{")
        depth = 1
        while depth:
            token = self.next()
            if token.kind == "end":
                raise self.unexpected("'}'")
            depth += {"{": 1, "}": -1}.get(token.text, 0) if token.kind == "punct" else 0

    def value(self) -> Value:
        token = self.token
        if self.accept("-"):
            number = self.token
            if number.kind != "number":
                raise self.unexpected("a number after '-'")
            self.next()
            return Value(-number.value, text="-" + number.text, token=token)
        if token.kind == "number":
            self.next()
            return Value(token.value, text=token.text, token=token)
        if token.kind == "name" and token.text not in KEYWORDS:
            self.next()
            return Value(0, name=token.text, token=token)
        raise self.unexpected("a constant")

    # -- programs ----------------------------------------------------------------------

    def program(self) -> Program:
        name = self.identifier("the program's name")
        self.expect("{")
        versions = []
        while self.is_("version"):
            versions.append(self.version())
        if not versions:
            raise self.unexpected("'version'")
        self.expect("}")
        self.expect("=")
        number = self.value()
        self.expect(";")
        return Program(name.text, number, tuple(versions), name)

    def version(self) -> Version:
        self.expect("version")
        name = self.identifier("the version's name")
        self.expect("{")
        procs = []
        while not self.is_("}"):
            procs.append(self.procedure())
        if not procs:
            raise self.unexpected("a procedure")
        self.expect("}")
        self.expect("=")
        number = self.value()
        self.expect(";")
        return Version(name.text, number, tuple(procs), name)

    def procedure(self) -> Proc:
        result, _ = self.proc_type()
        name = self.identifier("the procedure's name")
        self.expect("(")
        args: list[TypeRef] = []
        while True:
            arg, _ = self.proc_type()
            args.append(arg)
            if not self.accept(","):
                break
        self.expect(")")
        self.expect("=")
        number = self.value()
        self.expect(";")
        if any(arg.name == "void" for arg in args):
            if len(args) > 1:
                raise args[0].token.error("void is the only argument of a procedure that has it")
            args = []
        return Proc(name.text, number, result, tuple(args), name)

    def proc_type(self) -> tuple[TypeRef, None]:
        ref, inline = self.type_specifier(procedure=True)
        if inline is not None:
            raise ref.token.error("a procedure's types are named, not defined in line")
        if self.is_("*"):
            raise self.token.error("a procedure's argument or result cannot be optional ('*')")
        return ref, None


def parse(tokens: list[Token], file: str, c_defines: dict[str, Token] | None = None) -> Spec:
    """The Spec of ``tokens``; CompileError at the first token that does not fit."""
    return _Parser(tokens, file, c_defines or {}).spec()
