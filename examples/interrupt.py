"""A command server whose running command a client interrupts with TCP urgent data.

    servekit serve examples.interrupt:Commands --listen 127.0.0.1:7071

Commands, one per line: ``count N`` sends 1 to N, a line every tenth of a
second, then ``done``; ``sleep N`` waits N seconds, then ``done``. An urgent
byte (``sock.send(b"!", socket.MSG_OOB)``, what telnet's interrupt sends)
stops the command that is running, which answers ``interrupted``; the next
command is answered as usual. An interrupt that comes while no command runs
stops the next one at once. handle_oob is called on servekit's watcher thread
while handle() is busy in a command: it only sets an event (docs/oob.md).
"""

from __future__ import annotations

import threading

import servekit

#: How often a command looks for an interrupt, and count's pace.
STEP = 0.1
#: The largest N a command takes.
MOST = 100_000


class Commands(servekit.StreamRequestHandler):
    """One connection: commands in, their output and ``done``/``interrupted`` out."""

    def setup(self) -> None:
        self.interrupt = threading.Event()  # before super().setup(): the hook may run from then
        super().setup()

    def handle_oob(self, data: bytes) -> None:
        self.interrupt.set()

    def handle(self) -> None:
        for raw in self.rfile:
            command, _, argument = raw.decode("utf-8", "replace").strip().partition(" ")
            if command not in ("count", "sleep") or not argument.isdigit():
                self.wfile.write(b"ERROR commands: count <n>, sleep <seconds>\n")
                continue
            n = min(int(argument), MOST)
            finished = self.count(n) if command == "count" else self.sleep(n)
            self.interrupt.clear()  # spent; before the answer, after which the next may come
            self.wfile.write(b"done\n" if finished else b"interrupted\n")

    def count(self, n: int) -> bool:
        for i in range(1, n + 1):
            if self.interrupt.wait(STEP):
                return False
            self.wfile.write(b"%d\n" % i)
        return True

    def sleep(self, seconds: int) -> bool:
        return not self.interrupt.wait(seconds)
