"""Python from a checked ``.x`` file: the declarations servekit.rpc.xdr and
servekit.rpc.program read, written as a person would (examples/rpc/demo.py).

Names are the ``.x`` file's. A name Python cannot take (a keyword, or one of the
names the module itself uses: ``enum``, ``xdr``, ``rpc``, ``list``, ...) gets a
trailing ``_``. A union's arms are ``UNION_LABEL`` (the first label of the arm) and
``UNION_default``; a version's clients ``VERSION_Client`` and ``VERSION_AsyncClient``.

Definitions keep the file's order, except that one a module-level expression needs
(a typedef's type, a union's enum, a constant a constant is defined from) comes
first: a class's annotations are read when first used, so they may name anything.
"""

from __future__ import annotations

import keyword
import posixpath
import re

from servekit.rpc._xast import (
    Arm,
    Const,
    Decl,
    Definition,
    Enum,
    Program,
    Struct,
    Typedef,
    TypeRef,
    Union,
    Value,
    Version,
)
from servekit.rpc._xcheck import C_TYPEDEFS, C_TYPES, Symbols

__all__ = ["generate"]

#: Names the generated module uses itself, or a class body reads (list[int]).
_RESERVED = frozenset({
    "enum", "xdr", "rpc", "Annotated", "TypeAlias", "annotations", "list", "bytes", "str",
    "int", "float", "bool", "None", "super", "self",
})  # fmt: skip
#: What a Version or a client already has: a procedure cannot take these names.
_TAKEN_BY_CLASSES = frozenset({
    "call", "close", "credential", "client_address", "server", "program", "version",
    "procedures", "procedure", "request", "result", "open", "timeout", "cred",
})  # fmt: skip
#: Each built-in type: its Python type, its XDR type, its field annotation.
_BUILTIN = {
    "int": ("int", "xdr.int32", "xdr.Int"),
    "unsigned int": ("int", "xdr.uint32", "xdr.UInt"),
    "hyper": ("int", "xdr.int64", "xdr.Hyper"),
    "unsigned hyper": ("int", "xdr.uint64", "xdr.UHyper"),
    "float": ("float", "xdr.float32", "xdr.Float"),
    "double": ("float", "xdr.float64", "xdr.Double"),
    "quadruple": ("float", "xdr.quadruple", "xdr.Quadruple"),
    "bool": ("bool", "xdr.boolean", "xdr.Bool"),
    "string": ("str", "xdr.string()", "Annotated[str, xdr.string()]"),
}
_SWITCH = {"int": "xdr.int32", "unsigned int": "xdr.uint32", "bool": "xdr.boolean"}
_MAX_LINE = 100


def py(name: str) -> str:
    """The Python name of a ``.x`` name at the module's level."""
    if keyword.iskeyword(name) or name in _RESERVED:
        return name + "_"
    return name


def attribute(name: str) -> str:
    """The Python name of a field or an enum member: only keywords are changed."""
    return name + "_" if keyword.iskeyword(name) else name


