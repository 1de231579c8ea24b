"""What a row of the queue is to Python: ``Job`` (claimed), ``DeadJob``
(in the dead state), the state names, and the payload's encoding."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime  # noqa: TC003 - at run time too: typing.get_type_hints(Job)
from typing import TYPE_CHECKING, Any, Final, Literal

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "DEAD",
    "DONE",
    "PENDING",
    "RUNNING",
    "STATES",
    "DeadJob",
    "Job",
    "JobState",
    "PayloadError",
    "decode_payload",
    "encode_payload",
]

JobState = Literal["pending", "running", "done", "dead"]
PENDING: Final = "pending"
RUNNING: Final = "running"
DONE: Final = "done"
DEAD: Final = "dead"
#: Every state, in a row's life order.
STATES: Final[tuple[JobState, ...]] = (PENDING, RUNNING, DONE, DEAD)

#: The ``encoding`` column: how ``payload`` (bytes in the table) is read.
Encoding = Literal["json", "bytes"]


@dataclass(frozen=True, slots=True)
class Job:
    """A claimed row: what a handler gets as ``self.request``.

    ``payload`` is the decoded JSON value, or ``bytes`` when ``bytes`` were
    enqueued. ``attempt`` counts the claims of the row, this one included (1 on
    the first run). ``max_attempts`` is the row's own limit, or the backend's
    default when the row was enqueued without one. Times are aware datetimes in
    UTC. ``lease_until`` is when the claim lapses unless extended.
    """

    id: int
    queue: str
    payload: Any
    attempt: int
    max_attempts: int
    priority: int
    run_at: datetime
    created_at: datetime
    lease_until: datetime
    dedupe_key: str | None = None

    @property
    def last_attempt(self) -> bool:
        """True if a failure of this attempt sends the row to the dead state."""
        return self.attempt >= self.max_attempts


@dataclass(frozen=True, slots=True)
class DeadJob:
    """A row in the dead state, with the error that put it there.

    ``raw_payload`` is the payload as stored (``encoding`` says how to read it:
    a row may be dead because it could not be decoded). ``failed_at`` is when
    it died. ``max_attempts`` is None when the row takes the worker's default.
    """

    id: int
    queue: str
    attempt: int
    max_attempts: int | None
    priority: int
    created_at: datetime
    failed_at: datetime
    last_error: str
    encoding: str
    raw_payload: bytes
    dedupe_key: str | None = None

    def payload(self) -> Any:
        """The decoded payload; PayloadError if it cannot be decoded."""
        return decode_payload(self.encoding, self.raw_payload)


class PayloadError(ValueError):
    """A payload cannot be encoded (enqueue) or decoded (claim)."""


def encode_payload(payload: object) -> tuple[Encoding, bytes]:
    """``(encoding, data)`` to store: bytes as they are, anything else as JSON
    (UTF-8, compact; NaN and infinities refused: they are not JSON)."""
    if isinstance(payload, bytes | bytearray | memoryview):
        return "bytes", bytes(payload)
    try:
        text = json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError) as exc:
        raise PayloadError(f"payload is neither bytes nor JSON: {exc}") from None
    try:
        return "json", text.encode()
    except UnicodeEncodeError as exc:  # a lone surrogate in a str
        raise PayloadError(f"payload is not valid UTF-8 text: {exc}") from None


#: json.loads's own C scanner, called directly: a claimed row's payload is decoded on the
#: hot path, where json.loads's Python (its checks, decode(), raw_decode(), two regular
#: expressions for whitespace) cost as much as the scanning (docs/performance.md).
# (scan_once is set by JSONDecoder.__init__; typeshed leaves it out.)
_scan_once: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def decode_payload(encoding: str, data: bytes) -> Any:
    """The payload of a row; PayloadError, naming the reason, if it cannot be read."""
    if encoding == "bytes":
        return bytes(data)
    if encoding != "json":
        raise PayloadError(f"unknown payload encoding {encoding!r}")
    try:
        text = bytes(data).decode()
    except UnicodeDecodeError as exc:
        raise PayloadError(f"payload is not UTF-8: {exc}") from None
    try:
        # What json.loads does for text with no whitespace around the value, which is
        # what encode_payload writes; anything else, errors included, goes the long way.
        value, end = _scan_once(text, 0)
        if end == len(text):
            return value
    except (StopIteration, ValueError, RecursionError):
        pass
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise PayloadError(f"payload is not JSON: {exc}") from None
    except RecursionError:
        raise PayloadError("payload is JSON nested too deeply to decode") from None
