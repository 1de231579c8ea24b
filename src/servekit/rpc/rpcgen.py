"""``servekit rpcgen``: a ``.x`` file (RFC 5531 section 12, RFC 4506 section 6) compiled
to a typed Python module, without I/O.

    from servekit.rpc.rpcgen import CompileError, compile_x

    python = compile_x(Path("demo.x").read_text(), "demo.x")

The module holds the file's constants, its types declared with servekit.rpc.xdr (a
slotted dataclass per struct, an IntEnum per enum, a class per union with a subclass
per arm, a type alias per typedef), and for each version of each program a server base
class (an ``rpc.Version`` whose procedures a subclass fills in) and two clients
(``rpc.Client`` and ``rpc.AsyncClient`` with a method per procedure). What the
compiler does with comments, ``%`` lines and ``#`` directives is in
servekit.rpc._xlex; its names in servekit.rpc._xgen. Bad input raises CompileError,
whose ``str()`` is ``file:line:column: message``.
"""

from __future__ import annotations

from servekit.rpc._xcheck import check
from servekit.rpc._xgen import generate
from servekit.rpc._xlex import CompileError, Include, tokenize
from servekit.rpc._xparse import parse

__all__ = ["CompileError", "Include", "compile_x"]


def compile_x(source: str, filename: str, include: Include | None = None) -> str:
    """The Python module of the ``.x`` text ``source``, read from ``filename`` (which
    errors and the module's header name). ``include(name)`` reads an ``#include
    "name.x"``: its text and the path to name in errors, or None if not found."""
    tokens, c_defines = tokenize(source, filename, include)
    return generate(check(parse(tokens, filename, c_defines)))