class _Generator:
    def __init__(self, symbols: Symbols) -> None:
        self.symbols = symbols
        self.definer: dict[str, Definition] = {}
        for definition in symbols.spec.definitions:
            self.definer[definition.name] = definition
            if isinstance(definition, Enum):
                for member, _, _ in definition.members:
                    self.definer[member] = definition
            if isinstance(definition, Program):
                for version in definition.versions:
                    self.definer[version.name] = definition
        self.emitted: set[str] = set()
        self.visiting: set[str] = set()
        self.blocks: list[str] = []
        self.taken = set(self.definer) | set(symbols.member_of)

    # -- order -----------------------------------------------------------------------

    def run(self) -> list[str]:
        for name, value in sorted(self.symbols.c_constants.items()):
            self.blocks.append(f"{py(name)} = {self.value(value)}")
        for name in sorted(self.symbols.c_typedefs):
            function, size = C_TYPEDEFS[name]
            self.blocks.append(
                f"#: libtirpc's {name} (rpcgen's C knows it without a definition).\n"
                f"{name} = Annotated[bytes, xdr.{function}({size or ''})]"
            )
            self.emitted.add(name)
        for definition in self.symbols.spec.definitions:
            self.visit(definition)
        return self.blocks

    def visit(self, definition: Definition) -> None:
        name = definition.name
        if name in self.emitted or name in self.visiting:
            return
        self.visiting.add(name)
        for needed in self.needs(definition):
            found = self.definer.get(needed)
            if found is not None:
                self.visit(found)
        self.visiting.discard(name)
        self.emitted.add(name)
        self.blocks.append(self.emit(definition))

    def needs(self, definition: Definition) -> list[str]:
        """The names a definition's module-level code reads when it runs."""
        if isinstance(definition, Const):
            return _value_names(definition.value)
        if isinstance(definition, Enum):
            return [n for _, v, _ in definition.members for n in _value_names(v)]
        if isinstance(definition, Typedef):
            return _decl_names(definition.decl, eager_optional=False)
        if isinstance(definition, Union):
            found = _decl_names(definition.discriminant, eager_optional=True)
            enum = self.symbols.enum_of(definition.discriminant.type)  # type: ignore[arg-type]
            if enum is not None:
                found.append(enum.name)
            return found + [
                n for arm in definition.arms for v, _ in arm.labels for n in _value_names(v)
            ]
        if isinstance(definition, Program):
            return _value_names(definition.number) + [
                n for version in definition.versions for n in _value_names(version.number)
            ]
        return []

    def emit(self, definition: Definition) -> str:
        if isinstance(definition, Const):
            if definition.string is not None:
                return f"{py(definition.name)} = {definition.string}"
            return f"{py(definition.name)} = {self.value(definition.value)}"
        if isinstance(definition, Enum):
            return self.enum(definition)
        if isinstance(definition, Struct):
            return self.struct(definition)
        if isinstance(definition, Union):
            return self.union(definition)
        if isinstance(definition, Typedef):
            return f"{py(definition.name)} = {self.annotation(definition.decl, True)}"
        return self.program(definition)

    # -- values and types ---------------------------------------------------------------

    def value(self, value: Value, inside_enum: str | None = None) -> str:
        if value.name is None:
            return _literal(value)
        if value.name in ("TRUE", "FALSE") and value.name not in self.definer:
            base = value.name.capitalize()
        elif value.name in self.symbols.procedures:  # C's #define: here a method
            return str(self.symbols.number(value))
        elif value.name in self.symbols.versions:
            base = f"{py(value.name)}.version"
        else:
            enum = self.symbols.member_of.get(value.name)
            if enum is None:
                base = py(value.name)
            elif enum == inside_enum:
                base = attribute(value.name)
            else:
                base = f"{py(enum)}.{attribute(value.name)}"
        return f"{base} + {value.step}" if value.step else base

    def element(self, ref: TypeRef, quoted: bool = False) -> tuple[str, str]:
        """The Python type and the XDR type of ``ref`` as an element (of an array, or
        optional); ``quoted``: named before it is defined."""
        builtin = self._builtin(ref)
        if builtin is not None:
            python, xdr_type, _ = _BUILTIN[builtin]
            return python, xdr_type
        name = py(ref.name)
        if quoted:
            return f'"{name}"', f'"{name}"'
        return name, name

    def _builtin(self, ref: TypeRef) -> str | None:
        if ref.builtin:
            return ref.name
        if ref.name not in self.symbols.types and ref.name in C_TYPES:
            return C_TYPES[ref.name]
        return None

    def annotation(self, decl: Decl, eager: bool = False) -> str:
        """A declaration's annotation; ``eager``: evaluated as the module runs (a
        typedef), so a type not defined yet is named by a string."""
        size = "" if decl.size is None else self.value(decl.size)
        if decl.kind == "opaque":
            return f"Annotated[bytes, xdr.opaque({size})]"
        if decl.kind == "var_opaque":
            return f"Annotated[bytes, xdr.var_opaque({size})]"
        if decl.kind == "string":
            return f"Annotated[str, xdr.string({size})]"
        ref = decl.type
        assert ref is not None
        if decl.kind == "plain":
            builtin = self._builtin(ref)
            return _BUILTIN[builtin][2] if builtin is not None else py(ref.name)
        late = eager and self._builtin(ref) is None and ref.name not in self.emitted
        python, xdr_type = self.element(ref, quoted=late and decl.kind == "optional")
        if decl.kind == "optional":
            if python.startswith('"'):
                return f'Annotated["{python[1:-1]} | None", xdr.optional({xdr_type})]'
            return f"Annotated[{python} | None, xdr.optional({xdr_type})]"
        sized = f", {size}" if size else ""
        function = "array" if decl.kind == "array" else "var_array"
        return f"Annotated[list[{python}], xdr.{function}({xdr_type}{sized})]"

    def proc_type(self, ref: TypeRef) -> str:
        if ref.name == "void" and ref.builtin:
            return "None"
        builtin = self._builtin(ref)
        return _BUILTIN[builtin][2] if builtin is not None else py(ref.name)

    # -- definitions ------------------------------------------------------------------

    def enum(self, enum: Enum) -> str:
        lines = [f"class {py(enum.name)}(enum.IntEnum):"]
        for member, value, _ in enum.members:
            lines.append(f"    {attribute(member)} = {self.value(value, inside_enum=enum.name)}")
        return "\n".join(lines)

    def struct(self, struct: Struct) -> str:
        lines = ["@xdr.struct", f"class {py(struct.name)}:"]
        lines += [f"    {attribute(d.name)}: {self.annotation(d)}" for d in struct.fields]
        return "\n".join(lines)

    def union(self, union: Union) -> str:
        switch = union.discriminant
        assert switch.type is not None
        enum = self.symbols.enum_of(switch.type)
        builtin = self.symbols.builtin(switch.type)
        if enum is not None:
            of = annotation = py(enum.name)
        else:
            assert builtin is not None
            of, annotation = _SWITCH[builtin], _BUILTIN[builtin][2]
        base = py(union.name)
        discriminant = f"    {attribute(switch.name)}: {annotation} = xdr.discriminant()"
        blocks = [f"@xdr.union(of={of})\nclass {base}:\n{discriminant}"]
        for arm in union.arms:
            labels = ", ".join(self.label(value, enum, builtin) for value, _ in arm.labels)
            name = self.arm_name(union, arm)
            blocks.append(self.arm(f"@xdr.case({labels})", name, base, arm.decl))
        if union.default is not None:
            name = self.unique(f"{union.name}_default")
            blocks.append(self.arm("@xdr.default", name, base, union.default.decl))
        return "\n\n\n".join(blocks)

    def label(self, value: Value, enum: Enum | None, builtin: str | None) -> str:
        number = self.symbols.number(value)
        if builtin == "bool":
            return "True" if number else "False"
        if enum is None:
            return self.value(value)
        if value.name and not value.step and self.symbols.member_of.get(value.name) == enum.name:
            return f"{py(enum.name)}.{attribute(value.name)}"
        return f"{py(enum.name)}({self.value(value)})"

    def arm_name(self, union: Union, arm: Arm) -> str:
        value = arm.labels[0][0]
        if value.name is not None and value.step == 0:
            label = value.name
        else:
            number = self.symbols.number(value)
            label = str(number) if number >= 0 else f"minus{-number}"
        return self.unique(f"{union.name}_{label}")

    def unique(self, name: str) -> str:
        name = py(name)
        while name in self.taken:
            name += "_"
        self.taken.add(name)
        return name

    def arm(self, decorator: str, name: str, base: str, decl: Decl) -> str:
        body = "pass" if decl.kind == "void" else f"{attribute(decl.name)}: {self.annotation(decl)}"
        return f"{decorator}\nclass {name}({base}):\n    {body}"

    def program(self, program: Program) -> str:
        blocks = [f"{py(program.name)} = {self.value(program.number)}"]
        for version in program.versions:
            blocks += [
                self.server(program, version),
                self.client(version, asynchronous=False),
                self.client(version, asynchronous=True),
            ]
        return "\n\n\n".join(blocks)

    def signature(self, version: Version, index: int) -> tuple[str, str, str, list[str]]:
        proc = version.procs[index]
        args = [f"arg{i}" for i in range(1, len(proc.args) + 1)]
        typed = zip(args, proc.args, strict=True)
        params = "".join(f", {arg}: {self.proc_type(ref)}" for arg, ref in typed)
        return _method(proc.name), params, self.proc_type(proc.result), args

    def server(self, program: Program, version: Version) -> str:
        name = py(version.name)
        lines = [
            (
                f"class {name}(rpc.Version, program={py(program.name)}, "
                f"version={self.value(version.number)}):"
            ),
            (
                f'    """Version {self.value(version.number)} of {program.name}, to serve: a '
                "subclass fills in its procedures."
            ),
            "",
            "    A procedure left out is answered PROC_UNAVAIL, as rpcgen's C server answers",
            '    one its dispatcher lacks."""',
        ]
        for index, proc in enumerate(version.procs):
            method, params, result, _ = self.signature(version, index)
            lines += [
                "",
                f"    @rpc.procedure({self.value(proc.number)})",
                "    @rpc.unimplemented",
                f"    def {method}(self{params}) -> {result}:",
                "        raise NotImplementedError",
            ]
        return "\n".join(lines)

    def client(self, version: Version, asynchronous: bool) -> str:
        name = py(version.name)
        kind, prefix, wait = ("Client", "", "")
        if asynchronous:
            kind, prefix, wait = ("AsyncClient", "async ", "await ")
        lines = [
            f"class {self.unique(f'{version.name}_{kind}')}(rpc.{kind}):",
            (
                f'    """A{"n asyncio" if asynchronous else ""} client of {version.name}: '
                'a method for each procedure."""'
            ),
            "",
            "    def __init__(",
            (
                "        self, address: str, *, credential: rpc.AuthSys | None = None, "
                "timeout: float = 25.0"
            ),
            "    ) -> None:",
            f"        super().__init__(address, {name}, credential=credential, timeout=timeout)",
        ]
        for index, _proc in enumerate(version.procs):
            method, params, result, args = self.signature(version, index)
            call = f"self.call({name}.{method}{''.join(', ' + a for a in args)})"
            statement = f"{wait}{call}" if result == "None" else f"return {wait}{call}"
            lines += [
                "",
                f"    {prefix}def {method}(self{params}) -> {result}:",
                f"        {statement}",
            ]
        return "\n".join(lines)


