"""servekit rpcgen against rpcgen's C (issue 16): values encoded by the Python that
servekit compiles from a .x file decode in the C that ``rpcgen`` generates from the
same file, and back, for every construct (tests/rpcgen/every.x) and for demo.x; and the
generated clients call a server (the C server is called through them in
tests/test_rpc_interop.py's way, servekit's generated one here).

The C side is one small program per .x file, built once: it reads XDR bytes on stdin,
decodes them with rpcgen's ``xdr_TYPE`` (the type named by its argument), checks that
every byte was used, encodes the value again and writes the bytes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

import servekit
from servekit.rpc import _declare, xdr
from servekit.rpc.rpcgen import compile_x
from tests.conftest import serving
from tests.test_rpcgen import DEMO_X, EVERY_X, _declared_types, _load, sample

pytestmark = pytest.mark.timeout(60)

HARNESS = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "spec.h"

static char in[1 << 20], out[1 << 20];

static int run(xdrproc_t proc, void *value)
{
	size_t n = fread(in, 1, sizeof in, stdin);
	XDR x, y;
	xdrmem_create(&x, in, n, XDR_DECODE);
	if (!proc(&x, value, 0))
		return 3;
	if (xdr_getpos(&x) != n)
		return 4;
	xdrmem_create(&y, out, sizeof out, XDR_ENCODE);
	if (!proc(&y, value, 0))
		return 5;
	fwrite(out, 1, xdr_getpos(&y), stdout);
	return 0;
}

#define TYPE(T) if (strcmp(argv[1], #T) == 0) { \
	static T value; memset(&value, 0, sizeof value); return run((xdrproc_t)xdr_##T, &value); }

int main(int argc, char **argv)
{
	if (argc != 2)
		return 2;
%s
	return 2;
}
"""


@dataclasses.dataclass(frozen=True)
class Built:
    program: Path
    module: Any


def _build(x_file: Path, tmp: Path, name: str) -> Built:
    for tool in ("rpcgen", "gcc"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool} (.ci/run installs it)")
    if not Path("/usr/include/tirpc/rpc/rpc.h").exists():
        pytest.skip("needs libtirpc's headers (libtirpc-dev)")
    build = tmp / name
    build.mkdir()
    shutil.copy(x_file, build / "spec.x")
    for flag, output in (("-h", "spec.h"), ("-c", "spec_xdr.c")):
        _run(["rpcgen", "-N", flag, "spec.x", "-o", output], build)
    python = build / f"rpcgen_c_{name}.py"
    python.write_text(compile_x(x_file.read_text(), x_file.name))
    module = _load(python, f"rpcgen_c_{name}")
    cases = "\n".join(f"\tTYPE({t.__name__})" for t in _declared_types(module))
    (build / "harness.c").write_text(HARNESS % cases)
    _run(["gcc", "-O1", "-w", "-I", "/usr/include/tirpc", "-I", ".", "-o", "harness",
          "harness.c", "spec_xdr.c", "-ltirpc"], build)  # fmt: skip
    return Built(build / "harness", module)


def _run(command: list[str], cwd: Path) -> None:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{' '.join(command)}:\n{done.stdout}{done.stderr}"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Built]:
    tmp = tmp_path_factory.mktemp("rpcgen_c")
    return {"every": _build(EVERY_X, tmp, "every"), "demo": _build(DEMO_X, tmp, "demo")}


def _samples(value_type: Any, module: Any) -> list[Any]:
    """A value of each arm of a union; one value of anything else."""
    spec = _declare._UNION_OF.get(value_type)
    if spec is None:
        return [sample(value_type, module)]
    found = []
    for number, arm in sorted(spec.arms.items()):
        switch = spec.discriminant_type
        if isinstance(switch, type):
            value = switch(number)
        else:
            value = bool(number) if switch is xdr.boolean else number
        hints = {f.name for f in dataclasses.fields(arm)} - {spec.switch}
        fields = {name: sample(_field_type(arm, name, module), module) for name in hints}
        found.append(arm(**{spec.switch: value}, **fields))
    return found


def _field_type(cls: Any, name: str, module: Any) -> Any:
    import typing

    names = vars(module)
    return typing.get_type_hints(cls, globalns=names, localns=names, include_extras=True)[name]


@pytest.mark.parametrize("spec", ["every", "demo"])
def test_python_bytes_decode_in_rpcgens_c_and_back(built: dict[str, Built], spec: str) -> None:
    harness, module = built[spec].program, built[spec].module
    checked = []
    for value_type in _declared_types(module):
        for value in _samples(value_type, module):
            data = xdr.encode(value_type, value)
            done = subprocess.run([str(harness), value_type.__name__], input=data,
                                  capture_output=True, timeout=10)  # fmt: skip
            assert done.returncode == 0, (value_type.__name__, value, done.returncode)
            assert done.stdout == data, value_type.__name__
            assert xdr.decode(value_type, done.stdout) == value
            checked.append(value_type.__name__)
    assert "every" in checked or "complex_arg" in checked


def test_c_refuses_what_python_refuses(built: dict[str, Built]) -> None:
    """The bound of a string checked on both sides: the same bytes, refused by both."""
    module = built["every"].module
    too_long = xdr.encode(xdr.string(), "x" * 11)  # name is string<DEC>, DEC = 10
    with pytest.raises(xdr.XdrError):
        xdr.decode(module.later, too_long + bytes(4))
    done = subprocess.run([str(built["every"].program), "later"], input=too_long + bytes(4),
                          capture_output=True, timeout=10)  # fmt: skip
    assert done.returncode == 3


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_generated_clients_call_a_server_on_the_generated_base(transport: str) -> None:
    from examples.rpc import demo, demo_x

    server = servekit.make_server(f"{transport}://127.0.0.1:0", demo.DEMO_PROG)
    with serving(server):
        address = f"{transport}://127.0.0.1:{server.server_address[1]}"
        with demo_x.DEMO_V1_Client(address, timeout=5) as client:
            client.DEMO_NULL()
            assert client.DEMO_ADD(2, 3) == 5
            assert client.DEMO_ECHO("hé") == "hé"
        with demo_x.DEMO_V2_Client(address, timeout=5) as client2:
            assert client2.DEMO2_ADD(2, 3) == 1005

        async def calls() -> tuple[int, str]:
            async with demo_x.DEMO_V1_AsyncClient(address, timeout=5) as aclient:
                return await aclient.DEMO_ADD(-1, 1), await aclient.DEMO_ECHO("x")

        assert asyncio.run(calls()) == (0, "x")
