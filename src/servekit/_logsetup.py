"""``servekit serve``'s logging: --log-config, --log-file, --log-level, the
connection log (--access-log, --access-log-format), and reopening the files.

Log files are opened in append mode and each line goes out in one write(): under
--workers the supervisor and every worker share one file (the workers inherit
it), and O_APPEND keeps their lines whole and in order of writing. SIGUSR2
reopens them (close, open the same path again) after logrotate moved them:
``reopen()``, in every process, for the handlers opened here and for any
``logging.FileHandler`` a --log-config made.
"""

from __future__ import annotations

import argparse
import json
import logging
import logging.config
import os
import sys
import tomllib
from typing import Any, Final

from servekit import access

__all__ = [
    "ACCESS_LOGGER",
    "LOG_FORMAT",
    "LogFile",
    "check_access_format",
    "check_log_config",
    "load_log_config",
    "reopen",
    "set_up",
]

logger = logging.getLogger(__name__)

#: servekit's own lines, unless a --log-config says otherwise.
LOG_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
ACCESS_LOGGER: Final = access.logger.name


class LogFile(logging.Handler):
    """Lines appended to a file, each in one write(); ``reopen()`` for logrotate.

    Not logging.FileHandler: its text stream may split a long line over two
    writes, between which another process's line lands.
    """

    def __init__(self, path: str, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        # Absolute: a later --chdir must not move where a reopen looks.
        self.path = os.path.abspath(path)
        self._fd = self._open()

    def _open(self) -> int:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        return os.open(self.path, flags, 0o666)  # the umask decides, as for any file

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = (self.format(record) + "\n").encode("utf-8", "backslashreplace")
            with memoryview(data) as view:
                written = 0
                while written < len(view):  # one write for a file; a pipe may take less
                    written += os.write(self._fd, view[written:])
        except Exception:
            self.handleError(record)

    def reopen(self) -> None:
        """Open the path again (a new file if it was moved) and close the old one;
        if the path cannot be opened, keep writing to the old one (OSError)."""
        new = self._open()
        with self.lock or _NO_LOCK:
            old, self._fd = self._fd, new
        os.close(old)

    def close(self) -> None:
        with self.lock or _NO_LOCK:
            fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)
        super().close()

    def __repr__(self) -> str:
        return f"<LogFile {self.path}>"


class _NoLock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


_NO_LOCK: Final = _NoLock()


# -- the flags' type functions: a bad value is one line, wherever it came from --


def check_access_format(text: str) -> str:
    """--access-log-format's type: the format, checked against the fields."""
    try:
        return access.check_format(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def load_log_config(path: str) -> dict[str, Any]:
    """A logging.config dictionary from a JSON or TOML file (by its extension)."""
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    if path.endswith(".toml"):
        try:
            config: Any = tomllib.loads(data.decode("utf-8", "replace"))
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{path}: not TOML: {exc}") from None
    elif path.endswith(".json"):
        try:
            config = json.loads(data)
        except ValueError as exc:
            raise ValueError(f"{path}: not JSON: {exc}") from None
    else:
        raise ValueError(f"{path}: name it .json or .toml, for the format it is in")
    if not isinstance(config, dict) or config.get("version") != 1:
        raise ValueError(f"{path}: not a logging.config dictionary (version = 1)")
    return config


def check_log_config(path: str) -> str:
    """--log-config's type: the file reads as a dictionary (dictConfig checks the rest)."""
    try:
        load_log_config(path)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return path


# -- setting up ---------------------------------------------------------------------


def _handler(destination: str) -> logging.Handler:
    """``-`` is stderr, anything else a file."""
    if destination == "-":
        return logging.StreamHandler(sys.stderr)
    return LogFile(destination)


def set_up(
    *,
    level: str | None,
    log_config: str | None = None,
    log_file: str | None = None,
    access_log: str | None = None,
    access_format: str = access.DEFAULT_FORMAT,
) -> bool:
    """Configure logging for ``servekit serve``; True when connections are to be logged.

    Raises ValueError (one line, naming the file) for a --log-config that
    dictConfig refuses and OSError for a file that cannot be opened.
    """
    if log_config is not None:
        config = load_log_config(log_config)
        # servekit's loggers exist already (made when its modules were imported):
        # dictConfig's default would silence every one the file does not name.
        config.setdefault("disable_existing_loggers", False)
        try:
            logging.config.dictConfig(config)
        except (ValueError, TypeError, AttributeError, ImportError) as exc:
            cause = f": {exc.__cause__}" if exc.__cause__ is not None else ""
            raise ValueError(f"{log_config}: {exc}{cause}") from None
        if level is not None:
            logging.getLogger().setLevel(level)
        wants_access = ACCESS_LOGGER in config.get("loggers", {})
    else:
        handler = _handler(log_file or "-")
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root = logging.getLogger()
        for old in root.handlers[:]:
            root.removeHandler(old)
        root.addHandler(handler)
        root.setLevel(level or "INFO")
        wants_access = False
    if access_log is not None:
        handler = _handler(access_log)
        handler.setFormatter(logging.Formatter("%(message)s"))
        access_logger = logging.getLogger(ACCESS_LOGGER)
        access_logger.addHandler(handler)
        access_logger.setLevel(logging.INFO)  # whatever --log-level: asked for, so written
        access_logger.propagate = False  # its own destination, not servekit's log as well
        wants_access = True
    return wants_access


def _file_handlers() -> list[logging.Handler]:
    loggers: list[logging.Logger] = [logging.getLogger()]
    loggers += [
        one for one in logging.root.manager.loggerDict.values() if isinstance(one, logging.Logger)
    ]
    found: dict[int, logging.Handler] = {}
    for one in loggers:
        for handler in one.handlers:
            if isinstance(handler, LogFile) or (
                isinstance(handler, logging.FileHandler) and handler.mode.startswith("a")
            ):
                found[id(handler)] = handler
    return list(found.values())


def reopen() -> int:
    """Reopen every log file (ours, and a --log-config's FileHandlers in append
    mode); how many were. One that cannot be opened keeps its old file, and says so."""
    done = 0
    for handler in _file_handlers():
        try:
            if isinstance(handler, LogFile):
                handler.reopen()
            elif isinstance(handler, logging.FileHandler):
                with handler.lock or _NO_LOCK:
                    stream, handler.stream = handler.stream, handler._open()
                    if stream is not None:
                        stream.close()
        except OSError as exc:
            logger.error("cannot reopen a log file (%s); writing on to the old one", exc)
            continue
        done += 1
    return done