def _method(name: str) -> str:
    named = py(name)
    return named + "_" if named in _TAKEN_BY_CLASSES else named


def _value_names(value: Value | None) -> list[str]:
    return [value.name] if value is not None and value.name is not None else []


def _decl_names(decl: Decl, eager_optional: bool) -> list[str]:
    found = _value_names(decl.size)
    ref = decl.type
    if ref is not None and not ref.builtin and (decl.kind != "optional" or eager_optional):
        found.append(ref.name)
    return found


def _literal(value: Value) -> str:
    text = value.text
    if value.step:
        return str(value.number)
    digits = text.lstrip("-")
    if len(digits) > 1 and digits[0] == "0" and digits[1] not in "xX":
        return f"{text[: len(text) - len(digits)]}0o{digits[1:]}"  # C's octal: 0755
    return text.lower() if digits[:2] in ("0x", "0X") else text


def generate(symbols: Symbols) -> str:
    """The Python module of ``symbols``' ``.x`` file."""
    body = _join(_Generator(symbols).run())
    source = posixpath.basename(symbols.spec.file.replace("\\", "/"))
    lines = [
        f'"""Generated by servekit rpcgen from {source}; do not edit, regenerate:',
        "",
        f"    servekit rpcgen {source} -o MODULE.py",
        '"""',
        "",
    ]
    if any(len(line) > _MAX_LINE for line in body.splitlines()):
        lines.insert(0, "# ruff: noqa: E501")  # long names of the .x file
    lines += ["from __future__ import annotations", "", *_imports(body)]
    gap = "\n\n\n" if body.startswith(("class ", "@")) else "\n\n"  # as isort has it
    return "\n".join(lines) + gap + body + "\n"


def _imports(body: str) -> list[str]:
    stdlib = []
    if "enum.IntEnum" in body:
        stdlib.append("import enum")
    if re.search(r"\bAnnotated\[", body):
        stdlib.append("from typing import Annotated")
    ours = []
    if re.search(r"\brpc\.", body):
        ours.append("from servekit import rpc")
    if re.search(r"\bxdr\.", body):
        ours.append("from servekit.rpc import xdr")
    return "\n\n".join("\n".join(group) for group in (stdlib, ours) if group).splitlines()


def _join(blocks: list[str]) -> str:
    """Blocks two blank lines apart, but constants in a run one line apart."""
    text, previous = "", ""
    for block in blocks:
        if text:
            text += "\n" if _is_constant(block) and _is_constant(previous) else "\n\n\n"
        text += block
        previous = block
    return text


def _is_constant(block: str) -> bool:
    return "\n" not in block and bool(re.match(r"\w+ = ", block))
