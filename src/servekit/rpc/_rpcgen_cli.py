"""``servekit rpcgen SPEC.x [-o MODULE.py] [-I DIR]``: a ``.x`` file to Python.

``add_parser(commands)`` adds the command to ``servekit``'s subcommands; ``run(args)``
runs it and returns the exit status: 0 (the module on stdout, or in ``-o``'s file),
1 (the file cannot be read or written, or is not valid: one line on stderr,
``file:line:column: message``), 2 (bad arguments, as every command).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from servekit.rpc.rpcgen import CompileError, compile_x

if TYPE_CHECKING:
    import argparse

__all__ = ["add_parser", "run"]


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Add ``rpcgen`` to ``commands`` (the ``add_subparsers()`` of ``servekit``)."""
    rpcgen = commands.add_parser(
        "rpcgen",
        help="compile a .x file (ONC RPC) to a typed Python module",
        description="Compile SPEC.x (RFC 5531's RPC language) to Python: its types, a "
        "server base class and clients per program version. Exit status: 0 done, 1 bad "
        "input (file:line:column: message on stderr), 2 bad arguments.",
    )
    rpcgen.add_argument("spec", metavar="SPEC.x", help="the .x file")
    rpcgen.add_argument("-o", "--output", metavar="MODULE.py",
                        help="write the module there (default: stdout)")  # fmt: skip
    rpcgen.add_argument("-I", "--include", action="append", default=[], metavar="DIR",
                        help='where #include "NAME.x" is looked for, after the '
                        "directory of SPEC.x (repeatable)")  # fmt: skip
    return rpcgen  # type: ignore[no-any-return]


def run(args: argparse.Namespace) -> int:
    """Run ``servekit rpcgen``; the exit status."""
    spec = Path(args.spec)
    directories = [spec.parent, *map(Path, args.include)]

    def include(name: str) -> tuple[str, str] | None:
        for directory in directories:
            path = directory / name
            if path.is_file():
                return path.read_text(encoding="utf-8", errors="replace"), str(path)
        return None

    try:
        source = spec.read_text(encoding="utf-8", errors="replace")
        python = compile_x(source, str(spec), include)
        if args.output is None:
            sys.stdout.write(python)
        else:
            _write(Path(args.output), python)
    except CompileError as exc:  # as compilers say it: an editor jumps to the place
        sys.stderr.write(f"{exc}\n")
        return 1
    except OSError as exc:
        sys.stderr.write(f"servekit rpcgen: {exc.filename or args.spec}: {exc.strerror or exc}\n")
        return 1
    return 0


def _write(path: Path, text: str) -> None:
    """Replace ``path`` at once: a build never sees half a module."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)
