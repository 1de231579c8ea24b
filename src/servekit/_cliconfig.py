"""Where each option of ``servekit serve`` comes from, and what it is worth.

Four sources, the first that has a value wins: the command line, the
environment (``SERVEKIT_`` and the option's name in capitals, e.g.
``SERVEKIT_IDLE_TIMEOUT``), a TOML file (``servekit serve -c servekit.toml``,
read with the stdlib's ``tomllib``), then the option's default. The file's keys
and the variables' names are make_server's keyword arguments (``idle_timeout``,
``max_workers``, ``trusted_proxies``, ``rpcbind``), plus ``app`` (the
``MODULE:ATTR`` to serve), ``listen`` (a list) and the command line's own
options under their names (``workers``, ``log_level``, ...).

A value from the environment or the file goes through the same parser as the
flag's, so it is checked the same way; a bad one is one error line that names
its source, the option and the value. ``--check-config`` prints the result:
one line per option with its value and its source.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import re
import tomllib
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["ConfigError", "Origins", "describe", "key_of", "layer"]

#: The sources, in order of precedence.
COMMAND_LINE: Final = "command line"
ENVIRONMENT: Final = "environment"
FILE: Final = "file"
DEFAULT: Final = "default"

ENV_PREFIX: Final = "SERVEKIT_"
#: --check-config's sources start in this column, after a shorter ``key = value``.
_ALIGN_AT: Final = 40

#: Command-line destinations whose key (make_server's name) differs.
_KEYS: Final = {"target": "app", "trusted_proxy": "trusted_proxies", "no_rpcbind": "rpcbind"}
#: Flags whose key says the opposite (``rpcbind = false`` is ``--no-rpcbind``).
_NEGATED: Final = frozenset({"no_rpcbind"})
#: Destinations that are not options of the server: how to run the command itself.
_NOT_LAYERED: Final = frozenset({"help", "config_file", "check_config", "json", "command"})

_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})

#: An option's source, by its key.
Origins = dict[str, str]


class ConfigError(Exception):
    """A value the environment or the file gave cannot be used: one line."""


def key_of(dest: str) -> str:
    """The option's name in the file and the environment, from the flag's ``dest``."""
    return _KEYS.get(dest, dest)


def _layered(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.dest not in _NOT_LAYERED]


def layer(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    *,
    unset: object,
    environ: Mapping[str, str],
    path: str | None,
) -> Origins:
    """Fill in, on ``args``, what the command line did not give (its value is
    ``unset``, or None for a list) from the environment, then the file at ``path``.
    Returns each option's source; what none gave keeps ``unset`` for the caller's
    defaults."""
    actions = _layered(parser)
    known = {key_of(action.dest): action for action in actions}
    from_file = _read(path, known) if path is not None else {}
    origins: Origins = {}
    for action in actions:
        key = key_of(action.dest)
        if _given(action, getattr(args, action.dest, unset), unset):
            origins[key] = COMMAND_LINE
        elif (name := ENV_PREFIX + key.upper()) in environ:
            where = f"environment {name}={environ[name]!r}"
            setattr(args, action.dest, _from_text(action, environ[name], where))
            origins[key] = ENVIRONMENT
        elif key in from_file:
            where = f"{path}: {key} = {_toml(from_file[key])}"
            setattr(args, action.dest, _from_toml(action, from_file[key], where))
            origins[key] = FILE
        else:
            origins[key] = DEFAULT
    return origins


def _given(action: argparse.Action, value: object, unset: object) -> bool:
    if isinstance(action, argparse._AppendAction):
        return value is not None
    return value is not unset


def _read(path: str, known: Mapping[str, argparse.Action]) -> dict[str, Any]:
    try:
        with open(path, "rb") as file:
            table = tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"cannot read the configuration file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not TOML: {exc}") from None
    for key, value in table.items():
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"{path}: {key}: no such option{hint}")
        if isinstance(value, dict):
            raise ConfigError(f"{path}: {key}: a table, where a value was expected")
    return table


def _from_toml(action: argparse.Action, value: Any, where: str) -> Any:
    """A file's value as the flag would have parsed it."""
    if _is_flag(action):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: true or false, not {type(value).__name__}")
        return value != (action.dest in _NEGATED)
    if isinstance(action, argparse._AppendAction):
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise ConfigError(f"{where}: a string or a list of strings")
        return [_parsed(action, item, where) for item in items]
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ConfigError(f"{where}: not a {_wanted(action)}")
    if isinstance(value, int) and getattr(action.type, "octal", False):
        return _parsed(action, format(value, "o"), where)  # umask = 0o027 is 23, in octal 27
    return _parsed(action, str(value), where)


def _from_text(action: argparse.Action, text: str, where: str) -> Any:
    """An environment variable's value as the flag would have parsed it."""
    if _is_flag(action):
        word = text.strip().lower()
        if word not in _TRUE | _FALSE:
            raise ConfigError(f"{where}: true or false (1, yes, on; 0, no, off)")
        return (word in _TRUE) != (action.dest in _NEGATED)
    if isinstance(action, argparse._AppendAction):
        return [_parsed(action, item, where) for item in re.split(r"[,\s]+", text.strip()) if item]
    return _parsed(action, text, where)


def _is_flag(action: argparse.Action) -> bool:
    return isinstance(action, argparse._StoreConstAction) and isinstance(action.const, bool)


def _parsed(action: argparse.Action, text: str, where: str) -> Any:
    if action.choices is not None and text not in action.choices:
        raise ConfigError(f"{where}: one of {', '.join(map(str, action.choices))}")
    if action.type is None or not callable(action.type):
        return text
    try:
        return action.type(text)
    except (argparse.ArgumentTypeError, TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _wanted(action: argparse.Action) -> str:
    return "number" if action.metavar in ("N", "SECONDS") else "string"


def _toml(value: Any) -> str:
    """A value as the file would write it (for a line that names it)."""
    if value is None:
        return "none"  # TOML has no null: off, or not set (a limit takes "none" in a file)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and math.isfinite(value) and value == int(value):
        return str(int(value)) if abs(value) < 1e15 else repr(value)
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    return json.dumps(str(value))


def describe(values: Mapping[str, Any], origins: Origins, *, as_json: bool) -> str:
    """The effective configuration: a line an option (``key = value  # source``),
    or a JSON object of ``{"value": ..., "source": ...}`` by key."""
    keys = sorted(origins)
    if as_json:
        return json.dumps(
            {key: {"value": _plain(values[key]), "source": origins[key]} for key in keys},
            indent=2,
        )
    # Aligned sources, unless one long value (a log format) would push them all out.
    width = min(max(len(f"{key} = {_toml(values[key])}") for key in keys), _ALIGN_AT)
    return "\n".join(
        f"{f'{key} = {_toml(values[key])}':<{width}}  # {origins[key]}" for key in keys
    )


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return str(value)
