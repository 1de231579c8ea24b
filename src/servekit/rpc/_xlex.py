"""The tokens of a ``.x`` file (RFC 5531 section 12, RFC 4506 section 6), and what the
C preprocessor would have done to it: sans-IO, a string in, tokens out.

rpcgen runs ``cpp`` over a ``.x`` file before reading it. The tokenizer does the part
of that which real files rely on, and nothing more:

- comments (``/* */`` and ``//``) are dropped anywhere;
- a line whose first character is ``%`` is C passed through to rpcgen's output:
  meaningless to Python, skipped, but for ``%#define NAME NUMBER``, which files use
  as a constant of the ``.x`` too (nlm_prot.x's ``LM_MAXSTRLEN``): such a name, used
  and not defined otherwise, is that constant (``c_defines``);
- ``#ifdef``, ``#ifndef``, ``#if``, ``#elif``, ``#else`` and ``#endif`` keep or drop
  lines, with only the names the file ``#define``s defined. ``RPC_HDR``, ``RPC_XDR``,
  ``RPC_SVC``, ``RPC_CLNT`` and ``RPC_TBL``, which rpcgen defines for one C output at
  a time, are not: a ``#ifdef RPC_HDR`` block (C for the header) is dropped;
- ``#define NAME TOKENS`` substitutes ``TOKENS`` for ``NAME`` afterwards, as cpp does;
  ``#undef`` ends that;
- ``#include "FILE.x"`` reads FILE.x through the ``include`` callback given (the
  compiler does no I/O); any other ``#include`` names C headers and is skipped;
- ``#pragma``, ``#line`` and ``#ident`` are skipped; ``#error`` is an error.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

__all__ = ["CompileError", "Token", "tokenize"]

#: How an ``#include "NAME"`` is read: the text of NAME, or None when not found.
Include = Callable[[str], "tuple[str, str] | None"]


class CompileError(Exception):
    """A ``.x`` file that is not valid: ``str()`` is ``file:line:column: message``."""

    def __init__(self, file: str, line: int, column: int, message: str) -> None:
        super().__init__(f"{file}:{line}:{column}: {message}")
        self.file, self.line, self.column, self.message = file, line, column, message


@dataclasses.dataclass(frozen=True, slots=True)
class Token:
    """``kind`` is "name", "number", "string" or "punct" ("end" at the end of the input);
    ``value`` the number's value for a number."""

    kind: str
    text: str
    file: str
    line: int
    column: int
    value: int = 0

    def error(self, message: str) -> CompileError:
        return CompileError(self.file, self.line, self.column, message)


_PUNCT = frozenset("{}()[]<>;,=*:-")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(r"[0-9][A-Za-z0-9_]*")
_STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"')
_C_DEFINE = re.compile(r"%\s*#\s*define\s+([A-Za-z_]\w*)\s+([^/]+?)\s*(?:/\*.*)?$")
_SPACE = re.compile(r"[ \t\r\f\v]+")
_INCLUDE_DEPTH = 16


def _number(text: str) -> int | None:
    """A C integer constant (decimal, 0x hex, 0 octal), or None if ``text`` is not one."""
    if re.fullmatch(r"0[xX][0-9a-fA-F]+", text):
        return int(text, 16)
    if re.fullmatch(r"0[0-7]*", text):
        return int(text, 8)
    if re.fullmatch(r"[1-9][0-9]*", text):
        return int(text)
    return None


@dataclasses.dataclass
class _Branch:
    taking: bool  # this branch's lines are kept
    taken: bool  # some branch of this #if was kept
    outer: bool  # the enclosing block is kept
    token: Token  # where the #if was, for an unterminated one


