"""The server options: each declared once, with its type, range, default and why.

``make_server`` checks every value against this table before it binds a
socket, and ``servekit serve`` builds its options from it, so a wrong type or
a bad range is one clear error at start, never a traceback at the first
client. The defaults are production defaults; the stdlib classes keep the
stdlib's own (no limits), because code written for them may rely on that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final, Literal

__all__ = [
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_LINE_LENGTH",
    "DEFAULT_MAX_PENDING",
    "DEFAULT_MAX_WORKERS",
    "DEFAULT_READ_TIMEOUT",
    "DEFAULT_SHUTDOWN_TIMEOUT",
    "OPTIONS",
    "Option",
    "check",
    "parse",
]

#: Threads of the pool kept warm: enough to keep two cores busy with handlers
#: that wait on I/O most of the time, few enough that their stacks stay small.
#: The pool grows past them, up to max_connections, while every one is taken.
DEFAULT_MAX_WORKERS: Final = 64
#: Requests accepted and queued for a full pool before the server stops
#: accepting; beyond it, clients wait in the kernel backlog at no cost to us.
DEFAULT_MAX_PENDING: Final = 256
#: Open connections at once, in every model: each holds a descriptor and, in
#: the thread models, a thread; 1,024 stays far below the usual open-file limit.
DEFAULT_MAX_CONNECTIONS: Final = 1024
#: What a stop lets requests in flight run before cutting them: under the 30 s
#: Kubernetes and 90 s systemd give a service between SIGTERM and SIGKILL.
DEFAULT_SHUTDOWN_TIMEOUT: Final = 25.0
#: A connection with no traffic either way for this long is closed.
DEFAULT_IDLE_TIMEOUT: Final = 300.0
#: A request (a line, a read(n)) must be complete this long after its first byte.
DEFAULT_READ_TIMEOUT: Final = 30.0
#: The longest line StreamRequestHandler reads, newline included: http.server's own bound.
DEFAULT_MAX_LINE_LENGTH: Final = 65536
#: The TLS handshake and the PROXY header together: a real client needs a few
#: round trips (milliseconds); 10 s covers a slow mobile link and no more.
DEFAULT_HANDSHAKE_TIMEOUT: Final = 10.0

Kind = Literal["count", "seconds"]


@dataclass(frozen=True, slots=True)
class Option:
    """One option of make_server (and of ``servekit serve``)."""

    name: str  #: make_server's keyword argument
    kind: Kind  #: "count": an int >= minimum; "seconds": a finite float >= 0
    default: int | float | None
    help: str
    minimum: int = 0  #: for counts
    none: bool = True  #: None turns it off (no limit)
    flag: str = ""  #: the command line's name, if not --name-with-dashes
    #: Seconds: 0 allowed? A timeout of 0 would cut every connection at once.
    zero: bool = False
    #: What None means, where it is not "no limit".
    none_means: str = "no limit"

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")


OPTIONS: Final[dict[str, Option]] = {
    option.name: option
    for option in (
        Option("max_workers", "count", DEFAULT_MAX_WORKERS,
               "pool: threads kept warm (it grows past them while all are busy)",
               minimum=1, none=False, flag="--threads"),
        Option("max_pending", "count", DEFAULT_MAX_PENDING,
               "pool: requests queued for a thread before accepting pauses", none=False),
        Option("max_connections", "count", DEFAULT_MAX_CONNECTIONS,
               "open connections at once; past it, clients wait in the backlog", minimum=1),
        Option("shutdown_timeout", "seconds", DEFAULT_SHUTDOWN_TIMEOUT,
               "a stop lets requests in flight run this long, then cuts them", zero=True,
               none_means="wait for ever"),
        Option("idle_timeout", "seconds", DEFAULT_IDLE_TIMEOUT,
               "close a connection with no traffic for this long"),
        Option("read_timeout", "seconds", DEFAULT_READ_TIMEOUT,
               "a request must be complete this long after its first byte"),
        Option("max_line_length", "count", DEFAULT_MAX_LINE_LENGTH,
               "the longest line a stream handler reads, newline included", minimum=1),
        Option("handshake_timeout", "seconds", DEFAULT_HANDSHAKE_TIMEOUT,
               "the TLS handshake and the PROXY header must be done within this"),
        Option("max_packet_size", "count", None,
               "the longest datagram taken; longer ones are dropped and logged", minimum=1,
               none_means="the server class's own, 8192"),
        Option("backlog", "count", None,
               "listen backlog, if above the system's SOMAXCONN", minimum=1,
               none_means="the system's SOMAXCONN"),
    )
}  # fmt: skip


def check(name: str, value: Any) -> Any:
    """``value`` if it is valid for option ``name``; else TypeError or ValueError naming it."""
    option = OPTIONS[name]
    if value is None:
        if option.none:
            return None
        raise TypeError(f"{name} must be {_what(option)}, not None")
    if option.kind == "count":
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be {_what(option)}, not {value!r}")
        if value < option.minimum:
            raise ValueError(f"{name} must be {_what(option)}, not {value}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be {_what(option)}, not {value!r}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not option.zero):
        raise ValueError(f"{name} must be {_what(option)}, not {value}")
    return float(value)


def parse(name: str, text: str) -> Any:
    """The command line's text for option ``name``, checked; ValueError says what is wrong."""
    option = OPTIONS[name]
    if option.none and text.strip().lower() == "none":
        return None
    try:
        value: int | float = int(text) if option.kind == "count" else float(text)
    except ValueError:
        raise ValueError(f"{option.cli_flag}: {text!r} is not {_what(option, cli=True)}") from None
    try:
        return check(name, value)
    except (TypeError, ValueError):
        raise ValueError(f"{option.cli_flag}: {text!r} is not {_what(option, cli=True)}") from None


def _what(option: Option, *, cli: bool = False) -> str:
    if option.kind == "count":
        what = f"a whole number >= {option.minimum}"
    else:
        what = "a number of seconds " + (">= 0" if option.zero else "> 0")
    if not option.none:
        return what
    return what + (" or 'none'" if cli else " or None") + f" ({option.none_means})"
