"""TLS for servekit servers: building a server context, and where the handshake runs.

The usual way to add TLS to a socketserver (wrap the listening socket) runs
every handshake inside ``accept()``, in the serving loop: one client that
connects and says nothing freezes the server. servekit accepts plain
connections and runs the handshake in the worker that serves the connection,
bounded by ``handshake_timeout``; a silent client costs one worker for that
long and delays nobody. A server whose ``socket`` a user wrapped with
``SSLContext.wrap_socket`` gets the same treatment: it accepts through the
plain socket underneath and uses the wrapped socket's context.

Error handling: OpenSSL's own errors name no file (``[SSL] PEM lib``), and an
encrypted key without a password makes it ask for one on the terminal, where
a server would hang. ``server_context`` reads each file first and sorts what
OpenSSL refuses into a ``TLSFileError`` that names the file, the problem and
the fix; it never lets OpenSSL prompt.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable
from errno import EACCES, ENOENT
from os import PathLike
from pathlib import Path

__all__ = [
    "TLSFileError",
    "TLSFileNotFoundError",
    "TLSFilePermissionError",
    "server_context",
]

StrPath = str | PathLike[str]
#: What ``SSLContext.load_cert_chain`` takes as the key's password.
Password = str | bytes | bytearray | Callable[[], str | bytes | bytearray]

# A PEM private key's first line ends so, whatever its kind (RSA, EC, PKCS#8,
# encrypted PKCS#8); a certificate's is this (OpenSSL also reads the
# "TRUSTED CERTIFICATE" and "X509 CERTIFICATE" forms, which end the same).
_PEM_KEY = b"PRIVATE KEY-----"
_PEM_CERTIFICATE = b"CERTIFICATE-----"
# A key encrypted in the PKCS#8 form, or in OpenSSL's older one.
_ENCRYPTED = (b"-----BEGIN ENCRYPTED PRIVATE KEY-----", b"Proc-Type: 4,ENCRYPTED")


class TLSFileError(ValueError):
    """A certificate, key or CA file the server cannot use.

    The message names the file, the problem and what to do; ``filename`` is
    the file's path as given.
    """

    def __init__(self, message: str, filename: StrPath) -> None:
        super().__init__(message)
        self.filename = filename

    def __str__(self) -> str:
        return str(self.args[0])


class TLSFileNotFoundError(TLSFileError, FileNotFoundError):
    """A TLS file that does not exist (a FileNotFoundError too, as ssl's own is)."""

    errno = ENOENT


class TLSFilePermissionError(TLSFileError, PermissionError):
    """A TLS file this process may not read (a PermissionError too, as ssl's own is)."""

    errno = EACCES


class _PasswordNeeded(Exception):
    """Raised by the password callback when the key is encrypted and no password was given."""


#: The protocol versions ``min_version`` takes (TLS 1.2 is the system default's floor).
TLS_VERSIONS: dict[str, ssl.TLSVersion] = {
    "1.2": ssl.TLSVersion.TLSv1_2,
    "1.3": ssl.TLSVersion.TLSv1_3,
}
#: What ``client_cert`` takes, with ``cafile``: a client may present a certificate
#: (checked if it does), or must.
CLIENT_CERT_MODES: dict[str, ssl.VerifyMode] = {
    "optional": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
}


def server_context(
    certfile: StrPath,
    keyfile: StrPath | None = None,
    cafile: StrPath | None = None,
    *,
    password: Password | None = None,
    min_version: str | None = None,
    ciphers: str | None = None,
    client_cert: str = "required",
) -> ssl.SSLContext:
    """A server-side context with the system's secure defaults.

    ``certfile`` (and ``keyfile``, if the key is not in it) is the server's
    certificate chain, in PEM. ``password`` decrypts an encrypted key. With
    ``cafile``, clients present a certificate signed by one of its
    authorities (mutual TLS): ``client_cert="required"`` (the default) refuses
    a client without one, ``"optional"`` lets it in (a certificate it does
    present is still checked); the handler finds it with
    ``self.request.getpeercert()``. ``min_version`` ("1.2", "1.3") raises the
    oldest protocol accepted; ``ciphers`` (an OpenSSL cipher list) narrows the
    ciphers of TLS 1.2 (TLS 1.3's are OpenSSL's own, all strong).

    Raises ``TLSFileError`` (a ValueError; for a missing or unreadable file,
    also a FileNotFoundError or PermissionError) naming the file at fault, and
    ValueError for a version, a cipher list or a mode it does not know.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    _settle_protocol(context, min_version, ciphers)
    if client_cert not in CLIENT_CERT_MODES:
        raise ValueError(f"client_cert must be 'optional' or 'required', not {client_cert!r}")
    cert = _read("certfile", certfile, "the server's certificate chain")
    key = cert if keyfile is None else _read("keyfile", keyfile, "the certificate's private key")
    ca = b"" if cafile is None else _read("cafile", cafile, "the signers of client certificates")
    try:
        context.load_cert_chain(certfile, keyfile, _never_prompt if password is None else password)
    except _PasswordNeeded:
        raise _encrypted(keyfile, certfile) from None
    except ssl.SSLError as exc:
        raise _cert_chain_error(exc, certfile, cert, keyfile, key, password) from None
    if cafile is not None:
        try:
            context.load_verify_locations(cafile)
        except ssl.SSLError as exc:
            raise _ca_error(exc, cafile, ca) from None
        context.verify_mode = CLIENT_CERT_MODES[client_cert]
    return context


def _settle_protocol(context: ssl.SSLContext, min_version: str | None, ciphers: str | None) -> None:
    if min_version is not None:
        if min_version not in TLS_VERSIONS:
            raise ValueError(f"min_version must be '1.2' or '1.3', not {min_version!r}")
        context.minimum_version = TLS_VERSIONS[min_version]
    if ciphers is not None:
        try:
            context.set_ciphers(ciphers)
        except ssl.SSLError:
            raise ValueError(
                f"ciphers {ciphers!r} names no cipher OpenSSL has (see openssl ciphers -v)"
            ) from None


def _never_prompt() -> str:
    # Without a callback OpenSSL asks for the password on the terminal.
    raise _PasswordNeeded


def _read(option: str, path: StrPath, what: str) -> bytes:
    """The file's bytes, or a TLSFileError that says why they cannot be had."""
    shown = f"{option} {os.fspath(path)!r}"
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise TLSFileNotFoundError(
            f"{shown} does not exist: give the path of {what} (PEM)", path
        ) from None
    except PermissionError:
        user = getattr(os, "getuid", lambda: "?")()
        raise TLSFilePermissionError(
            f"{shown} cannot be read: permission denied; let the user this server runs "
            f"as (uid {user}) read it",
            path,
        ) from None
    except IsADirectoryError:
        raise TLSFileError(f"{shown} is a directory: give the path of {what} (PEM)", path) from None
    except OSError as exc:
        raise TLSFileError(f"{shown} cannot be read: {exc.strerror or exc}", path) from None


def _encrypted(keyfile: StrPath | None, certfile: StrPath) -> TLSFileError:
    option, path = ("certfile", certfile) if keyfile is None else ("keyfile", keyfile)
    return TLSFileError(
        f"{option} {os.fspath(path)!r}: the private key is encrypted and needs a password: "
        "give keyfile_password (servekit serve: --keyfile-password-file FILE, or the "
        "SERVEKIT_KEYFILE_PASSWORD variable), or decrypt the key (openssl pkey -in KEY -out "
        "PLAIN_KEY) and keep it readable by this server only",
        path,
    )


def _cert_chain_error(
    exc: ssl.SSLError,
    certfile: StrPath,
    cert: bytes,
    keyfile: StrPath | None,
    key: bytes,
    password: Password | None,
) -> TLSFileError:
    """Name what OpenSSL refused in load_cert_chain(): it says only "PEM lib"."""
    cert_shown = f"certfile {os.fspath(certfile)!r}"
    key_option, key_path = ("certfile", certfile) if keyfile is None else ("keyfile", keyfile)
    key_shown = f"{key_option} {os.fspath(key_path)!r}"
    if _PEM_CERTIFICATE not in cert:
        return TLSFileError(
            f"{cert_shown} holds no PEM certificate (no '-----BEGIN CERTIFICATE-----' line): "
            "give the server's certificate chain in PEM; one in DER converts with "
            "openssl x509 -inform der -in CERT -out CERT.pem",
            certfile,
        )
    if _PEM_KEY not in key:
        if keyfile is None:
            return TLSFileError(
                f"{cert_shown} holds a certificate but no private key: pass keyfile "
                "(--keyfile) with the certificate's key, or append the key to the certificate",
                certfile,
            )
        return TLSFileError(
            f"{key_shown} holds no PEM private key: give the key of the certificate in "
            f"{cert_shown}",
            key_path,
        )
    # NO_CERTIFICATE_ASSIGNED: a key of another type (EC for an RSA certificate).
    if getattr(exc, "reason", None) in ("KEY_VALUES_MISMATCH", "NO_CERTIFICATE_ASSIGNED"):
        return TLSFileError(
            f"{key_shown}: the private key does not match the certificate in {cert_shown}; "
            "give the key the certificate was made for",
            key_path,
        )
    if password is not None and any(marker in key for marker in _ENCRYPTED):
        return TLSFileError(f"{key_shown}: the password does not decrypt the private key", key_path)
    return TLSFileError(f"{cert_shown} with {key_shown} cannot be loaded: {exc}", key_path)


def _ca_error(exc: ssl.SSLError, cafile: StrPath, ca: bytes) -> TLSFileError:
    shown = f"cafile {os.fspath(cafile)!r}"
    if _PEM_CERTIFICATE not in ca:
        return TLSFileError(
            f"{shown} holds no PEM certificate: give the certificates of the authorities "
            "that sign client certificates, in PEM",
            cafile,
        )
    return TLSFileError(f"{shown} cannot be loaded: {exc}", cafile)
