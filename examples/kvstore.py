"""A line-based key-value store: SET, GET, DEL, KEYS, one command per line.

    servekit serve examples.kvstore:KeyValue --listen 127.0.0.1:6380
    nc 127.0.0.1 6380        # any netcat; type SET colour blue, GET colour, KEYS

Replies: ``OK``, ``VALUE <value>``, ``NOT_FOUND``, ``KEYS <k1> <k2> ...`` or
``ERROR <why>``. The store lives in the server process: with ``--workers``
each worker has its own.
"""

from __future__ import annotations

import threading

import servekit

_store: dict[str, str] = {}
_lock = threading.Lock()


class KeyValue(servekit.StreamRequestHandler):
    """One connection: commands in, one reply line per command out."""

    def handle(self) -> None:
        for raw in self.rfile:
            self.wfile.write(self.execute(raw.decode("utf-8", "replace").strip()) + b"\n")

    @staticmethod
    def execute(line: str) -> bytes:
        command, _, rest = line.partition(" ")
        command = command.upper()
        with _lock:
            if command == "SET":
                key, _, value = rest.partition(" ")
                if not key or not value:
                    return b"ERROR usage: SET <key> <value>"
                _store[key] = value
                return b"OK"
            if command == "GET" and rest:
                value = _store.get(rest)
                return b"NOT_FOUND" if value is None else f"VALUE {value}".encode()
            if command == "DEL" and rest:
                return b"OK" if _store.pop(rest, None) is not None else b"NOT_FOUND"
            if command == "KEYS" and not rest:
                return " ".join(["KEYS", *sorted(_store)]).encode()
        return b"ERROR commands: SET <key> <value>, GET <key>, DEL <key>, KEYS"
