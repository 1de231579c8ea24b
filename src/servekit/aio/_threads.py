"""The threads an async handler's ``to_thread()`` runs on: bounded, the server's own.

An async handler cannot fork (the child would inherit the event loop, its
transports and every other connection's state); it finishes slow or blocking
work on a thread instead. asyncio's default executor is shared by everything
in the loop and its threads are joined at exit, so a call stuck in a library
would hang the process's exit: these threads are the server's, at most
``max_handler_threads`` run at once (more calls wait their turn), a stop waits
for them within ``shutdown_timeout``, and they are daemons, so one that never
returns is logged and left behind rather than holding the process.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["HandlerThreads"]

logger = logging.getLogger(__name__)

_Call = tuple["Future[Any]", "Callable[..., Any]", tuple[Any, ...], dict[str, Any]]


class HandlerThreads:
    """At most ``limit`` threads, started as calls need them, kept until close()."""

    def __init__(self, limit: int, name: str) -> None:
        self._limit = limit
        self._name = name
        self._lock = threading.Lock()
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._threads = 0
        self._idle = 0
        self._unfinished: set[Future[Any]] = set()
        self._closed = False

    def submit(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Future[Any]:
        future: Future[Any] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the server has stopped: its handler threads take no more calls")
            self._unfinished.add(future)
            if self._idle:
                self._idle -= 1  # that thread takes this call
            elif self._threads < self._limit:
                self._threads += 1
                threading.Thread(
                    target=self._work, name=f"{self._name} handler thread", daemon=True
                ).start()
        self._calls.put((future, fn, args, kwargs))
        return future

    def _work(self) -> None:
        while (call := self._calls.get()) is not None:
            future, fn, args, kwargs = call
            if future.set_running_or_notify_cancel():  # False: its handler was cancelled first
                try:
                    result = fn(*args, **kwargs)
                except (
                    BaseException
                ) as exc:  # the awaiting handler gets it, as from asyncio.to_thread
                    future.set_exception(exc)
                else:
                    future.set_result(result)
            with self._lock:
                self._unfinished.discard(future)
                self._idle += 1

    def close(self) -> set[Future[Any]]:
        """Take no more calls, drop those not started; return those still running."""
        with self._lock:
            self._closed = True
            threads, unfinished = self._threads, set(self._unfinished)
        for _ in range(threads):
            self._calls.put(None)  # after the calls queued: each thread ends when it meets one
        for future in unfinished:
            future.cancel()  # only those not started: a thread cannot be stopped
        return {future for future in unfinished if not future.cancelled()}


async def stop(threads: HandlerThreads, server: Any, seconds: float | None) -> None:
    """Close ``threads`` and wait up to ``seconds`` for the calls still running;
    log those that outlive it (their threads are left to finish)."""
    running = threads.close()
    if not running:
        return
    waits = [asyncio.wrap_future(future) for future in running]
    _, late = await asyncio.wait(waits, timeout=seconds)
    if late:
        logger.error(
            "%s: %d to_thread() call(s) still running after shutdown_timeout=%ss; "
            "their threads are left to finish (a thread cannot be stopped)",
            server, len(late), server.shutdown_timeout,
        )  # fmt: skip
