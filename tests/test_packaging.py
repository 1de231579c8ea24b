"""The distributions: the sdist carries what the test suite and the docs need, and the
wheel's metadata says what is true (an SPDX licence, no placeholder URL, no extra for
code that does not exist yet).

Built with ``python -m build --no-isolation`` from a copy of the source tree, with the
``build`` and ``setuptools`` of the dev extra: no network, and nothing written into the
checkout.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import zipfile
from email.parser import HeaderParser
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent

#: What the sdist must carry for its tests to run and its docs to be read, beside the
#: package itself; named here so that the check cannot pass on an empty tree.
REQUIRED = [
    "pyproject.toml",
    "README.md",
    "LICENSE",
    "CHANGELOG.md",
    "src/servekit/__init__.py",
    "src/servekit/py.typed",
    "tests/conftest.py",
    "tests/programs/stdlib_on_servekit.py",
    "tests/test_packaging.py",
    "examples/echo.py",
    "docs/roadmap.md",
    "docs/benchmarks/chart.png",
    "benchmarks/loadgen.c",
    "benchmarks/report.py",
    "benchmarks/peers/epoll_echo.c",
    "scripts/_venv.sh",
    "scripts/example",
    "scripts/test",
]
#: Folders shipped whole (every file in them, less the compiled and cached ones).
SHIPPED = ["tests", "examples", "docs", "benchmarks", "scripts"]
#: Never in the tree that is copied: the checkout's own state and build output.
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "__pycache__", "*.py[cod]", "*.egg-info", "build", "dist", ".*_cache",
    ".hypothesis",
)  # fmt: skip


def _shipped_files(tree: Path) -> set[str]:
    return {
        path.relative_to(tree).as_posix()
        for folder in SHIPPED
        for path in (tree / folder).rglob("*")
        if path.is_file() and "build" not in path.relative_to(tree).parts
    }


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(source tree, sdist, wheel): the wheel is built from the sdist, as pip would."""
    where = tmp_path_factory.mktemp("packaging")
    tree, out = where / "servekit", where / "dist"
    shutil.copytree(ROOT, tree, ignore=NOT_SOURCE)
    # A compiled load generator, as ./scripts/bench leaves it: not source, not shipped.
    (tree / "benchmarks" / "build").mkdir()
    (tree / "benchmarks" / "build" / "loadgen").write_bytes(b"\x7fELF")
    done = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(tree)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (sdist,) = out.glob("servekit-*.tar.gz")
    (wheel,) = out.glob("servekit-*.whl")
    return tree, sdist, wheel


@pytest.mark.timeout(30)
def test_sdist_carries_the_tests_examples_docs_and_scripts(
    dists: tuple[Path, Path, Path],
) -> None:
    tree, sdist, _ = dists
    with tarfile.open(sdist) as tar:
        members = {m.name.split("/", 1)[1]: m for m in tar.getmembers() if "/" in m.name}
    names = {name for name, member in members.items() if member.isfile()}
    assert not [name for name in REQUIRED if name not in names]
    assert not sorted(_shipped_files(tree) - names)
    assert not [name for name in names if name.startswith("benchmarks/build/")]
    assert not [name for name in names if "__pycache__" in name or name.endswith(".pyc")]
    # The scripts stay runnable from an unpacked sdist.
    assert members["scripts/example"].mode & 0o111
    assert members["scripts/test"].mode & 0o111


@pytest.mark.timeout(30)
def test_wheel_metadata_is_true(dists: tuple[Path, Path, Path]) -> None:
    _, _, wheel = dists
    with zipfile.ZipFile(wheel) as whl:
        (metadata,) = [n for n in whl.namelist() if n.endswith(".dist-info/METADATA")]
        text = whl.read(metadata).decode()
        licences = [n for n in whl.namelist() if ".dist-info/licenses/" in n]
    headers = HeaderParser().parsestr(text)
    assert headers["License-Expression"] == "MIT"
    assert headers.get_all("License-File") == ["LICENSE"]
    assert [n.rsplit("/", 1)[1] for n in licences] == ["LICENSE"]
    classifiers = headers.get_all("Classifier") or []
    assert "Development Status :: 3 - Alpha" in classifiers
    assert not [c for c in classifiers if c.startswith("License ::")]
    assert "example.invalid" not in text
    assert headers.get_all("Project-URL") is None
    assert "postgres" in (headers.get_all("Provides-Extra") or [])  # psycopg, for servekit.sql
    assert "RPC" not in headers["Summary"]
