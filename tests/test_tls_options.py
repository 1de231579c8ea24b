"""TLS options (issue 17): the oldest version, ciphers, client certificates optional or
required, an encrypted key's password, and the certificate reloaded on SIGHUP."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import servekit
from tests.conftest import WAIT, _openssl, connect, recv_until, running, serving

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")

ROOT = Path(__file__).parent.parent
SERVEKIT = str(Path(sys.executable).parent / "servekit")


class Who(servekit.StreamRequestHandler):
    """Answers a line with the client certificate's common name, or 'anonymous'."""

    def handle(self) -> None:
        peer = self.request.getpeercert()
        who = "anonymous" if not peer else dict(x[0] for x in peer["subject"])["commonName"]
        self.wfile.write(who.encode() + b" " + self.rfile.readline())


def _client(pki: dict[str, Path], cert: str | None = None, **settings: Any) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki["ca_pem"]))
    if cert is not None:
        context.load_cert_chain(pki[f"{cert}_pem"], pki[f"{cert}_key"])
    for name, value in settings.items():
        if name == "ciphers":
            context.set_ciphers(value)
        else:
            setattr(context, name, value)
    return context


def _ask(address: Any, context: ssl.SSLContext) -> tuple[bytes, ssl.SSLSocket]:
    raw = connect(address)
    tls = context.wrap_socket(raw, server_hostname="127.0.0.1")
    tls.sendall(b"hi\n")
    return recv_until(tls), tls


def _refused(address: Any, context: ssl.SSLContext) -> None:
    """The handshake fails; under TLS 1.3 the client may learn it only at its first read."""
    try:
        reply, tls = _ask(address, context)
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        return
    tls.close()
    assert reply == b"", "the server took a connection it should have refused"


def _make(pki: dict[str, Path], **options: Any) -> Any:
    return servekit.make_server(
        "127.0.0.1:0", Who, certfile=pki["server_pem"], keyfile=pki["server_key"], **options
    )


def test_client_certificates_optional_or_required(pki: dict[str, Path]) -> None:
    optional = _make(pki, cafile=pki["ca_pem"], client_cert="optional")
    with serving(optional):
        reply, tls = _ask(optional.server_address, _client(pki))
        tls.close()
        assert reply == b"anonymous hi\n"
        reply, tls = _ask(optional.server_address, _client(pki, "client"))
        tls.close()
        assert reply == b"client hi\n"
    required = _make(pki, cafile=pki["ca_pem"])  # the default, as before
    with serving(required):
        _refused(required.server_address, _client(pki))
        reply, tls = _ask(required.server_address, _client(pki, "client"))
        tls.close()
        assert reply == b"client hi\n"


def test_the_oldest_version_accepted(pki: dict[str, Path]) -> None:
    server = _make(pki, tls_min_version="1.3")
    with serving(server):
        _refused(server.server_address, _client(pki, maximum_version=ssl.TLSVersion.TLSv1_2))
        reply, tls = _ask(server.server_address, _client(pki))
        assert (reply, tls.version()) == (b"anonymous hi\n", "TLSv1.3")
        tls.close()


def test_the_ciphers_of_tls_1_2(pki: dict[str, Path]) -> None:
    server = _make(pki, tls_ciphers="ECDHE-RSA-AES256-GCM-SHA384")
    tls12 = {"maximum_version": ssl.TLSVersion.TLSv1_2}
    with serving(server):
        _refused(
            server.server_address, _client(pki, ciphers="ECDHE-RSA-AES128-GCM-SHA256", **tls12)
        )
        _reply, tls = _ask(server.server_address, _client(pki, **tls12))
        assert tls.cipher()[0] == "ECDHE-RSA-AES256-GCM-SHA384"
        tls.close()


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"tls_min_version": "1.1"}, ValueError, "tls_min_version must be '1.2' or '1.3'"),
        ({"client_cert": "optional"}, ValueError, "client_cert needs cafile"),
        ({"client_cert": "sometimes", "cafile": "x"}, ValueError, "client_cert must be"),
        ({"tls_ciphers": "NO-SUCH-CIPHER"}, ValueError, "names no cipher OpenSSL has"),
        ({"tls_ciphers": 5}, TypeError, "tls_ciphers must be a string"),
    ],
)
def test_a_wrong_tls_option_is_refused_before_binding(
    pki: dict[str, Path], options: dict[str, Any], error: type[Exception], message: str
) -> None:
    if "cafile" in options:
        options["cafile"] = pki["ca_pem"]
    with pytest.raises(error, match=message):
        _make(pki, **options)


