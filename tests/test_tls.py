"""TLS: the handshake runs in the worker, bounded; a bad client fails alone."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path
from time import monotonic
from typing import Any

import pytest

import servekit
import servekit.aio
from tests.conftest import WAIT, LogWatcher, _openssl, connect, recv_until, serving

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


class Echo(servekit.StreamRequestHandler):
    def handle(self) -> None:
        peer = self.request.getpeercert()
        who = (
            b"anonymous" if not peer else dict(x[0] for x in peer["subject"])["commonName"].encode()
        )
        # One line, not "until EOF": a forked child holds a copy of the
        # test's client socket, so it would never see the client close.
        self.wfile.write(who + b" " + self.rfile.readline())


def _client_context(pki: dict[str, Path], cert: str | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki["ca_pem"]))
    if cert is not None:
        context.load_cert_chain(pki[f"{cert}_pem"], pki[f"{cert}_key"])
    return context


def _tls_round_trip(address: Any, context: ssl.SSLContext, line: bytes = b"hi\n") -> bytes:
    with connect(address) as raw, context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        tls.sendall(line)
        return recv_until(tls)


def test_silent_client_does_not_block_others(
    pki: dict[str, Path], servekit_log: LogWatcher
) -> None:
    server = servekit.make_server(
        "127.0.0.1:0", Echo, certfile=pki["server_pem"], keyfile=pki["server_key"],
        handshake_timeout=0.5,
    )  # fmt: skip
    with serving(server):
        silent = connect(server.server_address)  # connects, never says hello
        for i in range(5):
            line = b"%d\n" % i
            assert _tls_round_trip(server.server_address, _client_context(pki), line) == (
                b"anonymous " + line
            )
        assert servekit_log.wait_for("TLS handshake not complete within handshake_timeout")
        assert silent.recv(10) == b""  # the server gave up on it
        silent.close()
    assert server.stats.limits == {"handshake_timeout": 1}


def test_client_certificates(pki: dict[str, Path], servekit_log: LogWatcher) -> None:
    server = servekit.make_server(
        "127.0.0.1:0", Echo, certfile=pki["server_pem"], keyfile=pki["server_key"],
        cafile=pki["ca_pem"],
    )  # fmt: skip
    with serving(server):
        # No certificate: that connection fails, alone.
        with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
            _tls_round_trip(server.server_address, _client_context(pki))
        assert servekit_log.wait_for("TLS handshake failed")
        # A certificate from the right authority: served, and the handler sees who it is.
        reply = _tls_round_trip(server.server_address, _client_context(pki, "client"))
        assert reply == b"client hi\n"
    assert server.stats.limits == {"tls_handshake": 1}


def test_verify_request_sees_the_peer_certificate(pki: dict[str, Path]) -> None:
    seen = []

    class Checking(servekit.ThreadPoolTCPServer):
        def verify_request(self, request: Any, client_address: Any) -> bool:
            seen.append(isinstance(request, ssl.SSLSocket) and request.getpeercert() is not None)
            return True

    server = Checking(("127.0.0.1", 0), Echo)
    server.ssl_context = servekit.tls.server_context(
        pki["server_pem"], pki["server_key"], pki["ca_pem"]
    )
    with serving(server):
        reply = _tls_round_trip(server.server_address, _client_context(pki, "client"))
    assert reply == b"client hi\n"
    assert seen == [True]


def test_user_wrapped_listening_socket_handshakes_in_the_worker(pki: dict[str, Path]) -> None:
    """As http.server.HTTPSServer (3.14) does: wrap server.socket after binding."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki["server_pem"], pki["server_key"])
    server = servekit.ThreadingTCPServer(("127.0.0.1", 0), Echo)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.handshake_timeout = 0.5
    with serving(server):
        silent = connect(server.server_address)
        assert _tls_round_trip(server.server_address, _client_context(pki)) == b"anonymous hi\n"
        assert silent.recv(10) == b""
        silent.close()


def test_tls_for_datagrams_is_refused(pki: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="need a stream socket"):
        servekit.make_server("udp://127.0.0.1:0", Echo, certfile=pki["server_pem"],
                             keyfile=pki["server_key"])  # fmt: skip


