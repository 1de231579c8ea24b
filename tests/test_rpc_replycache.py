"""The duplicate-request cache on its own: in progress, answered, forgotten oldest first."""

from __future__ import annotations

import pytest

from servekit.rpc.replycache import IN_PROGRESS, ReplyCache


def test_a_call_is_new_then_in_progress_then_answered_from_the_cache() -> None:
    cache = ReplyCache(4)
    key = (1, 100, 1, 2, ("127.0.0.1", 700))
    assert cache.begin(key) is None
    assert cache.begin(key) is IN_PROGRESS
    cache.finish(key, b"reply")
    assert cache.begin(key) == b"reply"
    other_peer = (1, 100, 1, 2, ("127.0.0.1", 701))  # the same xid from elsewhere is a new call
    assert cache.begin(other_peer) is None


def test_an_unanswered_call_is_forgotten_and_the_oldest_go_first() -> None:
    cache = ReplyCache(2)
    cache.begin((1, 0, 0, 0, "a"))
    cache.finish((1, 0, 0, 0, "a"), None)
    assert len(cache) == 0
    for xid in range(3):
        cache.begin((xid, 0, 0, 0, "a"))
        cache.finish((xid, 0, 0, 0, "a"), b"%d" % xid)
    assert len(cache) == 2
    assert cache.begin((0, 0, 0, 0, "a")) is None  # pushed out: runs again
    cache.finish((9, 0, 0, 0, "a"), b"late")  # a key pushed out meanwhile: nothing to do
    with pytest.raises(ValueError, match="at least one"):
        ReplyCache(0)
