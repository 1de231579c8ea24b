"""The command line and start-up chores every Python peer shares.

Kept apart so that each peer file holds only its framework's echo server. The
runner starts ``python benchmarks/peers/<name>.py``, so this directory is on
``sys.path`` and ``import _peer`` finds this file.
"""

import argparse
import atexit
import contextlib
import os
import resource
import sys
import tempfile

# The listen backlog for stream servers. The benchmark throws a burst of 1,000
# simultaneous connects at each server, so the frameworks' defaults (5 for
# socketserver, 50 for Twisted, 100 for asyncio, 128 for gevent) would drop SYNs
# and measure retransmit timers instead of the server. The kernel caps it at
# net.core.somaxconn (4096 on current kernels).
BACKLOG = 4096

# The most one read asks for: the usual 64 KiB, and the largest UDP payload.
BUFSIZE = 65536


def setup(name: str, variants: list[str], udp_default: str | None = None) -> argparse.Namespace:
    """Parse the common command line and get the process ready.

    ``--variant`` defaults to ``variants[0]``, or to ``udp_default`` with ``--proto udp``.

    Getting ready means raising the open-files limit and removing a stale Unix socket file.
    """
    parser = argparse.ArgumentParser(prog=name, description=f"{name} echo server")
    parser.add_argument("--proto", choices=["tcp", "udp", "unix"], default="tcp")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 lets the OS pick")
    parser.add_argument("--path", help="Unix socket path (default: a fresh one in the temp dir)")
    parser.add_argument("--variant", choices=variants)
    args = parser.parse_args()
    if args.variant is None:
        args.variant = udp_default if args.proto == "udp" and udp_default else variants[0]
    if args.proto == "unix":
        if args.path is None:
            args.path = os.path.join(tempfile.gettempdir(), f"{name}-{os.getpid()}.sock")
        # A socket file left by an earlier run that was killed would make bind fail;
        # and most frameworks leave theirs behind at exit, so remove it on a clean exit.
        remove_socket_file(args.path)
        atexit.register(remove_socket_file, args.path)
    raise_nofile_limit()
    return args


def remove_socket_file(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def raise_nofile_limit() -> None:
    """Raise the soft open-files limit to the hard one: 10,000 idle connections each need a fd."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def ready(args: argparse.Namespace, port: int | None = None) -> None:
    """Print the one READY line the runner waits for; ``port`` is the bound one."""
    if args.proto == "unix":
        line = f"READY unix {args.path}\n"
    else:
        line = f"READY {args.proto} {args.host} {port}\n"
    sys.stdout.write(line)
    sys.stdout.flush()


def unsupported(reason: str) -> SystemExit:
    """Tell the runner this proto/variant does not exist for the framework.

    Returns the exit (status 3) for the caller to raise: ``raise _peer.unsupported(...)``.
    """
    sys.stdout.write(f"UNSUPPORTED {reason}\n")
    sys.stdout.flush()
    return SystemExit(3)