class _Lexer:
    def __init__(self, source: str, file: str, include: Include | None, depth: int = 0) -> None:
        self.source, self.file, self.include, self.depth = source, file, include, depth
        self.pos, self.line, self.line_start = 0, 1, 0
        self.defines: dict[str, list[Token]] = {}
        self.branches: list[_Branch] = []
        self.out: list[Token] = []
        self.c_defines: dict[str, Token] = {}

    def here(self, pos: int | None = None) -> tuple[int, int]:
        at = self.pos if pos is None else pos
        return self.line, at - self.line_start + 1

    def fail(self, message: str, pos: int | None = None) -> CompileError:
        line, column = self.here(pos)
        return CompileError(self.file, line, column, message)

    @property
    def active(self) -> bool:
        return not self.branches or (self.branches[-1].taking and self.branches[-1].outer)

    def run(self) -> list[Token]:
        at_line_start = True
        while self.pos < len(self.source):
            char = self.source[self.pos]
            if char == "\n":
                self.newline()
                at_line_start = True
                continue
            space = _SPACE.match(self.source, self.pos)
            if space:
                self.pos = space.end()
                continue
            if self.source.startswith("/*", self.pos):
                self.block_comment()
                continue
            if self.source.startswith("//", self.pos):
                self.skip_line()
                continue
            if at_line_start and char in "%#":
                self.directive(char)
                continue
            at_line_start = False
            self.token()
        if self.branches:
            raise self.branches[-1].token.error("#if without #endif")
        return self.out

    def newline(self) -> None:
        self.pos += 1
        self.line += 1
        self.line_start = self.pos

    def skip_line(self) -> None:
        end = self.source.find("\n", self.pos)
        self.pos = len(self.source) if end < 0 else end

    def block_comment(self) -> None:
        start = self.pos
        end = self.source.find("*/", self.pos + 2)
        if end < 0:
            raise self.fail("unterminated comment", start)
        while True:
            newline = self.source.find("\n", self.pos, end)
            if newline < 0:
                break
            self.pos = newline
            self.newline()
        self.pos = end + 2

    def token(self) -> None:
        start = self.pos
        char = self.source[start]
        if char == '"':  # a string constant (rpcgen's const NAME = "text")
            string = _STRING.match(self.source, start)
            if string is None:
                raise self.fail("unterminated string")
            self.pos = string.end()
            self.emit(Token("string", string.group(), self.file, *self.here(start)))
            return
        match = _NAME.match(self.source, start) or _NUMBER.match(self.source, start)
        if match is None:
            if char not in _PUNCT:
                raise self.fail(f"unexpected character {char!r}")
            self.pos += 1
            self.emit(Token("punct", char, self.file, *self.here(start)))
            return
        text = match.group()
        self.pos = match.end()
        if char.isdigit():
            value = _number(text)
            if value is None:
                raise self.fail(f"bad constant {text!r}", start)
            self.emit(Token("number", text, self.file, *self.here(start), value))
        else:
            self.emit(Token("name", text, self.file, *self.here(start)))

    def emit(self, token: Token, expanding: frozenset[str] = frozenset()) -> None:
        if not self.active:
            return
        body = self.defines.get(token.text) if token.kind == "name" else None
        if body is None or token.text in expanding:
            self.out.append(token)
            return
        for part in body:  # where the macro is used: the error's place is its use
            moved = dataclasses.replace(part, file=token.file, line=token.line, column=token.column)
            self.emit(moved, expanding | {token.text})

    # -- the preprocessor's lines ----------------------------------------------------

    def directive(self, char: str) -> None:
        start = self.pos
        text = self.logical_line()
        if char == "%":  # C for rpcgen's output (in any #if block: all of it is C's)
            define = _C_DEFINE.match(text)
            if define is not None:
                line, column = self.here(start)
                self.c_defines[define.group(1)] = Token(
                    "define", define.group(2).replace(" ", ""), self.file, line, column
                )
            return
        at = Token("punct", "#", self.file, *self.here(start))
        words = text[1:].strip()
        name = _NAME.match(words)
        keyword = name.group() if name else ""
        rest = words[len(keyword) :].strip()
        if keyword in ("ifdef", "ifndef", "if", "elif", "else", "endif"):
            self.condition(keyword, rest, at)
        elif not self.active or keyword in ("pragma", "line", "ident", ""):
            return
        elif keyword == "define":
            self.define(rest, at)
        elif keyword == "undef":
            self.defines.pop(rest.split()[0] if rest.split() else "", None)
        elif keyword == "include":
            self.include_file(rest, at)
        elif keyword == "error":
            raise at.error(f"#error {rest}")
        else:
            raise at.error(f"unknown directive #{keyword}")

    def logical_line(self) -> str:
        """The rest of the line, comments dropped, joined over backslash-newlines."""
        parts = []
        while True:
            end = self.source.find("\n", self.pos)
            end = len(self.source) if end < 0 else end
            comment = self.source.find("/*", self.pos, end)
            if comment >= 0:
                parts.append(self.source[self.pos : comment])
                self.pos = comment
                self.block_comment()
                parts.append(" ")
                continue
            piece = self.source[self.pos : end]
            slashes = piece.find("//")
            if slashes >= 0:
                piece = piece[:slashes]
            self.pos = end
            if piece.endswith("\\") and end < len(self.source):
                parts.append(piece[:-1])
                self.newline()
                continue
            parts.append(piece)
            return "".join(parts)

    def condition(self, keyword: str, rest: str, at: Token) -> None:
        if keyword in ("ifdef", "ifndef", "if"):
            outer = self.active
            if keyword == "if":
                value = self.evaluate(rest, at) if outer else False
            else:
                value = (rest.split()[0] if rest else "") in self.defines
                if not rest:
                    raise at.error(f"#{keyword} needs a name")
                value = value if keyword == "ifdef" else not value
            self.branches.append(_Branch(value, value, outer, at))
            return
        if not self.branches:
            raise at.error(f"#{keyword} without #if")
        branch = self.branches[-1]
        if keyword == "endif":
            self.branches.pop()
        elif keyword == "else":
            branch.taking = not branch.taken
            branch.taken = True
        else:  # elif
            value = not branch.taken and branch.outer and self.evaluate(rest, at)
            branch.taking = value
            branch.taken = branch.taken or value

    def evaluate(self, text: str, at: Token) -> bool:
        """``#if``'s expression, as far as .x files use it: a number, a name (0 when it
        is not defined, as in cpp), ``defined NAME``, ``!``, ``&&`` and ``||``."""
        python = re.sub(r"\bdefined\s*\(\s*(\w+)\s*\)|\bdefined\s+(\w+)", self._defined, text)
        python = python.replace("&&", " and ").replace("||", " or ")
        python = re.sub(r"!(?!=)", " not ", python)
        words = re.findall(r"[A-Za-z_]\w*|\d+|\S", python)
        allowed = {"and", "or", "not", "(", ")"}
        values = []
        for word in words:
            if word in allowed:
                values.append(word)
            elif word[0].isdigit():
                values.append(str(int(_number(word) or 0) != 0))
            elif _NAME.fullmatch(word):
                values.append(str(self.macro_true(word)))
            else:
                raise at.error(f"cannot evaluate #if {text}")
        if not values:
            raise at.error("#if needs an expression")
        try:
            # Only True, False, and, or, not and parentheses are left to evaluate.
            return bool(eval(" ".join(values), {"__builtins__": {}}))
        except SyntaxError:
            raise at.error(f"cannot evaluate #if {text}") from None

    def _defined(self, match: re.Match[str]) -> str:
        return "1" if (match.group(1) or match.group(2)) in self.defines else "0"

    def macro_true(self, name: str) -> bool:
        body = self.defines.get(name)
        if not body:
            return False
        return not (len(body) == 1 and body[0].kind == "number" and body[0].value == 0)

    def define(self, rest: str, at: Token) -> None:
        name = _NAME.match(rest)
        if name is None:
            raise at.error("#define needs a name")
        if rest[name.end() : name.end() + 1] == "(":
            raise at.error("function-like macros are not supported")
        body = _Lexer(rest[name.end() :], self.file, None)
        body.line = at.line
        self.defines[name.group()] = body.run()

    def include_file(self, rest: str, at: Token) -> None:
        quoted = re.fullmatch(r'"([^"]+)"', rest)
        if quoted is None or not quoted.group(1).endswith(".x"):
            return  # a C header: rpcgen's output includes it, Python needs nothing of it
        name = quoted.group(1)
        if self.include is None:
            raise at.error(f'#include "{name}": no include path to read it from')
        if self.depth >= _INCLUDE_DEPTH:
            raise at.error(f'#include "{name}": includes nested too deep')
        found = self.include(name)
        if found is None:
            raise at.error(f'#include "{name}": not found')
        text, path = found
        inner = _Lexer(text, path, self.include, self.depth + 1)
        inner.defines = self.defines
        self.out += inner.run()
        self.c_defines.update(inner.c_defines)


def tokenize(
    source: str, file: str, include: Include | None = None
) -> tuple[list[Token], dict[str, Token]]:
    """The tokens of ``source`` (the text of ``file``), preprocessed, and an "end";
    and the ``%#define``d numbers, by name."""
    lexer = _Lexer(source, file, include)
    tokens = lexer.run()
    line, column = lexer.here()
    tokens.append(Token("end", "", file, line, column))
    return tokens, lexer.c_defines
