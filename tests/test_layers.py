"""The layering rules of docs/architecture.md, read off the code's imports (ast).

A later change that breaks a rule fails here, naming the file, the line and
the rule, instead of quietly coupling the layers again.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "src" / "servekit"

#: What core (the request loop, no sockets) may import from servekit: its
#: errors, its counters, the loop's wake-up (a socketpair: the one exception)
#: and the signal guard.
CORE_MAY_IMPORT = frozenset({
    "servekit.errors", "servekit.stats", "servekit._wakeup", "servekit._signalguard",
    "servekit.access",
})  # fmt: skip
#: Modules that do I/O or run an engine: core and the sans-IO modules import none.
IO_MODULES = frozenset({"socket", "ssl", "select", "selectors", "asyncio"})
#: The sans-IO protocol cores: pure code over bytes.
SANS_IO = (
    "proxy.py", "errors.py", "options.py", "rpc/xdr.py", "rpc/_declare.py", "rpc/message.py",
    "rpc/record.py", "rpc/rpcgen.py", "rpc/_xlex.py", "rpc/_xparse.py", "rpc/_xast.py",
    "rpc/_xcheck.py", "rpc/_xgen.py", "sql/_url.py", "sql/_job.py", "sql/_backoff.py",
    "sql/_schema.py", "sql/_errors.py", "_promtext.py",
)  # fmt: skip


@dataclass(frozen=True)
class Import:
    module: str  # absolute
    names: tuple[str, ...]  # the names taken by "from module import ...", else ()
    line: int


def imports(path: Path) -> list[Import]:
    """Every import in ``path``, at any depth (TYPE_CHECKING blocks and functions too)."""
    tree = ast.parse(path.read_text(), str(path))
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [Import(alias.name, (), node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, module] if module else base)
            names = tuple(alias.name for alias in node.names)
            # "from servekit.rpc import xdr" imports the submodule xdr: judge that.
            submodules = [name for name in names if _is_module(f"{module}.{name}")]
            found += [Import(f"{module}.{name}", (), node.lineno) for name in submodules]
            if len(submodules) < len(names):
                found.append(Import(module, names, node.lineno))
    return found


def _is_module(dotted: str) -> bool:
    """True if ``dotted`` names a module file of servekit (not a name inside one)."""
    if not dotted.startswith("servekit."):
        return False
    relative = Path(*dotted.split(".")[1:])
    return (PACKAGE / relative).with_suffix(".py").exists() or (PACKAGE / relative).is_dir()


def _where(path: Path, imp: Import) -> str:
    return f"{path.relative_to(PACKAGE.parent)}:{imp.line}: {imp.module}"


def test_core_imports_no_socket_and_no_engine() -> None:
    path = PACKAGE / "core.py"
    wrong = [
        _where(path, imp)
        for imp in imports(path)
        if imp.module.split(".")[0] in IO_MODULES - {"select", "selectors"}
        or (imp.module.startswith("servekit") and imp.module not in CORE_MAY_IMPORT)
    ]
    assert wrong == [], "core may import only " + ", ".join(sorted(CORE_MAY_IMPORT))


def test_the_async_engine_imports_no_private_name_from_outside() -> None:
    wrong = []
    for path in sorted((PACKAGE / "aio").glob("*.py")):
        for imp in imports(path):
            outside = imp.module.startswith("servekit") and not imp.module.startswith(
                "servekit.aio"
            )
            private = [name for name in imp.names if name.startswith("_")]
            if outside and private:
                wrong.append(f"{_where(path, imp)} {private}")
    assert wrong == []


@pytest.mark.parametrize("name", [name for name in SANS_IO if (PACKAGE / name).exists()])
def test_sans_io_modules_import_no_io(name: str) -> None:
    path = PACKAGE / name
    wrong = [
        _where(path, imp)
        for imp in imports(path)
        if imp.module.split(".")[0] in IO_MODULES
        or (imp.module.startswith("servekit") and f"{imp.module}.py" not in _sans_io_modules())
    ]
    assert wrong == [], "sans-IO modules import no I/O, not even for constants"


def _sans_io_modules() -> set[str]:
    return {"servekit." + name.removesuffix(".py").replace("/", ".") + ".py" for name in SANS_IO}


def test_the_rules_see_the_imports_they_judge() -> None:
    """The walker itself: it must find imports at every depth and resolve relative ones."""
    found = imports(PACKAGE / "core.py")
    assert any(imp.module == "servekit.errors" for imp in found)
    assert any(imp.module == "threading" for imp in found)
    aio = imports(PACKAGE / "aio" / "server.py")
    assert any(imp.module == "servekit.core" for imp in aio)  # under TYPE_CHECKING
    rpc = imports(PACKAGE / "rpc" / "message.py")
    assert any(imp.module == "servekit.rpc.xdr" for imp in rpc)  # "from servekit.rpc import xdr"
