"""servekit's pytest fixtures, loaded by pytest through the ``pytest11`` entry point
``servekit`` once servekit is installed (``-p no:servekit`` turns them off).

- ``servekit_serving``: a factory, ``servekit_serving(Handler_or_server,
  address=None, **make_server_options) -> Serving``: each server it starts
  runs until the test ends (see ``servekit.testing.serving``);
- ``servekit_handler_errors``: the test fails if a handler raised an error it
  did not declare with ``servekit_handler_errors.expect(...)`` (see
  ``servekit.testing.no_handler_errors``). Servers started by
  ``servekit_serving`` are watched this way, and stopped before the check.

This is the one module of servekit that imports pytest, which servekit does
not depend on.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import pytest

from servekit.testing import HandlerErrors, Serving, ServingFactory, no_handler_errors, serving

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["servekit_handler_errors", "servekit_serving"]


@pytest.fixture
def servekit_handler_errors() -> Iterator[HandlerErrors]:
    """Fail the test (at teardown) if a handler error was logged that it did not
    expect; ``servekit_handler_errors.expect(SomeError)`` allows one."""
    with no_handler_errors() as errors:
        yield errors


@pytest.fixture
def servekit_serving(servekit_handler_errors: HandlerErrors) -> Iterator[ServingFactory]:
    """``servekit_serving(Handler)``: a server on a free loopback port (or
    ``address``), running in a thread until the test ends; returns its ``Serving``."""
    with contextlib.ExitStack() as servers:

        def start(
            server_or_handler: Any, address: str | None = None, **options: Any
        ) -> Serving[Any]:
            return servers.enter_context(serving(server_or_handler, address, **options))

        yield start
