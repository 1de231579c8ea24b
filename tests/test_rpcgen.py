"""servekit rpcgen (issue 16): .x files compiled to Python that mypy --strict and ruff
accept, that imports, and whose types round-trip sample values; the errors, each with
its message; the output deterministic; examples/rpc/demo_x.py not stale.

The real files are those the Debian packages rpcsvc-proto and libtirpc-dev install
(``dpkg -L``): the test lists them, and fails if it finds none.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib.util
import shutil
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import pytest

from servekit.rpc import _declare, xdr
from servekit.rpc.rpcgen import CompileError, compile_x

ROOT = Path(__file__).parent.parent
EVERY_X = Path(__file__).parent / "rpcgen" / "every.x"
DEMO_X = ROOT / "examples" / "rpc" / "demo.x"
VENV_BIN = Path(sys.executable).parent


def system_x_files() -> list[Path]:
    if shutil.which("dpkg") is None:
        return []
    listed = subprocess.run(["dpkg", "-L", "rpcsvc-proto", "libtirpc-dev"],
                            capture_output=True, text=True, timeout=30)  # fmt: skip
    return sorted(Path(line) for line in listed.stdout.split() if line.endswith(".x"))


#: Python only: what rpcgen's C does not take (see every.x's comment).
PYTHON_ONLY_X = """
typedef later *laterp;           /* optional data of a type defined further down */
typedef later pair[2];
struct later { quadruple q; laterp next; };
struct holder {
    struct { int x; int y; } point;
    enum { ON = 1, OFF = 0 } state;
    union switch (bool set) { case TRUE: int n; case FALSE: void; } maybe;
    pair two;
};
const class = 3;                 /* a Python keyword: class_ */
struct keywords { int from; int in[class]; };
"""


def _load(path: Path, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every .x compiled into one directory (one mypy run checks them all)."""
    found = system_x_files()
    print("the .x files of rpcsvc-proto and libtirpc-dev:", *map(str, found), sep="\n  ")
    assert found, "dpkg -L rpcsvc-proto libtirpc-dev lists no .x file (.ci/run installs them)"
    out = tmp_path_factory.mktemp("rpcgen")
    sources = {f"{p.stem}_x": (p.read_text(), str(p)) for p in found}
    sources["every_x"] = (EVERY_X.read_text(), str(EVERY_X))
    sources["demo_x"] = (DEMO_X.read_text(), str(DEMO_X))
    sources["python_only_x"] = (PYTHON_ONLY_X, "python_only.x")
    paths = {}
    for module, (text, filename) in sources.items():
        paths[module] = out / f"rpcgen_{module}.py"
        paths[module].write_text(compile_x(text, filename))
    return paths