def test_tls_options_need_certfile() -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    with pytest.raises(ValueError, match=r"tls_min_version need certfile .* set them on that"):
        servekit.make_server("127.0.0.1:0", Who, ssl_context=context, tls_min_version="1.3")


@pytest.fixture(scope="module")
def encrypted(pki: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("encrypted")
    _openssl("pkey", "-in", str(pki["server_key"]), "-aes256", "-passout", "pass:s3cret",
             "-out", "server.key", cwd=folder)  # fmt: skip
    return folder / "server.key"


def _env(**variables: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SERVEKIT_")} | variables


def _serve_tls(
    pki: dict[str, Path], keyfile: Path, *args: str, env: dict[str, str] | None = None
) -> Any:
    command = [SERVEKIT, "serve", "examples.echo:LineEcho", "--listen", "127.0.0.1:0",
               "--certfile", str(pki["server_pem"]), "--keyfile", str(keyfile),
               "--status-interval", "none", *args]  # fmt: skip
    return running(command, cwd=ROOT, env=env or _env())


def test_an_encrypted_key_with_its_password_from_a_file_or_the_environment(
    pki: dict[str, Path], encrypted: Path, tmp_path: Path
) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    for args, env in (
        (["--keyfile-password-file", str(secret)], _env()),
        ([], _env(SERVEKIT_KEYFILE_PASSWORD="s3cret")),
    ):
        with _serve_tls(pki, encrypted, *args, env=env) as (proc, _log, port):
            reply, tls = _ask(("127.0.0.1", port), _client(pki))
            tls.close()
            assert reply == b"hi\n"
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(WAIT) == 0


@pytest.mark.parametrize(
    ("args", "variables", "message"),
    [
        ([], {}, "the private key is encrypted and needs a password: give keyfile_password"),
        (["--keyfile-password-file", "{secret}"], {"SERVEKIT_KEYFILE_PASSWORD": "x"},
         "--keyfile-password-file and SERVEKIT_KEYFILE_PASSWORD both give the key's password"),
        ([], {"SERVEKIT_KEYFILE_PASSWORD": "wrong"}, "the password does not decrypt"),
        (["--keyfile-password-file", "{secret}.missing"], {},
         "--keyfile-password-file {secret}.missing: No such file or directory"),
        (["--keyfile-password", "s3cret"], {}, "unrecognized arguments: --keyfile-password"),
    ],
)  # fmt: skip
def test_a_key_password_problem_is_one_line(
    pki: dict[str, Path],
    encrypted: Path,
    tmp_path: Path,
    args: list[str],
    variables: dict[str, str],
    message: str,
) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    result = subprocess.run(
        [SERVEKIT, "serve", "examples.echo:LineEcho", "--listen", "127.0.0.1:0",
         "--certfile", str(pki["server_pem"]), "--keyfile", str(encrypted),
         *(arg.format(secret=secret) for arg in args)],
        cwd=ROOT, env=_env(**variables), capture_output=True, text=True, timeout=WAIT * 3,
    )  # fmt: skip
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith("servekit: error: ")
    assert message.format(secret=secret) in line


def _new_server_certificate(pki: dict[str, Path], folder: Path, name: str) -> None:
    """A certificate for 127.0.0.1 with common name ``name``, from the tests' CA."""
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
             "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=folder)  # fmt: skip
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", str(pki["ca_pem"]),
             "-CAkey", str(pki["ca_key"]), "-CAcreateserial", "-days", "2",
             "-out", f"{name}.pem", "-extfile", str(pki["san_ext"]), cwd=folder)  # fmt: skip


def _common_name(tls: ssl.SSLSocket) -> str:
    peer = tls.getpeercert()
    assert peer is not None
    return str(dict(x[0] for x in peer["subject"])["commonName"])


def test_sighup_reloads_the_certificate_without_dropping_connections(
    pki: dict[str, Path], tmp_path: Path
) -> None:
    _new_server_certificate(pki, tmp_path, "renewed")
    certfile, keyfile = tmp_path / "live.pem", tmp_path / "live.key"
    shutil.copy(pki["server_pem"], certfile)
    shutil.copy(pki["server_key"], keyfile)
    command = [SERVEKIT, "serve", "examples.echo:LineEcho", "--listen", "127.0.0.1:0",
               "--certfile", str(certfile), "--keyfile", str(keyfile),
               "--status-interval", "none"]  # fmt: skip
    with running(command, cwd=ROOT, env=_env()) as (proc, log, port):
        _, before = _ask(("127.0.0.1", port), _client(pki))
        assert _common_name(before) == "server"
        # Renewed as certbot does: the new files over the old paths, then a reload.
        shutil.copy(tmp_path / "renewed.pem", certfile)
        shutil.copy(tmp_path / "renewed.key", keyfile)
        proc.send_signal(signal.SIGHUP)
        log.wait_for("SIGHUP: .* reloaded its TLS certificate from")
        reply, after = _ask(("127.0.0.1", port), _client(pki))
        assert (reply, _common_name(after)) == (b"hi\n", "renewed")
        before.sendall(b"still here\n")  # the connection made before the reload
        assert recv_until(before) == b"still here\n"
        # Broken files: logged, and the certificate loaded last serves on.
        certfile.write_text("not a certificate\n")
        proc.send_signal(signal.SIGHUP)
        log.wait_for("SIGHUP: .* keeps its TLS certificate: certfile")
        _, again = _ask(("127.0.0.1", port), _client(pki))
        assert _common_name(again) == "renewed"
        for tls in (before, after, again):
            tls.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0


def test_sighup_without_tls_does_not_stop_the_server() -> None:
    command = [SERVEKIT, "serve", "examples.echo:LineEcho", "--listen", "127.0.0.1:0",
               "--status-interval", "none"]  # fmt: skip
    with running(command, cwd=ROOT, env=_env()) as (proc, log, port):
        proc.send_signal(signal.SIGHUP)
        log.wait_for("SIGHUP: no TLS certificate was reloaded")
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as client:
            client.sendall(b"up\n")
            assert recv_until(client) == b"up\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0


def test_the_tls_flags_through_the_console_script(pki: dict[str, Path]) -> None:
    command = [SERVEKIT, "serve", "examples.echo:LineEcho", "--listen", "127.0.0.1:0",
               "--certfile", str(pki["server_pem"]), "--keyfile", str(pki["server_key"]),
               "--status-interval", "none"]  # fmt: skip
    tls12 = {"maximum_version": ssl.TLSVersion.TLSv1_2}
    strict = ["--tls-min-version", "1.3", "--cafile", str(pki["ca_pem"]), "--client-cert",
              "optional"]  # fmt: skip
    with running([*command, *strict], cwd=ROOT, env=_env()) as (proc, _log, port):
        _refused(("127.0.0.1", port), _client(pki, **tls12))
        reply, tls = _ask(("127.0.0.1", port), _client(pki))  # TLS 1.3, no certificate
        assert (reply, tls.version()) == (b"hi\n", "TLSv1.3")
        tls.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0
    ciphers = ["--tls-ciphers", "ECDHE-RSA-AES256-GCM-SHA384"]
    with running([*command, *ciphers], cwd=ROOT, env=_env()) as (proc, _log, port):
        other = _client(pki, ciphers="ECDHE-RSA-AES128-GCM-SHA256", **tls12)
        _refused(("127.0.0.1", port), other)
        _, tls = _ask(("127.0.0.1", port), _client(pki, **tls12))
        assert tls.cipher()[0] == "ECDHE-RSA-AES256-GCM-SHA384"
        tls.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0
    result = subprocess.run(
        [*command, "--client-cert", "optional"], cwd=ROOT, env=_env(),
        capture_output=True, text=True, timeout=WAIT * 3,
    )  # fmt: skip
    assert result.returncode == 2
    assert (
        result.stderr
        == "servekit: error: client_cert needs cafile: the authorities that sign them\n"
    )
