"""systemd's service notifications (sd_notify(3)), with the standard library alone.

Under ``Type=notify`` (or ``notify-reload``) systemd passes ``NOTIFY_SOCKET``, a
Unix datagram socket (``@`` starts an abstract name), and waits for
``READY=1`` before it counts the service as started: servekit sends it once
every address is served (under ``--workers``, once the first workers are
serving). Around a SIGHUP it sends ``RELOADING=1`` (with ``MONOTONIC_USEC``, as
``Type=notify-reload`` asks) and ``READY=1`` again when the reload is done;
``STOPPING=1`` when a stop begins. With ``WatchdogSec=`` systemd passes
``WATCHDOG_USEC`` and kills the service unless ``WATCHDOG=1`` comes at least
that often: the process's main loop sends it every half period (the runner's
while every serving loop is alive; the prefork supervisor's).

As sd_notify does with ``unset_environment``, the variables are taken out of
the environment once read: a worker or a child process must not speak for the
service. Without ``NOTIFY_SOCKET`` every call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import MutableMapping

__all__ = ["Notifier"]

logger = logging.getLogger("servekit.systemd")


class Notifier:
    """The service's line to systemd; inert when systemd did not open one."""

    def __init__(self, address: str | None, watchdog: float | None = None) -> None:
        self._address = address
        self.watchdog_interval = watchdog  # seconds; None: no watchdog
        self._last_beat = 0.0

    @classmethod
    def from_environment(cls, environ: MutableMapping[str, str] | None = None) -> Notifier:
        """Read (and remove) NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID."""
        env = os.environ if environ is None else environ
        address = env.pop("NOTIFY_SOCKET", None) or None
        usec = env.pop("WATCHDOG_USEC", None)
        pid = env.pop("WATCHDOG_PID", None)
        ours = pid is None or (pid.isdigit() and int(pid) == os.getpid())
        period = int(usec) if usec is not None and usec.isdigit() else 0
        return cls(address, period / 1e6 if period > 0 and ours else None)

    @property
    def active(self) -> bool:
        return self._address is not None

    def send(self, *fields: str) -> None:
        """One notification, its fields one per line; a failure is logged, never raised."""
        if self._address is None:
            return
        target = "\0" + self._address[1:] if self._address.startswith("@") else self._address
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto("\n".join(fields).encode(), target)
        except OSError as exc:
            logger.warning("cannot notify systemd at %s: %s", self._address, exc)

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def reloading(self) -> None:
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000  # notify-reload wants it
        self.send("RELOADING=1", f"MONOTONIC_USEC={now}")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping")

    def beat(self) -> None:
        """From a loop that looks at least every quarter period (the runner's, the
        prefork supervisor's): WATCHDOG=1 once half a period has passed since the
        last. A loop that stops looking stops the pings, and systemd restarts it."""
        interval = self.watchdog_interval
        if self._address is None or interval is None:
            return
        now = time.monotonic()
        if now - self._last_beat >= interval / 2:
            self._last_beat = now
            self.send("WATCHDOG=1")