def test_the_output_passes_mypy_strict_and_ruff(compiled: dict[str, Path]) -> None:
    directory = next(iter(compiled.values())).parent
    mypy = subprocess.run(
        [str(VENV_BIN / "mypy"), "--strict", "--no-incremental", "--python-version", "3.11",
         *map(str, compiled.values())],
        capture_output=True, text=True, timeout=120, cwd=directory,
    )  # fmt: skip
    assert mypy.returncode == 0, mypy.stdout + mypy.stderr
    ruff = subprocess.run(
        [str(VENV_BIN / "ruff"), "check", "--config", str(ROOT / "pyproject.toml"),
         "--no-cache", *map(str, compiled.values())],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert ruff.returncode == 0, ruff.stdout + ruff.stderr


def test_every_module_imports_and_its_types_round_trip(compiled: dict[str, Path]) -> None:
    checked = 0
    for name, path in compiled.items():
        module = _load(path, f"rpcgen_{name}")
        for value_type in _declared_types(module):
            value = sample(value_type, module)
            data = xdr.encode(value_type, value)
            assert xdr.decode(value_type, data) == value, (name, value_type)
            checked += 1
    assert checked > 100


def _declared_types(module: Any) -> list[type[Any]]:
    found = []
    for value in vars(module).values():
        if not isinstance(value, type) or value.__module__ != module.__name__:
            continue
        if (
            issubclass(value, enum.IntEnum)
            or value in _declare._UNION_OF
            or (dataclasses.is_dataclass(value) and not _is_arm(value))
        ):
            found.append(value)
    return found


def _is_arm(cls: type[Any]) -> bool:
    return any(base in _declare._UNION_OF for base in cls.__mro__[1:])


def sample(declared: Any, module: Any, depth: int = 0) -> Any:
    """A value of ``declared`` (a class, or an annotation): small, every field set."""
    if isinstance(declared, str):
        declared = getattr(module, declared)
    if isinstance(declared, type) and issubclass(declared, enum.IntEnum):
        return list(declared)[-1]
    if isinstance(declared, type) and declared in _declare._UNION_OF:
        spec = _declare._UNION_OF[declared]
        number, arm = sorted(spec.arms.items())[-1]
        switch = spec.discriminant_type
        if isinstance(switch, type):
            value = switch(number)
        else:
            value = bool(number) if switch is xdr.boolean else number
        return _fill(arm, module, depth, {spec.switch: value})
    if dataclasses.is_dataclass(declared):
        return _fill(declared, module, depth, {})
    return _sample_xdr(xdr.type_of(declared), module, depth)


def _fill(cls: Any, module: Any, depth: int, given: dict[str, Any]) -> Any:
    names = vars(module)  # not the class's: a field may be named as a type (sm_inter.x's my_id)
    hints = typing.get_type_hints(cls, globalns=names, localns=names, include_extras=True)
    values = dict(given)
    for field in dataclasses.fields(cls):
        if field.name not in values:
            values[field.name] = sample(hints[field.name], module, depth + 1)
    return cls(**values)


_NUMBERS = {"int": -7, "unsigned int": 7, "hyper": -(2**40), "unsigned hyper": 2**63,
            "float": 1.5, "double": 2.25, "quadruple": 0.1, "bool": True}  # fmt: skip


def _sample_xdr(xdr_type: xdr.XdrType[Any], module: Any, depth: int) -> Any:
    if xdr_type.name in _NUMBERS:
        return _NUMBERS[xdr_type.name]
    form = xdr_type.inline
    if form is not None and form.kind == "fixed" and form.enum is not None:
        return list(form.enum)[-1]
    if form is not None and form.kind == "bytes":
        size = min(form.maximum if form.maximum is not None else 3, 3)
        return "abc"[:size] if form.text else b"\x01\x02\x03"[:size]
    if form is not None and form.kind == "opaque":
        assert form.size is not None
        return bytes(range(form.size))
    if form is not None and form.kind in ("array", "optional"):
        assert form.element is not None
        element = getattr(form.element, "declared", None)
        if form.kind == "optional":
            return None if depth > 6 else sample(element, module, depth + 1)
        count = form.size if form.size is not None else min(form.maximum or 2, 2)
        return [sample(element, module, depth + 1) for _ in range(count)]
    raise AssertionError(f"no sample for {xdr_type!r}")


def test_generated_names_are_the_x_files(compiled: dict[str, Path]) -> None:
    every = _load(compiled["every_x"], "rpcgen_every_names")
    assert (every.DEC, every.HEX, every.OCT, every.NEG, every.FROM) == (10, 16, 8, -5, 16)
    assert every.color.ALPHA == 9
    arm = every.by_enum_RED(c=every.color.GREEN, level=3)
    match every.xdr.decode(every.by_enum, every.xdr.encode(every.by_enum, arm)):
        case every.by_enum_RED(level=level):
            assert level == 3
        case _:
            pytest.fail("the arm of GREEN is by_enum_RED")
    assert [p.name for p in every.EVERY_V1.procedures().values()] == [
        "EVERY_NULL",
        "EVERY_ECHO",
        "EVERY_SUM",
        "EVERY_NAME",
    ]
    only = _load(compiled["python_only_x"], "rpcgen_python_only_names")
    assert only.holder_point(x=1, y=2).y == 2
    assert only.holder_state.ON == 1
    assert only.class_ == 3
    assert [f.name for f in dataclasses.fields(only.keywords)] == ["from_", "in_"]
    value = only.later(q=0.5, next=only.later(q=-2.0, next=None))
    assert xdr.decode(only.later, xdr.encode(only.later, value)) == value


def test_the_output_is_deterministic() -> None:
    source = EVERY_X.read_text()
    assert compile_x(source, "every.x") == compile_x(source, "every.x")
    assert compile_x(source, "every.x").startswith(
        '"""Generated by servekit rpcgen from every.x; do not edit'
    )


def test_demo_x_py_is_what_demo_x_compiles_to() -> None:
    checked_in = (ROOT / "examples" / "rpc" / "demo_x.py").read_text()
    assert checked_in == compile_x(DEMO_X.read_text(), "examples/rpc/demo.x"), (
        "examples/rpc/demo_x.py is stale: servekit rpcgen examples/rpc/demo.x "
        "-o examples/rpc/demo_x.py"
    )


ERRORS = [
    ("struct s { foo x; };", "bad.x:1:12: undefined type 'foo'"),
    ("struct a { int x; };\nenum a { A = 1 };", "bad.x:2:6: 'a' is already defined (at line 1)"),
    ("const X = 0x;", "bad.x:1:11: bad constant '0x'"),
    ("const X = 09;", "bad.x:1:11: bad constant '09'"),
    ("union u switch (kind) { case 1: int x; };",
     "bad.x:1:17: a union needs a discriminant type and name, as in 'switch (int kind)'"),
    ("struct s { int x }", "bad.x:1:18: expected ';', found '}'"),
    ("struct s { int x; }", "bad.x:1:20: expected ';', found the end of the file"),
    ("const X = Y;", "bad.x:1:11: undefined constant 'Y'"),
    ("struct s { string x<N>; };", "bad.x:1:21: undefined constant 'N'"),
    ("union u switch (string s) { case 1: void; };",
     "bad.x:1:25: expected '<' after string s, found ')'"),
    ("struct t { int a; }; union u switch (t s) { case 1: void; };",
     "bad.x:1:38: a union switches on an enum, int, unsigned int or bool, not 't'"),
    ("enum e { A = 1 }; union u switch (e k) { case 2: void; };",
     "bad.x:1:47: case 2 is not a value of enum e"),
    ("struct s { int x; int x; };", "bad.x:1:23: 'x' is already a field here (at line 1)"),
    ("/* never closed", "bad.x:1:1: unterminated comment"),
    ("#ifdef X\nconst A = 1;", "bad.x:1:1: #if without #endif"),
    ("struct s { int x; } @", "bad.x:1:21: unexpected character '@'"),
    ("program P { version V { void F(void) = 0; } = 1; } = 1;\n"  # noqa: ISC004
     "program Q { version V { void F(void) = 0; } = 1; } = 2;",
     "bad.x:2:21: 'V' is already defined (at line 1)"),
    ('#include "other.x"', 'bad.x:1:1: #include "other.x": no include path to read it from'),
]  # fmt: skip


@pytest.mark.parametrize(
    ("source", "message"), ERRORS, ids=[m.split(": ", 1)[1] for _, m in ERRORS]
)
def test_an_error_names_its_place(source: str, message: str) -> None:
    with pytest.raises(CompileError) as raised:
        compile_x(source, "bad.x")
    assert str(raised.value) == message
    assert (raised.value.file, raised.value.line) == ("bad.x", int(message.split(":")[1]))


def test_preprocessor_lines_and_pass_through() -> None:
    source = """
%#define LIMIT 12   /* C's, used as a constant */
#define WIDE 4
#ifdef RPC_HDR
%#include <stdio.h>
const ONLY_C = 1;
#else
const BOTH = WIDE;
#endif
#ifndef RPC_HDR
const KEPT = 2;
#endif
#if 0
const DROPPED = 3;
#endif
struct s { string x<LIMIT>; opaque y[WIDE]; };
"""
    python = compile_x(source, "pre.x")
    assert "LIMIT = 12" in python
    assert "BOTH = 4" in python
    assert "KEPT = 2" in python
    assert "ONLY_C" not in python
    assert "DROPPED" not in python


def test_include_reads_through_the_callback() -> None:
    files = {"types.x": "const SIZE = 8;"}

    def include(name: str) -> tuple[str, str] | None:
        return (files[name], name) if name in files else None

    python = compile_x('#include "types.x"\n#include <rpc/types.h>\ntypedef opaque o[SIZE];',
                       "main.x", include)  # fmt: skip
    assert "SIZE = 8" in python
    with pytest.raises(CompileError, match=r'main\.x:1:1: #include "nope\.x": not found'):
        compile_x('#include "nope.x"', "main.x", include)


def test_unimplemented_procedures_answer_proc_unavail(compiled: dict[str, Path]) -> None:
    from servekit.rpc import message

    every = _load(compiled["every_x"], "rpcgen_every_unavail")

    class Served(every.EVERY_V1):  # type: ignore[misc,name-defined]
        def EVERY_SUM(self, a: int, b: int, c: int) -> int:
            return a + b + c

    program = every.rpc.Program(Served)
    args = xdr.encode(xdr.int32, 1) + xdr.encode(xdr.int64, 2) + xdr.encode(xdr.int32, 3)
    reply = message.parse_reply(program.answer(message.encode_call(7, 0x20000124, 1, 2, args),
                                               None, None))  # fmt: skip
    assert xdr.decode(xdr.int32, reply.results) == 6
    unavail = message.parse_reply(program.answer(message.encode_call(8, 0x20000124, 1, 0, b""),
                                                 None, None))  # fmt: skip
    assert unavail.accept_stat is message.AcceptStat.PROC_UNAVAIL


def test_cli(tmp_path: Path) -> None:
    servekit = str(VENV_BIN / "servekit")
    out = tmp_path / "demo_x.py"
    done = subprocess.run([servekit, "rpcgen", str(DEMO_X), "-o", str(out)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert out.read_text() == (ROOT / "examples" / "rpc" / "demo_x.py").read_text()
    printed = subprocess.run([servekit, "rpcgen", str(DEMO_X)],
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    assert printed.stdout == out.read_text()
    bad = tmp_path / "bad.x"
    bad.write_text("const X = 0x;\n")
    failed = subprocess.run([servekit, "rpcgen", str(bad)],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert (failed.returncode, failed.stdout) == (1, "")
    assert failed.stderr == f"{bad}:1:11: bad constant '0x'\n"


def test_a_type_named_by_a_string_is_its_own_modules(tmp_path: Path) -> None:
    """Two modules that declare the same name: a typedef's late reference (a string) is
    looked up in the module that wrote it, not in whichever declared the name first."""
    first = "typedef node *link; struct node { int a; link next; };"
    second = "typedef node *link; struct node { hyper b; string s<>; link next; };"
    modules = []
    for index, source in enumerate((first, second)):
        path = tmp_path / f"same_name_{index}.py"
        path.write_text(compile_x(source, f"same_name_{index}.x"))
        modules.append(_load(path, f"rpcgen_same_name_{index}"))
    one, two = modules
    assert xdr.decode(one.node, xdr.encode(one.node, one.node(1, one.node(2, None)))).next.a == 2
    value = two.node(b=2**40, s="x", next=two.node(b=3, s="", next=None))
    assert xdr.decode(two.node, xdr.encode(two.node, value)) == value
