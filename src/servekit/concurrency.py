"""How requests run: mixins over any request source, and their named combinations.

Put the mixin first: ``class MyServer(ThreadingMixIn, TCPServer)``. The
mixins override ``process_request`` (where a request is handed off) and
``server_close`` (where the hand-offs are waited for), nothing else.

- ``ThreadingMixIn``: a new thread per request (the stdlib's semantics).
- ``ForkingMixIn``: a new child process per request, at most ``max_children``
  at once (the stdlib's semantics).
"""

from __future__ import annotations

import os
import socket
import threading
from typing import TYPE_CHECKING, Any

from servekit.sockets import TCPServer, UDPServer

if TYPE_CHECKING:
    from servekit.core import BaseServer

    _MixinBase = BaseServer
else:
    _MixinBase = object

__all__ = ["ThreadingMixIn", "ThreadingTCPServer", "ThreadingUDPServer"]


if hasattr(os, "fork"):

    class ForkingMixIn(_MixinBase):
        """Mix-in class to handle each request in a new process.

        Class variables that may be overridden:

        - timeout: seconds of inactivity after which zombies are collected
        - max_children: at most this many children at once; the loop waits
          for one to exit before forking more
        - block_on_close: server_close() waits for all children to exit
        """

        timeout: float | None = 300
        active_children: set[int] | None = None
        max_children = 40
        # If true, server_close() waits until all child processes complete.
        block_on_close = True

        def collect_children(self, *, blocking: bool = False) -> None:
            """Internal routine to wait for children that have exited."""
            if self.active_children is None:
                return

            # If we're above the max number of children, wait and reap them
            # until we go back below threshold. waitpid(-1) collects children
            # in as many calls as there are dead ones, at the cost of maybe
            # reaping children we did not spawn, hence only above max_children.
            while len(self.active_children) >= self.max_children:
                try:
                    pid, _ = os.waitpid(-1, 0)
                    self.active_children.discard(pid)
                except ChildProcessError:
                    # we don't have any children, we're done
                    self.active_children.clear()
                except OSError:
                    break

            # Now reap all defunct children.
            for pid in self.active_children.copy():
                try:
                    flags = 0 if blocking else os.WNOHANG
                    pid, _ = os.waitpid(pid, flags)
                    # if the child hasn't exited yet, pid will be 0 and ignored
                    # by discard() below
                    self.active_children.discard(pid)
                except ChildProcessError:
                    # someone else reaped it
                    self.active_children.discard(pid)
                except OSError:
                    pass

        def handle_timeout(self) -> None:
            """Wait for zombies after self.timeout seconds of inactivity.

            May be extended, do not override.
            """
            self.collect_children()

        def service_actions(self) -> None:
            """Collect the zombie child processes regularly in the ForkingMixIn.

            service_actions is called in the BaseServer's serve_forever loop.
            """
            self.collect_children()

        def process_request(self, request: Any, client_address: Any) -> None:
            """Fork a new subprocess to process the request."""
            pid = os.fork()
            if pid:
                # Parent process
                if self.active_children is None:
                    self.active_children = set()
                self.active_children.add(pid)
                self.close_request(request)
                return
            # Child process. This must never return, hence os._exit()!
            status = 1
            try:
                self.finish_request(request, client_address)
                status = 0
            except Exception:
                self.handle_error(request, client_address)
            finally:
                try:
                    self.shutdown_request(request)
                finally:
                    os._exit(status)

        def server_close(self) -> None:
            super().server_close()
            self.collect_children(blocking=self.block_on_close)

    __all__ += ["ForkingMixIn", "ForkingTCPServer", "ForkingUDPServer"]


class _Threads(list[threading.Thread]):
    """Joinable list of all non-daemon threads."""

    def append(self, thread: threading.Thread) -> None:
        self.reap()
        if thread.daemon:
            return
        super().append(thread)

    def pop_all(self) -> list[threading.Thread]:
        self[:], result = [], self[:]
        return result

    def join(self) -> None:
        for thread in self.pop_all():
            thread.join()

    def reap(self) -> None:
        self[:] = (thread for thread in self if thread.is_alive())


class _NoThreads:
    """Degenerate version of _Threads."""

    def append(self, thread: threading.Thread) -> None:
        pass

    def join(self) -> None:
        pass


class ThreadingMixIn(_MixinBase):
    """Mix-in class to handle each request in a new thread.

    Class variables that may be overridden:

    - daemon_threads: request threads do not keep the process alive
    - block_on_close: server_close() waits for non-daemon request threads
    """

    # Decides how threads will act upon termination of the main process
    daemon_threads = False
    # If true, server_close() waits until all non-daemonic threads terminate.
    block_on_close = True
    # Threads object used by server_close() to wait for all threads completion.
    _threads: _Threads | _NoThreads = _NoThreads()

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """Same as in BaseServer but as a thread.

        In addition, exception handling is done here.
        """
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Start a new thread to process the request."""
        if self.block_on_close:
            vars(self).setdefault("_threads", _Threads())
        t = threading.Thread(target=self.process_request_thread, args=(request, client_address))
        t.daemon = self.daemon_threads
        self._threads.append(t)
        t.start()

    def server_close(self) -> None:
        super().server_close()
        self._threads.join()


if hasattr(os, "fork"):

    class ForkingUDPServer(ForkingMixIn, UDPServer):
        pass

    class ForkingTCPServer(ForkingMixIn, TCPServer):
        pass


class ThreadingUDPServer(ThreadingMixIn, UDPServer):
    pass


class ThreadingTCPServer(ThreadingMixIn, TCPServer):
    pass


if hasattr(socket, "AF_UNIX"):
    from servekit.sockets import UnixDatagramServer, UnixStreamServer

    class ThreadingUnixStreamServer(ThreadingMixIn, UnixStreamServer):
        pass

    class ThreadingUnixDatagramServer(ThreadingMixIn, UnixDatagramServer):
        pass

    __all__ += ["ThreadingUnixDatagramServer", "ThreadingUnixStreamServer"]

    if hasattr(os, "fork"):

        class ForkingUnixStreamServer(ForkingMixIn, UnixStreamServer):
            pass

        class ForkingUnixDatagramServer(ForkingMixIn, UnixDatagramServer):
            pass

        __all__ += ["ForkingUnixDatagramServer", "ForkingUnixStreamServer"]
