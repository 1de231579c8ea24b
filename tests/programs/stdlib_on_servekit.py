"""Run a stdlib server module on servekit, with a real client, and print what came back.

Usage: stdlib_on_servekit.py http|xmlrpc|wsgiref|logging

servekit is put in sys.modules['socketserver'] before the module is imported,
which is how an application swaps it in without changing the module.
"""

from __future__ import annotations

import json
import sys
import threading
from typing import Any

import servekit

sys.modules["socketserver"] = servekit


def _serve(server: Any) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return thread


def _stop(server: Any, thread: threading.Thread) -> None:
    server.shutdown()
    thread.join(10)
    server.server_close()


def run_http() -> dict[str, Any]:
    import http.server
    import urllib.request

    assert http.server.socketserver is servekit

    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = f"hello {self.path}".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    results = {}
    for cls in (http.server.HTTPServer, http.server.ThreadingHTTPServer):
        server = cls(("127.0.0.1", 0), Hello)
        thread = _serve(server)
        url = f"http://127.0.0.1:{server.server_address[1]}/x"
        with urllib.request.urlopen(url, timeout=10) as reply:
            results[cls.__name__] = [reply.status, reply.read().decode()]
        _stop(server, thread)
    return results


def run_xmlrpc() -> dict[str, Any]:
    import xmlrpc.client
    import xmlrpc.server

    server = xmlrpc.server.SimpleXMLRPCServer(("127.0.0.1", 0), logRequests=False)
    server.register_function(lambda a, b: a + b, "add")
    server.register_introspection_functions()
    thread = _serve(server)
    proxy = xmlrpc.client.ServerProxy(f"http://127.0.0.1:{server.server_address[1]}/")
    try:
        result = {"add": proxy.add(2, 3), "methods": "add" in proxy.system.listMethods()}
    finally:
        proxy("close")()
        _stop(server, thread)
    return result


def run_wsgiref() -> dict[str, Any]:
    import urllib.request
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [f"wsgi {environ['PATH_INFO']}".encode()]

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = make_server("127.0.0.1", 0, app, handler_class=Quiet)
    thread = _serve(server)
    url = f"http://127.0.0.1:{server.server_address[1]}/path"
    with urllib.request.urlopen(url, timeout=10) as reply:
        result = {"status": reply.status, "body": reply.read().decode()}
    _stop(server, thread)
    return result


def run_logging() -> dict[str, Any]:
    import logging
    import logging.config
    import socket
    import struct

    applied = threading.Event()

    def verify(data: bytes) -> bytes:
        applied.set()
        return data

    with socket.socket() as probe:  # listen() takes a port, not port 0: find a free one
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    listener = logging.config.listen(port, verify=verify)
    listener.start()
    listener.ready.wait(10)
    config = json.dumps({
        "version": 1,
        "loggers": {"compat.target": {"level": "WARNING"}},
    }).encode()  # fmt: skip
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(struct.pack(">L", len(config)) + config)
    applied.wait(10)
    logging.config.stopListening()
    listener.join(10)
    level = logging.getLogger("compat.target").level
    return {"applied": applied.is_set(), "level": logging.getLevelName(level)}


if __name__ == "__main__":
    result = globals()["run_" + sys.argv[1]]()
    print(json.dumps(result))
