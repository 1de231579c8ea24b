"""servekit as a drop-in: the stdlib's own servers and tests, run on servekit."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import servekit

PROGRAMS = Path(__file__).parent / "programs"
SRC = Path(servekit.__file__).parent.parent


def _run(*args: str, python: str = sys.executable, timeout: float = 120) -> str:
    proc = subprocess.run(
        [python, *args], capture_output=True, text=True, timeout=timeout,
        env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _module(name: str) -> object:
    return json.loads(_run(str(PROGRAMS / "stdlib_on_servekit.py"), name).splitlines()[-1])


def test_http_server() -> None:
    assert _module("http") == {
        "HTTPServer": [200, "hello /x"],
        "ThreadingHTTPServer": [200, "hello /x"],
    }


def test_xmlrpc_server() -> None:
    assert _module("xmlrpc") == {"add": 5, "methods": True}


def test_wsgiref_simple_server() -> None:
    assert _module("wsgiref") == {"status": 200, "body": "wsgi /path"}


def test_logging_config_listen() -> None:
    assert _module("logging") == {"applied": True, "level": "WARNING"}


# CPython's own test suites, run with servekit in place of socketserver.
# test_all is left out: it checks that __all__ lists exactly the names whose
# __module__ is "socketserver", and servekit adds names of its own.
RUNNER = """
import sys, unittest
import servekit
sys.modules["socketserver"] = servekit
names = sys.argv[1:]
suite = unittest.TestSuite()
for name in names:
    module = __import__("test." + name, fromlist=["x"])
    assert module.socketserver is servekit if hasattr(module, "socketserver") else True
    suite.addTests(unittest.defaultTestLoader.loadTestsFromModule(module))

def without(tests, skip):
    kept = unittest.TestSuite()
    for test in tests:
        if isinstance(test, unittest.TestSuite):
            kept.addTest(without(test, skip))
        elif not test.id().endswith(skip):
            kept.addTest(test)
    return kept

result = unittest.TextTestRunner(verbosity=1).run(without(suite, ".MiscTestCase.test_all"))
print("RAN", result.testsRun)
sys.exit(0 if result.wasSuccessful() else 1)
"""

PYTHONS = ["3.11", "3.12", "3.13"]


def _python(version: str) -> str | None:
    """An interpreter of ``version``: this one, one on PATH, or one pyenv installed."""
    if sys.version_info[:2] == tuple(map(int, version.split("."))):
        return sys.executable
    pyenv = Path(os.environ.get("PYENV_ROOT", "~/.pyenv")).expanduser()
    candidates = [shutil.which(f"python{version}")]
    candidates += sorted(str(p) for p in pyenv.glob(f"versions/{version}.*/bin/python{version}"))
    for candidate in filter(None, candidates):
        works = subprocess.run([candidate, "-c", "pass"], capture_output=True, timeout=60)
        if works.returncode == 0:
            return candidate
    return None


@pytest.mark.timeout(180)
@pytest.mark.parametrize("version", PYTHONS)
def test_cpython_test_suites(version: str) -> None:
    python = _python(version)
    if python is None:
        pytest.skip(f"python{version} is not installed (.ci/run installs it where it can)")
    has_tests = subprocess.run(
        [python, "-c", "import test.test_socketserver"], capture_output=True, timeout=60
    )
    if has_tests.returncode != 0:
        pytest.skip(f"python{version} has no test package")
    out = _run("-c", RUNNER, "test_socketserver", "test_httpservers", "test_wsgiref",
               python=python)  # fmt: skip
    ran = int(out.split("RAN", 1)[1].split()[0])
    assert ran > 100
