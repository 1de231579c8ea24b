"""Prometheus's text exposition format, version 0.0.4: families in, text out.

Written here rather than taken from prometheus_client: the format is a few
lines of escaping, and the core of servekit depends on nothing outside the
standard library (see pyproject.toml). Sans-IO: it renders what it is given.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Final, Literal

__all__ = ["CONTENT_TYPE", "Family", "render"]

#: What a scrape's answer says it is (the format's own media type).
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

_METRIC_NAME: Final = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL_NAME: Final = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")

Kind = Literal["counter", "gauge"]
Labels = tuple[tuple[str, str], ...]


@dataclass
class Family:
    """One metric: its name, kind and help, and a value per set of labels.

    A counter's name ends in ``_total``, as the format's conventions ask, so
    that a reader knows it only goes up (and rate() applies)."""

    name: str
    kind: Kind
    help: str
    samples: dict[Labels, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _METRIC_NAME.match(self.name):
            raise ValueError(f"{self.name!r} is not a metric name")
        if self.kind == "counter" and not self.name.endswith("_total"):
            raise ValueError(f"counter {self.name!r}: a counter's name ends in _total")
        if self.kind == "gauge" and self.name.endswith("_total"):
            raise ValueError(f"gauge {self.name!r}: _total is for counters")

    def add(self, value: float, **labels: str) -> None:
        """Add ``value`` to the sample of these labels (summing workers' figures)."""
        key = _labels(labels)
        self.samples[key] = self.samples.get(key, 0) + value


def _labels(labels: dict[str, str]) -> Labels:
    for name in labels:
        if not _LABEL_NAME.match(name) or name.startswith("__"):
            raise ValueError(f"{name!r} is not a label name")
    return tuple(sorted(labels.items()))


def render(families: list[Family]) -> str:
    """The text of ``families``: HELP and TYPE lines, then a line per sample."""
    lines = []
    for family in families:
        lines.append(f"# HELP {family.name} {escape_help(family.help)}")
        lines.append(f"# TYPE {family.name} {family.kind}")
        for labels, value in sorted(family.samples.items()):
            lines.append(f"{family.name}{_label_text(labels)} {format_value(value)}")
    return "".join(line + "\n" for line in lines)


def _label_text(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{name}="{escape_label(value)}"' for name, value in labels) + "}"


def escape_help(text: str) -> str:
    """A HELP text: backslash and line feed escaped."""
    return text.replace("\\", r"\\").replace("\n", r"\n")


def escape_label(value: str) -> str:
    """A label's value: backslash, double quote and line feed escaped."""
    return value.replace("\\", r"\\").replace('"', r"\"").replace("\n", r"\n")


def format_value(value: float) -> str:
    """A sample's value as the format writes it: integers without a point, and
    the infinities and NaN by name."""
    if isinstance(value, int) or (
        math.isfinite(value) and value == int(value) and abs(value) < 2**53
    ):
        return str(int(value))
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))
