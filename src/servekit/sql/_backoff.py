"""Exponential back-off with jitter: for retries of failed rows, and for
reconnecting to a database that went away."""

from __future__ import annotations

import random

__all__ = ["backoff_delay"]


def backoff_delay(
    attempt: int,
    base: float,
    cap: float,
    *,
    jitter: float = 0.25,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait after failure number ``attempt`` (1 for the first).

    ``base * 2 ** (attempt - 1)``, capped at ``cap``, then a random fraction of
    up to ``jitter`` of it taken off, so that rows (or workers) that failed
    together do not all come back at the same instant. The result lies in
    ``[(1 - jitter) * d, d]`` where ``d`` is the capped delay: never above
    ``cap``, and the first retry comes after at least ``(1 - jitter) * base``.
    """
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, not {attempt}")
    if base < 0 or cap < 0 or not 0 <= jitter <= 1:
        raise ValueError("base and cap must be >= 0 and jitter within [0, 1]")
    # 2 ** 64 is already past any cap; the exponent is bounded so the float cannot overflow.
    delay = min(cap, base * 2.0 ** min(attempt - 1, 64))
    return delay * (1.0 - jitter * (rng or random).random())