def test_keyfile_without_certfile_is_refused() -> None:
    with pytest.raises(ValueError, match="need certfile"):
        servekit.make_server("127.0.0.1:0", Echo, keyfile="x.key")


def test_plain_client_to_tls_server_fails_alone(pki: dict[str, Path]) -> None:
    server = servekit.make_server(
        "127.0.0.1:0", Echo, certfile=pki["server_pem"], keyfile=pki["server_key"]
    )
    with serving(server):
        with connect(server.server_address) as plain:
            plain.sendall(b"GET / HTTP/1.0\r\n\r\n")
            try:
                plain.recv(100)
            except ConnectionResetError:
                pass
        assert _tls_round_trip(server.server_address, _client_context(pki)) == b"anonymous hi\n"
    assert server.stats.limits == {"tls_handshake": 1}


def test_connections_in_their_handshake_count_toward_max_connections(
    pki: dict[str, Path], servekit_log: LogWatcher
) -> None:
    server = servekit.make_server(
        "127.0.0.1:0", Echo, certfile=pki["server_pem"], keyfile=pki["server_key"],
        max_connections=2, handshake_timeout=5,
    )  # fmt: skip
    with serving(server):
        silent = [connect(server.server_address) for _ in range(3)]
        assert servekit_log.wait_for("max_connections=2 reached")
        assert server.stats.connections_total == 2
        assert server.stats.connections_open == 2
        for sock in silent:
            sock.close()


# -- failed handshakes leave nothing behind, on every model ------------------------------


class AsyncEcho(servekit.aio.AsyncStreamRequestHandler):
    async def handle(self) -> None:
        self.write(b"anonymous " + await self.readline())
        await self.drain()


