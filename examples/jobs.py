"""A job queue in a SQLite file: each row is an email to send (here, logged).

Serve the queue, then put a job in it from another terminal::

    .venv/bin/servekit serve examples.jobs:SendEmail --listen sqlite:jobs.db
    .venv/bin/servekit queue sqlite:jobs.db enqueue '{"to": "ada@example.com", "subject": "hi"}'

The server logs ``sent 'hi' to ada@example.com (attempt 1)``. A job without a
"to" fails: it is tried again after a second, then two, ... and after five
attempts it is dead (``servekit queue sqlite:jobs.db dead`` lists it with its
error, ``retry ID`` brings it back). From Python, ``servekit.sql.enqueue(
"sqlite:jobs.db", {...})``, in the caller's own transaction if it passes its
connection. See docs/sql.md.
"""

from __future__ import annotations

import logging

import servekit

logger = logging.getLogger("jobs")


class SendEmail(servekit.BaseRequestHandler):
    """One row of the queue: ``self.request`` is a ``servekit.sql.Job``."""

    def handle(self) -> None:
        job = self.request
        message = job.payload
        if not isinstance(message, dict) or "to" not in message:
            raise ValueError(f"job {job.id}: no recipient in {message!r}")
        # A real one would talk to an SMTP server here; if it raised, the row
        # would be tried again later, and it is done only when this returns.
        logger.info(
            "sent %r to %s (attempt %d)", message.get("subject", ""), message["to"], job.attempt
        )
