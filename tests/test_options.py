"""ServerConfig: every option of make_server, typed, frozen, checked before a socket is bound."""

from __future__ import annotations

import dataclasses
import re
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest

import servekit
from servekit.options import OPTIONS, ServerConfig
from tests.conftest import connect, recv_until, serving


class Echo(servekit.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.readline())


#: For every field, values it refuses: (options, error, words the message must hold).
#: A wrong type and, where the type has one, a bad range.
REFUSED: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"concurrency": "greenlets"}, ValueError, "unknown concurrency 'greenlets'; choose one of"),
    ({"concurrency": 1}, TypeError, "unknown concurrency 1"),
    ({"backlog": "128"}, TypeError, "backlog must be a whole number"),
    ({"backlog": 0}, ValueError, "backlog must be a whole number >= 1"),
    ({"reuse_port": 1}, TypeError, "reuse_port must be True or False"),
    ({"rpcbind": "yes"}, TypeError, "rpcbind must be True or False"),
    ({"socket_file_mode": "0o660"}, TypeError, "socket_file_mode must be permission bits"),
    ({"socket_file_mode": 0o10000}, ValueError, "socket_file_mode must be permission bits"),
    ({"socket_file_mode": -1}, ValueError, "socket_file_mode must be permission bits"),
    ({"max_packet_size": 1.5}, TypeError, "max_packet_size must be a whole number"),
    ({"max_packet_size": 0}, ValueError, "max_packet_size must be a whole number >= 1"),
    ({"max_workers": None}, TypeError, "max_workers must be a whole number >= 1, not None"),
    ({"max_workers": 0}, ValueError, "max_workers must be a whole number >= 1"),
    ({"max_pending": "8"}, TypeError, "max_pending must be a whole number"),
    ({"max_pending": -1}, ValueError, "max_pending must be a whole number >= 0"),
    ({"max_handler_threads": None}, TypeError, "max_handler_threads must be a whole number >= 1"),
    ({"max_handler_threads": 0}, ValueError, "max_handler_threads must be a whole number >= 1"),
    ({"max_connections": True}, TypeError, "max_connections must be a whole number"),
    ({"max_connections": 0}, ValueError, "max_connections must be a whole number >= 1"),
    ({"shutdown_timeout": "25"}, TypeError, "shutdown_timeout must be a number of seconds"),
    ({"shutdown_timeout": -1}, ValueError, "shutdown_timeout must be a number of seconds >= 0"),
    ({"idle_timeout": [5]}, TypeError, "idle_timeout must be a number of seconds"),
    ({"idle_timeout": 0}, ValueError, "idle_timeout must be a number of seconds > 0"),
    ({"idle_timeout": float("nan")}, ValueError, "idle_timeout must be a number of seconds"),
    ({"read_timeout": b"30"}, TypeError, "read_timeout must be a number of seconds"),
    ({"read_timeout": float("inf")}, ValueError, "read_timeout must be a number of seconds"),
    ({"max_line_length": 1.0}, TypeError, "max_line_length must be a whole number"),
    ({"max_line_length": 0}, ValueError, "max_line_length must be a whole number >= 1"),
    ({"ssl_context": "tls"}, TypeError, "ssl_context must be an ssl.SSLContext"),
    ({"certfile": 5}, TypeError, "certfile must be a path"),
    ({"keyfile": 5}, TypeError, "keyfile must be a path"),
    ({"keyfile": "server.key"}, ValueError, "keyfile and cafile need certfile"),
    ({"cafile": 5}, TypeError, "cafile must be a path"),
    ({"cafile": "ca.pem"}, ValueError, "keyfile and cafile need certfile"),
    ({"client_cert": "sometimes"}, ValueError, "client_cert must be 'optional' or 'required'"),
    ({"client_cert": "optional", "certfile": "a.pem"}, ValueError, "client_cert needs cafile"),
    ({"keyfile_password": 5}, TypeError, "keyfile_password must be a string"),
    ({"keyfile_password": "x"}, ValueError, "keyfile_password need certfile"),
    ({"tls_min_version": "1.0"}, ValueError, "tls_min_version must be '1.2' or '1.3'"),
    ({"tls_ciphers": ["AES"]}, TypeError, "tls_ciphers must be a string"),
    ({"tls_ciphers": "AES"}, ValueError, "tls_ciphers need certfile"),
    ({"certfile": "a.pem", "ssl_context": ssl.create_default_context()}, ValueError,
     "pass ssl_context or certfile, not both"),
    ({"handshake_timeout": "10"}, TypeError, "handshake_timeout must be a number of seconds"),
    ({"handshake_timeout": -1}, ValueError, "handshake_timeout must be a number of seconds > 0"),
    ({"proxy_protocol": "yes"}, TypeError, "proxy_protocol must be True or False"),
    ({"proxy_protocol": True}, ValueError, "proxy_protocol needs trusted_proxies"),
    ({"trusted_proxies": "10.0.0.0/8"}, TypeError, "write ['10.0.0.0/8']"),
    ({"trusted_proxies": 5}, TypeError, "trusted_proxies must be a list"),
    ({"trusted_proxies": [5]}, TypeError, "trusted_proxies holds 5"),
    ({"trusted_proxies": ["10.0.0.1/8"]}, ValueError, "trusted_proxies: bad trusted network"),
    ({"lease": None}, TypeError, "lease must be a number of seconds > 0, not None"),
    ({"lease": 0}, ValueError, "lease must be a number of seconds > 0"),
    ({"retry_backoff": "1"}, TypeError, "retry_backoff must be a number of seconds"),
    ({"retry_backoff": -1.0}, ValueError, "retry_backoff must be a number of seconds > 0"),
    ({"max_attempts": 2.0}, TypeError, "max_attempts must be a whole number >= 1"),
    ({"max_attempts": 0}, ValueError, "max_attempts must be a whole number >= 1"),
    ({"claim_batch": None}, TypeError, "claim_batch must be a whole number >= 1, not None"),
    ({"claim_batch": 0}, ValueError, "claim_batch must be a whole number >= 1"),
    ({"ack_batch": 1.5}, TypeError, "ack_batch must be a whole number >= 1"),
    ({"ack_batch": 0}, ValueError, "ack_batch must be a whole number >= 1"),
]  # fmt: skip