@pytest.fixture(params=["sync", "threads", "pool", "fork", "async-asyncio", "async-uvloop"])
def concurrency(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    model, _, loop = request.param.partition("-")
    if loop:
        if loop == "uvloop":
            pytest.importorskip("uvloop", reason="uvloop is in the dev extra; not installed here")
        monkeypatch.setattr(servekit.aio.AsyncServerMixIn, "loop", loop)
    return model


def _client_hello(pki: dict[str, Path]) -> bytes:
    """The bytes a client's handshake starts with (its ClientHello)."""
    tls = _client_context(pki).wrap_bio(
        ssl.MemoryBIO(), outgoing := ssl.MemoryBIO(), server_hostname="127.0.0.1"
    )
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def _read_to_end(sock: socket.socket) -> bytes:
    """What the server sends until it closes the connection (a reset counts as a close)."""
    received = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(4096):
            received += chunk
    return received


FAILED_EACH_WAY = 3


def test_failed_handshakes_leave_no_connection_behind(
    concurrency: str, pki: dict[str, Path]
) -> None:
    """Garbage, a client that hangs up mid-handshake, and one that says nothing until
    handshake_timeout: each fails its connection, which is then closed and forgotten
    (connections_open back to 0), and counted under stats.limits, not as a request."""
    handler: Any = AsyncEcho if concurrency == "async" else Echo
    server = servekit.make_server(
        "127.0.0.1:0", handler, concurrency=concurrency, certfile=pki["server_pem"],
        keyfile=pki["server_key"], handshake_timeout=0.3,
    )  # fmt: skip
    hello = _client_hello(pki)
    with serving(server):
        address = server.server_address
        for _ in range(FAILED_EACH_WAY):
            with connect(address) as garbage:
                garbage.sendall(b"GET / HTTP/1.0\r\n\r\n")
                _read_to_end(garbage)
            with connect(address) as hangs_up:
                hangs_up.sendall(hello[: len(hello) // 2])
                hangs_up.shutdown(socket.SHUT_WR)
                _read_to_end(hangs_up)
            with connect(address) as silent:
                assert _read_to_end(silent) == b""
        assert _tls_round_trip(address, _client_context(pki)) == b"anonymous hi\n"
        deadline = monotonic() + WAIT
        while server.stats.connections_open and monotonic() < deadline:
            threading.Event().wait(0.01)  # polls the server's state: no event says "forgotten"
        assert server.stats.connections_open == 0
    stats = server.stats
    assert stats.connections_open == 0
    assert server._connections.snapshot() == []
    assert stats.connections_total == 3 * FAILED_EACH_WAY + 1
    if concurrency != "fork":  # a child counts its limits in its own memory
        assert stats.requests == 1
        assert stats.limits == {
            "tls_handshake": 2 * FAILED_EACH_WAY, "handshake_timeout": FAILED_EACH_WAY,
        }  # fmt: skip
        assert stats.errors == 0


def test_a_connection_verify_request_refuses_after_the_handshake_is_no_request(
    concurrency: str, pki: dict[str, Path]
) -> None:
    """As on the async engine, and as without TLS, where verify_request() runs in the loop."""
    if concurrency == "fork":
        pytest.skip("a child counts in its own memory")
    handler: Any = AsyncEcho if concurrency == "async" else Echo
    server = servekit.make_server(
        "127.0.0.1:0", handler, concurrency=concurrency, certfile=pki["server_pem"],
        keyfile=pki["server_key"],
    )  # fmt: skip
    server.verify_request = lambda request, address: server.stats.connections_total == 2
    with serving(server):
        with contextlib.suppress(ssl.SSLError, ConnectionResetError, BrokenPipeError):
            assert _tls_round_trip(server.server_address, _client_context(pki)) == b""  # refused
        assert _tls_round_trip(server.server_address, _client_context(pki)) == b"anonymous hi\n"
    assert (server.stats.connections_total, server.stats.requests) == (2, 1)
    assert server.stats.connections_open == 0


# -- TLS files: every failure names the file, the problem and the fix ---------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A self-signed certificate and its key, a key of another certificate, the first key
    encrypted (PKCS#8 and OpenSSL's older form), the certificate in DER, and junk."""
    d = tmp_path_factory.mktemp("tlsfiles")
    for name in ("cert", "other"):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                 "-keyout", f"{name}.key", "-out", f"{name}.pem", "-subj", f"/CN={name}",
                 cwd=d)  # fmt: skip
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-out", "ec.key", cwd=d)  # fmt: skip
    _openssl("pkey", "-in", "cert.key", "-aes256", "-passout", "pass:secret",
             "-out", "encrypted.key", cwd=d)  # fmt: skip
    _openssl("rsa", "-in", "cert.key", "-aes256", "-passout", "pass:secret", "-traditional",
             "-out", "encrypted_old.key", cwd=d)  # fmt: skip
    _openssl("x509", "-in", "cert.pem", "-outform", "der", "-out", "cert.der", cwd=d)
    (d / "junk.txt").write_text("not a certificate\n")
    (d / "both.pem").write_bytes((d / "cert.pem").read_bytes() + (d / "cert.key").read_bytes())
    return {p.name: p for p in d.iterdir()}


def _tls_error(*args: Any, **kwargs: Any) -> servekit.tls.TLSFileError:
    with pytest.raises(servekit.tls.TLSFileError) as failed:
        servekit.tls.server_context(*args, **kwargs)
    return failed.value


@pytest.mark.parametrize(
    ("certfile", "keyfile", "cafile", "message"),
    [
        ("missing.pem", "cert.key", None,
         r"^certfile '.*missing\.pem' does not exist: give the path of the server's certificate"),
        ("cert.pem", "missing.key", None,
         r"^keyfile '.*missing\.key' does not exist: give the path of the certificate's private"),
        ("cert.pem", "cert.key", "missing_ca.pem",
         r"^cafile '.*missing_ca\.pem' does not exist: give the path of the signers of client"),
    ],
)  # fmt: skip
def test_a_missing_file_is_named(
    tls_files: dict[str, Path], certfile: str, keyfile: str, cafile: str | None, message: str
) -> None:
    folder = tls_files["cert.pem"].parent
    error = _tls_error(
        folder / certfile, folder / keyfile, None if cafile is None else folder / cafile
    )
    assert isinstance(error, FileNotFoundError)  # what ssl raised, still
    assert error.errno == errno.ENOENT
    assert re.search(message, str(error)), str(error)
    missing = next(name for name in (certfile, keyfile, cafile) if name and "missing" in name)
    assert Path(error.filename) == folder / missing


@pytest.mark.parametrize(
    ("certfile", "keyfile", "cafile", "at_fault", "message"),
    [
        ("cert.pem", None, None, "cert.pem",
         "holds a certificate but no private key: pass keyfile (--keyfile)"),
        ("cert.pem", "other.key", None, "other.key",
         "the private key does not match the certificate in certfile"),
        ("cert.pem", "ec.key", None, "ec.key",
         "the private key does not match the certificate in certfile"),
        ("cert.der", "cert.key", None, "cert.der",
         "holds no PEM certificate (no '-----BEGIN CERTIFICATE-----' line)"),
        ("junk.txt", "cert.key", None, "junk.txt", "holds no PEM certificate"),
        ("cert.pem", "junk.txt", None, "junk.txt", "holds no PEM private key"),
        ("cert.pem", "cert.pem", None, "cert.pem", "holds no PEM private key"),
        ("cert.pem", "cert.key", "junk.txt", "junk.txt",
         "holds no PEM certificate: give the certificates of the authorities"),
        ("cert.pem", "cert.key", "cert.key", "cert.key", "holds no PEM certificate"),
        ("cert.pem", "encrypted.key", None, "encrypted.key",
         "the private key is encrypted and needs a password: give keyfile_password"),
        ("cert.pem", "encrypted_old.key", None, "encrypted_old.key",
         "the private key is encrypted and needs a password"),
        (".", "cert.key", None, ".", "is a directory"),
    ],
)  # fmt: skip
def test_an_unusable_file_is_named_with_its_problem(
    tls_files: dict[str, Path],
    certfile: str, keyfile: str | None, cafile: str | None, at_fault: str, message: str,
) -> None:  # fmt: skip
    folder = tls_files["cert.pem"].parent
    error = _tls_error(
        folder / certfile,
        None if keyfile is None else folder / keyfile,
        None if cafile is None else folder / cafile,
    )
    assert isinstance(error, ValueError)
    assert Path(error.filename) == folder / at_fault
    assert f"{os.fspath(folder / at_fault)!r}" in str(error)
    assert message in str(error)


def test_an_encrypted_key_loads_with_its_password(tls_files: dict[str, Path]) -> None:
    servekit.tls.server_context(
        tls_files["cert.pem"], tls_files["encrypted.key"], password="secret"
    )
    error = _tls_error(tls_files["cert.pem"], tls_files["encrypted.key"], password="wrong")
    assert "the password does not decrypt the private key" in str(error)
    servekit.tls.server_context(tls_files["both.pem"])  # the key in the certificate's file


def test_an_unreadable_file_is_named(tls_files: dict[str, Path], sock_dir: Path) -> None:
    """A key the server's user may not read (sock_dir: a folder anyone may enter)."""
    sock_dir.chmod(0o755)
    cert, key = sock_dir / "server.pem", sock_dir / "server.key"
    cert.write_bytes(tls_files["cert.pem"].read_bytes())
    key.write_bytes(tls_files["cert.key"].read_bytes())
    key.chmod(0)
    if os.geteuid() != 0:
        message = str(_tls_error(cert, key))
    else:  # root reads anything: ask as nobody, in a child
        readable, writable = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            status = 1
            try:
                os.setuid(65534)
                servekit.tls.server_context(cert, key)
            except PermissionError as exc:
                os.write(writable, str(exc).encode())
                status = 0
            finally:
                os._exit(status)
        os.close(writable)
        with os.fdopen(readable, "rb") as pipe:
            message = pipe.read().decode()
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0, message
    assert message.startswith(f"keyfile {os.fspath(key)!r} cannot be read: permission denied;")
    assert "let the user this server runs as (uid " in message


def test_the_command_line_says_which_file_in_one_line(tls_files: dict[str, Path]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "servekit", "serve", "examples.echo:LineEcho",
         "--listen", "127.0.0.1:0", "--certfile", str(tls_files["cert.pem"])],
        capture_output=True, text=True, timeout=WAIT * 3, cwd=Path(__file__).parent.parent,
    )  # fmt: skip
    assert done.returncode == 2
    [line] = done.stderr.splitlines()
    assert line.startswith("servekit: error: cannot serve 127.0.0.1:0: certfile ")
    assert "holds a certificate but no private key: pass keyfile (--keyfile)" in line
