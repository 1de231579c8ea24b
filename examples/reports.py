"""Quick answers inline, slow reports in a forked child: a handler's ``self.fork()``.

    servekit serve examples.reports:Reports --listen 127.0.0.1:7070
    nc 127.0.0.1 7070        # any netcat; type SQUARE 12, then PRIMES 10000000

One command per line. ``SQUARE n`` is answered at once, in the server's
process. ``PRIMES n`` (count and sum the primes below n) takes seconds of CPU
for a large n: a thread would hold the GIL and slow every other client, so
the handler forks, and the child computes the report and serves the rest of
the connection while the server goes on with the others. servekit counts the
children in ``max_children``, reaps them, and a stop waits for them (see
docs/handoff.md). Replies: ``<number>``, ``primes below <n>: <count>, sum
<sum>`` or ``ERROR <why>``.
"""

from __future__ import annotations

import servekit

#: The largest n PRIMES takes: its sieve holds a byte per number.
MAX_N = 100_000_000


class Reports(servekit.StreamRequestHandler):
    """One connection: quick commands inline, PRIMES in a child process."""

    def handle(self) -> None:
        for raw in self.rfile:
            command, _, argument = raw.decode("utf-8", "replace").strip().partition(" ")
            n = _number(argument)
            if command.upper() == "SQUARE" and n is not None:
                self.wfile.write(b"%d\n" % (n * n))
            elif command.upper() == "PRIMES" and n is not None and 2 <= n <= MAX_N:
                if self.fork():
                    return  # the parent: the child has the connection now
                self.wfile.write(primes_report(n).encode() + b"\n")
            else:
                self.wfile.write(b"ERROR commands: SQUARE <n>, PRIMES <n> (2 <= n <= %d)\n" % MAX_N)


def _number(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def primes_report(n: int) -> str:
    """The count and sum of the primes below ``n`` (a sieve of Eratosthenes)."""
    sieve = bytearray([1]) * n
    sieve[:2] = b"\0\0"
    for i in range(2, int(n**0.5) + 1):
        if sieve[i]:
            sieve[i * i :: i] = bytes(len(range(i * i, n, i)))
    primes = [i for i, is_prime in enumerate(sieve) if is_prime]
    return f"primes below {n}: {len(primes)}, sum {sum(primes)}"
