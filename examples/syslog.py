"""A UDP syslog-style collector: each datagram is one message, logged locally.

    servekit serve examples.syslog:Collector --listen udp://127.0.0.1:5140
    logger --udp --server 127.0.0.1 --port 5140 "disk almost full"

Messages in the BSD syslog form (RFC 3164, ``<PRI>rest``) are logged with
their facility and severity; anything else is logged as it came.
"""

from __future__ import annotations

import logging
import re

import servekit

logger = logging.getLogger("syslog")

FACILITIES = [
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news",
    "uucp", "cron", "authpriv", "ftp", "ntp", "audit", "alert", "clock",
    "local0", "local1", "local2", "local3", "local4", "local5", "local6", "local7",
]  # fmt: skip
SEVERITIES = ["emerg", "alert", "crit", "err", "warning", "notice", "info", "debug"]
#: Severity -> the logging level it is logged at.
LEVELS = (
    [logging.CRITICAL] * 3 + [logging.ERROR, logging.WARNING] + [logging.INFO] * 2 + [logging.DEBUG]
)
_PRI = re.compile(rb"<(\d{1,3})>")


class Collector(servekit.DatagramRequestHandler):
    """Log each datagram; reply nothing (syslog is fire-and-forget)."""

    def handle(self) -> None:
        facility, severity, text = parse(self.packet)
        logger.log(
            LEVELS[severity], "%s.%s from %s: %s",
            facility, SEVERITIES[severity], self.client_address[0], text,
        )  # fmt: skip

    def finish(self) -> None:
        pass  # no reply datagram


def parse(packet: bytes) -> tuple[str, int, str]:
    """(facility name, severity number, message text) of a syslog datagram."""
    match = _PRI.match(packet)
    pri = int(match.group(1)) if match else 13  # user.notice, as RFC 3164 says for no PRI
    if pri > 191:
        pri, match = 13, None
    text = packet[match.end() if match else 0 :].decode("utf-8", "replace").rstrip("\n")
    return FACILITIES[pri >> 3], pri & 7, text