def test_every_field_has_a_refused_value() -> None:
    """An option added to ServerConfig without a case here fails."""
    covered = {name for options, _, _ in REFUSED for name in options}
    assert covered == {field.name for field in dataclasses.fields(ServerConfig)}


@pytest.mark.parametrize(("options", "error", "message"), REFUSED, ids=lambda v: repr(v)[:40])
def test_config_refuses(options: dict[str, Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=re.escape(message)):
        ServerConfig(**options)


def _free_port() -> int:
    with socket.socket() as finder:
        finder.bind(("127.0.0.1", 0))
        port: int = finder.getsockname()[1]
        return port


@pytest.mark.parametrize(("options", "error", "message"), REFUSED, ids=lambda v: repr(v)[:40])
def test_make_server_refuses_before_binding(
    options: dict[str, Any], error: type[Exception], message: str, sock_dir: Path
) -> None:
    # A port free now: had make_server bound it before refusing, the probe
    # below could not (no SO_REUSEADDR on the probe).
    port = _free_port()
    with pytest.raises(error, match=re.escape(message)):
        servekit.make_server(f"127.0.0.1:{port}", Echo, **options)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))
    path = sock_dir / "refused.sock"
    with pytest.raises(error, match=re.escape(message)):
        servekit.make_server(f"unix:{path}", Echo, **options)
    assert not path.exists()


@pytest.mark.parametrize("handler", ["examples.echo:LineEcho", b"Echo", None, 5, object()])
def test_a_handler_that_is_not_a_handler_is_refused_before_binding(
    handler: Any, sock_dir: Path
) -> None:
    port = _free_port()
    with pytest.raises(TypeError, match="handler must be a request handler class"):
        servekit.make_server(f"127.0.0.1:{port}", handler)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))
    path = sock_dir / "refused.sock"
    with pytest.raises(TypeError, match="handler must be a request handler class"):
        servekit.make_server(f"unix:{path}", handler)
    assert not path.exists()


