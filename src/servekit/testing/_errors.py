"""no_handler_errors(): fail a test when a handler raised, which a server only logs."""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["HandlerErrors", "UnexpectedHandlerError", "no_handler_errors"]


class UnexpectedHandlerError(AssertionError):
    """A handler raised while ``no_handler_errors()`` was watching, and no
    ``expect()`` allowed it; the message carries each traceback."""


@dataclass(frozen=True)
class _Expected:
    kind: type[BaseException] | tuple[type[BaseException], ...]
    match: re.Pattern[str] | None

    def allows(self, record: logging.LogRecord) -> bool:
        exc = _exception(record)
        if exc is None or not isinstance(exc, self.kind):
            return False
        return self.match is None or self.match.search(str(exc)) is not None


def _exception(record: logging.LogRecord) -> BaseException | None:
    return record.exc_info[1] if record.exc_info else None


class _Collector(logging.Handler):
    def __init__(self, errors: HandlerErrors) -> None:
        super().__init__(logging.ERROR)
        self._errors = errors

    def emit(self, record: logging.LogRecord) -> None:
        if _exception(record) is not None:
            self._errors._add(record)


class HandlerErrors:
    """The handler errors logged while ``no_handler_errors()`` is active.

    A handler error is what a server's ``handle_error()`` logs: a record at
    ERROR or above with an exception attached ("Exception occurred during
    processing of request from ...") on the ``servekit`` loggers, from any
    thread. A client that went away (``ConnectionError``) and a tripped limit
    (``LimitExceeded``) are logged below ERROR and are not errors here.
    """

    def __init__(self) -> None:
        self._records: list[logging.LogRecord] = []
        self._expected: list[_Expected] = []
        self._changed = threading.Condition()

    def expect(
        self,
        kind: type[BaseException] | tuple[type[BaseException], ...] = Exception,
        *,
        match: str | None = None,
    ) -> None:
        """Allow handler errors of ``kind`` (and whose message has a match for the
        regular expression ``match``): the test provokes them on purpose."""
        self._expected.append(_Expected(kind, None if match is None else re.compile(match)))

    @property
    def records(self) -> list[logging.LogRecord]:
        """Every handler error logged so far, expected or not."""
        with self._changed:
            return list(self._records)

    @property
    def exceptions(self) -> list[BaseException]:
        """The exceptions of ``records``, in order."""
        return [exc for record in self.records if (exc := _exception(record)) is not None]

    def unexpected(self) -> list[logging.LogRecord]:
        """The handler errors no ``expect()`` allows."""
        return [r for r in self.records if not any(e.allows(r) for e in self._expected)]

    def wait_for(self, count: int = 1, timeout: float | None = 10.0) -> list[logging.LogRecord]:
        """Wait until ``count`` handler errors have been logged (a server's handler
        runs in another thread: its error may be logged after the client saw the
        connection close); TimeoutError after ``timeout`` seconds."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._records) >= count, timeout):
                raise TimeoutError(
                    f"{len(self._records)} handler error(s) logged within {timeout}s, not {count}"
                )
            return list(self._records)

    def check(self) -> None:
        """Raise UnexpectedHandlerError if a handler error no ``expect()`` allows was logged."""
        unexpected = self.unexpected()
        if unexpected:
            raise UnexpectedHandlerError(self._describe(unexpected))

    def _add(self, record: logging.LogRecord) -> None:
        with self._changed:
            self._records.append(record)
            self._changed.notify_all()

    @staticmethod
    def _describe(records: list[logging.LogRecord]) -> str:
        parts = [f"{len(records)} unexpected handler error(s) logged:"]
        for record in records:
            parts.append(f"\n{record.name}: {record.getMessage()}")
            if record.exc_info:
                parts.append("".join(traceback.format_exception(*record.exc_info)).rstrip())
        return "\n".join(parts)


@contextlib.contextmanager
def no_handler_errors(
    *expected: type[BaseException], logger: str = "servekit"
) -> Iterator[HandlerErrors]:
    """Collect the handler errors logged during the block; at its end, raise
    ``UnexpectedHandlerError`` (an AssertionError, with every traceback) if one
    was not expected. ``expected`` exception classes are allowed, and so are
    those declared with ``errors.expect(...)`` in the block.

    Put it around ``serving()``, so that the server has stopped (and every
    handler has finished) before the errors are judged. If the block itself
    raised, that exception propagates, with the unexpected errors in a note:
    they are often its cause. The records still reach the logger's other
    handlers (pytest's caplog, a log file).
    """
    errors = HandlerErrors()
    for kind in expected:
        errors.expect(kind)
    log = logging.getLogger(logger)
    collector = _Collector(errors)
    old_level = log.level
    if not log.isEnabledFor(logging.ERROR):
        log.setLevel(logging.ERROR)  # a level set higher would hide them from us
    log.addHandler(collector)
    try:
        yield errors
    except BaseException as exc:
        unexpected = errors.unexpected()
        if unexpected:
            exc.add_note("servekit.testing: " + errors._describe(unexpected))
        raise
    finally:
        log.removeHandler(collector)
        log.setLevel(old_level)
    errors.check()
