"""Queue URLs: ``sqlite:PATH`` and ``postgresql://...``, with ``?queue=`` names.

Accepted forms::

    sqlite:jobs.db                 relative path (to the working directory)
    sqlite:/abs/path/jobs.db       absolute path
    sqlite:///abs/path/jobs.db     absolute path, the URL way
    postgresql://user:pw@host:5432/db
    postgres://user@host/db

``queue=`` names the queues a worker claims from (and the queue a producer
writes to when it names none): repeated (``?queue=a&queue=b``) or
comma-separated (``?queue=a,b``); ``default`` when absent. Every other query
parameter of a PostgreSQL URL is given to libpq as it is (``sslmode=...``);
a SQLite URL takes no other parameter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

__all__ = ["DEFAULT_QUEUE", "QueueURL", "check_queue_name", "parse_url"]

#: The queue of a URL that names none, and of an enqueue that names none.
DEFAULT_QUEUE = "default"

_QUEUE_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,100}")

Scheme = Literal["sqlite", "postgresql"]


def check_queue_name(name: object) -> str:
    """Return ``name`` if it is a valid queue name, else raise ValueError.

    A queue name is 1 to 100 letters, digits, ``_``, ``-`` and ``.``.
    """
    if not isinstance(name, str) or not _QUEUE_NAME.fullmatch(name):
        raise ValueError(f"bad queue name {name!r}: use 1 to 100 letters, digits, '_', '-' and '.'")
    return name


@dataclass(frozen=True, slots=True)
class QueueURL:
    """A parsed queue URL.

    ``scheme`` is ``"sqlite"`` or ``"postgresql"`` (``postgres://`` is read as
    the latter). For SQLite, ``path`` is the database file as given (relative
    paths are relative to the working directory when opened). For PostgreSQL,
    ``conninfo`` is the URL libpq connects with (the ``queue`` parameter
    removed). ``queues`` has at least one name, without repeats, in the URL's
    order.
    """

    scheme: Scheme
    queues: tuple[str, ...]
    path: str = ""
    conninfo: str = ""

    def redacted(self) -> str:
        """The URL with any password replaced by ``***``: for logs and errors."""
        query = "" if self.queues == (DEFAULT_QUEUE,) else "?queue=" + ",".join(self.queues)
        if self.scheme == "sqlite":
            return f"sqlite:{self.path}{query}"
        parts = urlsplit(self.conninfo)
        netloc = parts.netloc
        if parts.password is not None:
            userinfo, _, hostport = netloc.rpartition("@")
            user = userinfo.split(":", 1)[0]
            netloc = f"{user}:***@{hostport}"
        extra = parts.query
        if query and extra:
            query += "&" + extra
        elif extra:
            query = "?" + extra
        return f"{parts.scheme}://{netloc}{parts.path}{query}"

    def __str__(self) -> str:
        return self.redacted()


def parse_url(url: str | QueueURL) -> QueueURL:
    """Parse a queue URL (see the module's docstring); ValueError names what is wrong."""
    if isinstance(url, QueueURL):
        return url
    if not isinstance(url, str):
        raise TypeError(f"a queue URL is a str, not {type(url).__name__}")
    scheme, sep, _ = url.partition(":")
    scheme = scheme.lower()
    if not sep or scheme not in ("sqlite", "postgresql", "postgres"):
        raise ValueError(
            f"bad queue URL {url!r}: it starts with sqlite: or postgresql:// (or postgres://)"
        )
    if scheme == "sqlite":
        return _parse_sqlite(url)
    return _parse_postgres(url)


def _queues(url: str, values: list[str]) -> tuple[str, ...]:
    names: list[str] = []
    for value in values:
        for name in value.split(","):
            try:
                check_queue_name(name)
            except ValueError as exc:
                raise ValueError(f"bad queue URL {url!r}: {exc}") from None
            if name not in names:
                names.append(name)
    return tuple(names) or (DEFAULT_QUEUE,)


def _parse_sqlite(url: str) -> QueueURL:
    rest = url[len("sqlite:") :]
    path, _, query = rest.partition("?")
    if path.startswith("//"):
        # sqlite:///abs/path: an empty authority, then the absolute path.
        authority, slash, tail = path[2:].partition("/")
        if authority not in ("", "localhost"):
            raise ValueError(
                f"bad queue URL {url!r}: a SQLite URL names no host "
                "(sqlite:///abs/path.db or sqlite:relative.db)"
            )
        path = slash + tail
    path = unquote(path)
    if not path or path.endswith("/"):
        raise ValueError(f"bad queue URL {url!r}: no database file after sqlite:")
    if "\0" in path:
        raise ValueError(f"bad queue URL {url!r}: a NUL byte in the path")
    values: list[str] = []
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key != "queue":
            raise ValueError(
                f"bad queue URL {url!r}: unknown parameter {key!r} (a SQLite URL takes only queue=)"
            )
        values.append(value)
    return QueueURL("sqlite", _queues(url, values), path=path)


def _parse_postgres(url: str) -> QueueURL:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise ValueError(f"bad queue URL {_redact_raw(url)!r}: {exc}") from None
    if not url.lower().startswith(("postgresql://", "postgres://")):
        raise ValueError(
            f"bad queue URL {_redact_raw(url)!r}: write postgresql://[user@]host[:port]/db"
        )
    if parts.fragment:
        raise ValueError(f"bad queue URL {_redact_raw(url)!r}: a URL fragment (#...)")
    values: list[str] = []
    others: list[tuple[str, str]] = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key == "queue":
            values.append(value)
        else:
            others.append((key, value))
    # Not urlunsplit: it drops the empty authority of postgresql:///db (the local socket).
    conninfo = f"postgresql://{parts.netloc}{parts.path}"
    if others:
        conninfo += "?" + urlencode(others, quote_via=quote)
    return QueueURL("postgresql", _queues(_redact_raw(url), values), conninfo=conninfo)


def _redact_raw(url: str) -> str:
    return re.sub(r"(//[^:/@]*:)[^@/]*@", r"\1***@", url)