def test_a_config_that_is_not_one_is_refused() -> None:
    with pytest.raises(TypeError, match=r"config must be a servekit\.options\.ServerConfig"):
        servekit.make_server("127.0.0.1:0", Echo, config={"idle_timeout": 5})  # type: ignore[arg-type]


def test_config_is_frozen() -> None:
    config = ServerConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.idle_timeout = 5  # type: ignore[misc]
    with pytest.raises((AttributeError, TypeError)):
        config.idle = 5  # type: ignore[attr-defined]
    assert config == ServerConfig()
    assert hash(config) == hash(ServerConfig())


def test_defaults_are_the_tables() -> None:
    config = ServerConfig()
    for option in OPTIONS.values():
        assert getattr(config, option.name) == option.default, option.name
    assert config.concurrency == "pool"
    assert config.trusted_proxies == ()


def test_values_are_normalised() -> None:
    config = ServerConfig(idle_timeout=5, proxy_protocol=True, trusted_proxies=["127.0.0.1"])  # type: ignore[arg-type]
    assert config.idle_timeout == 5.0
    assert type(config.idle_timeout) is float
    assert config.trusted_proxies == ("127.0.0.1",)
    assert ServerConfig(trusted_proxies=iter(["unix"])).trusted_proxies == ("unix",)  # type: ignore[arg-type]


def test_replace_checks_again() -> None:
    config = ServerConfig(idle_timeout=5)
    assert dataclasses.replace(config, idle_timeout=6).idle_timeout == 6.0
    with pytest.raises(ValueError, match="idle_timeout must be"):
        dataclasses.replace(config, idle_timeout=-1)


def test_a_real_ssl_context_is_taken() -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    assert ServerConfig(ssl_context=context).ssl_context is context


def test_help_shows_every_option_with_its_range_and_why() -> None:
    doc = " ".join((ServerConfig.__doc__ or "").split())
    for option in OPTIONS.values():
        assert f"{option.name} (default " in doc
        if option.why:
            assert " ".join(option.why.split()) in doc, option.name


def test_make_server_serves_with_a_config() -> None:
    config = ServerConfig(idle_timeout=5)
    with servekit.make_server("127.0.0.1:0", Echo, config=config) as server, serving(server):
        assert server.config is config  # type: ignore[attr-defined]
        assert server.idle_timeout == 5.0
        with connect(server.server_address) as client:
            client.sendall(b"hi\n")
            assert recv_until(client) == b"hi\n"


def test_keywords_override_the_config() -> None:
    config = ServerConfig(idle_timeout=5, read_timeout=7)
    with servekit.make_server("127.0.0.1:0", Echo, config=config, idle_timeout=9) as server:
        assert server.config == dataclasses.replace(config, idle_timeout=9)  # type: ignore[attr-defined]
        assert (server.idle_timeout, server.read_timeout) == (9.0, 7.0)
    # A keyword equal to ServerConfig's default still overrides the config.
    with servekit.make_server("127.0.0.1:0", Echo, config=config, idle_timeout=300) as server:
        assert server.idle_timeout == 300.0
    assert config == ServerConfig(idle_timeout=5, read_timeout=7)  # not changed


def test_keywords_are_checked_with_the_config() -> None:
    config = ServerConfig(proxy_protocol=True, trusted_proxies=("127.0.0.1",))
    with pytest.raises(ValueError, match="proxy_protocol needs trusted_proxies"):
        servekit.make_server("127.0.0.1:0", Echo, config=config, trusted_proxies=[])


def test_server_config_without_options_is_the_default() -> None:
    with servekit.make_server("127.0.0.1:0", Echo) as server:
        assert server.config == ServerConfig()  # type: ignore[attr-defined]
    with servekit.make_server("127.0.0.1:0", Echo, concurrency="threads", backlog=64) as server:
        assert server.config == ServerConfig(concurrency="threads", backlog=64)  # type: ignore[attr-defined]
