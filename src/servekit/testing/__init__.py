"""servekit.testing: test a servekit handler or server the way it runs.

- ``serving(Handler_or_server)``: a context manager that serves on a free
  loopback port (or a Unix socket in a temporary directory) in a background
  thread, yields a ``Serving`` (the server, its address, ``connect()`` and
  ``request()``), and stops it at the end, bounded, even when the block raised.
- ``run_handler(Handler, data)``: one request of a handler against in-memory
  bytes, with no server listening: what the handler wrote, as bytes. The
  handler sees a real (not listening) server of the kind ``make_server`` would
  make, with the same limits.
- ``no_handler_errors()``: fails (at its end) when a handler raised while it
  was active, with the traceback; ``expect()`` declares the errors a test provokes.
- A pytest plugin (``servekit.testing.pytest_plugin``, loaded automatically
  once servekit is installed): the fixtures ``servekit_serving`` and
  ``servekit_handler_errors``.

The guide with examples: docs/testing.md. Only the pytest plugin imports pytest.
"""

from __future__ import annotations

from servekit.testing._errors import HandlerErrors, UnexpectedHandlerError, no_handler_errors
from servekit.testing._run import HandlerTimeout, run_handler
from servekit.testing._serving import (
    WAIT,
    Servable,
    ServerDidNotStop,
    Serving,
    ServingFactory,
    serving,
)

__all__ = [
    "WAIT",
    "HandlerErrors",
    "HandlerTimeout",
    "Servable",
    "ServerDidNotStop",
    "Serving",
    "ServingFactory",
    "UnexpectedHandlerError",
    "no_handler_errors",
    "run_handler",
    "serving",
]
