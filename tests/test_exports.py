"""The public surface: every socketserver name, servekit's own, nothing private."""

from __future__ import annotations

import inspect
import socketserver

import servekit

OWN_NAMES = {
    "IdleTimeout",
    "LimitExceeded",
    "LineTooLong",
    "ListenAddress",
    "ReadTimeout",
    "ServerConfig",
    "WriteBufferFull",
    "StatsSnapshot",
    "ThreadPoolMixIn",
    "ThreadPoolTCPServer",
    "ThreadPoolUDPServer",
    "ThreadPoolUnixDatagramServer",
    "ThreadPoolUnixStreamServer",
    "make_server",
    "make_source_server",
    "parse_address",
    "socket_type_of",
    "with_model",
}
#: Added to socketserver in Python 3.12; servekit has them on 3.11 too.
NEWER_STDLIB_NAMES = {"ForkingUnixStreamServer", "ForkingUnixDatagramServer"}


def test_all_is_the_stdlib_names_plus_our_own() -> None:
    expected = set(socketserver.__all__) | NEWER_STDLIB_NAMES | OWN_NAMES
    assert set(servekit.__all__) == expected
    assert len(servekit.__all__) == len(set(servekit.__all__))
    for name in servekit.__all__:
        assert not name.startswith("_")
        assert hasattr(servekit, name)


def test_python_313_names_are_there_on_every_version() -> None:
    assert {"ForkingUnixStreamServer", "ForkingUnixDatagramServer"} <= set(servekit.__all__)


def test_stdlib_class_attributes_and_defaults() -> None:
    for name in socketserver.__all__:
        ours, theirs = getattr(servekit, name), getattr(socketserver, name)
        for attr, value in vars(theirs).items():
            if attr.startswith("__") or attr == "_threads":
                continue
            assert hasattr(ours, attr), f"{name}.{attr} is missing"
            if not callable(value) and not isinstance(value, property):
                assert getattr(ours, attr) == value, f"{name}.{attr} differs"
            elif inspect.isfunction(value):
                ours_sig = inspect.signature(getattr(ours, attr))
                assert list(ours_sig.parameters) == list(inspect.signature(value).parameters), (
                    f"{name}.{attr} takes different parameters"
                )


def test_class_hierarchy_matches() -> None:
    for name in socketserver.__all__:
        theirs = getattr(socketserver, name)
        for base in theirs.__mro__[1:]:
            if base.__module__ == "socketserver":
                assert issubclass(getattr(servekit, name), getattr(servekit, base.__name__))
