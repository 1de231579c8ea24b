"""servekit rpcgen against rpcgen's C (issue 16): values encoded by the Python that
servekit compiles from a .x file decode in the C that ``rpcgen`` generates from the
same file, and back, for every construct (tests/rpcgen/every.x) and for demo.x; and the
generated clients of examples/rpc/demo_x.py, sync and async, over TCP and UDP, call
rpcgen's C server of demo.x and servekit's server on the generated base classes, and
get the same answers, those demo.x's semantics give. (rpcgen's C client against
servekit's server: tests/test_rpc_interop.py.)

The C side of the round trip is one small program per .x file, built once: it reads XDR
bytes on stdin, decodes them with rpcgen's ``xdr_TYPE`` (the type named by its argument),
checks that every byte was used, encodes the value again and writes the bytes. The C
server is rpcgen's dispatchers (``rpcgen -N -m``), the procedures of
tests/rpc_c/demo_server_impl.c and the main of benchmarks/peers/rpc_demo_server.c, which
serves one transport at 127.0.0.1 on a port the kernel chooses, without rpcbind.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from examples.rpc import demo_x

import servekit
from servekit.rpc import _declare, xdr
from servekit.rpc.rpcgen import compile_x
from tests.conftest import WAIT, running, serving
from tests.test_rpc_interop import COMPLEX_CASES, ECHO_TEXT, _int32
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


def _needs_rpcgen_gcc_and_libtirpc() -> None:
    for tool in ("rpcgen", "gcc"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool} (.ci/run installs it)")
    if not Path("/usr/include/tirpc/rpc/rpc.h").exists():
        pytest.skip("needs libtirpc's headers (libtirpc-dev; .ci/run installs it)")


def _build(x_file: Path, tmp: Path, name: str) -> Built:
    _needs_rpcgen_gcc_and_libtirpc()
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

    server = servekit.make_server(f"{transport}://127.0.0.1:0", demo.DEMO_PROG, rpcbind=False)
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


# -- the generated clients against rpcgen's C server ---------------------------------------

ROOT = Path(__file__).parent.parent
C_SERVER_SOURCES = (
    ROOT / "benchmarks" / "peers" / "rpc_demo_server.c",  # main: one transport, no rpcbind
    Path(__file__).parent / "rpc_c" / "demo_server_impl.c",  # demo.x's procedures
)


@pytest.fixture(scope="module")
def c_server(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """rpcgen's C server of demo.x, built once: ``rpcgen -N -h/-c/-m`` (the dispatchers,
    without a main) linked with the procedures and the main above."""
    _needs_rpcgen_gcc_and_libtirpc()
    build = tmp_path_factory.mktemp("rpcgen_c_server")
    shutil.copy(DEMO_X, build / "demo.x")
    for flag, output in (("-h", "demo.h"), ("-c", "demo_xdr.c"), ("-m", "demo_svc.c")):
        _run(["rpcgen", "-N", flag, "-o", output, "demo.x"], build)
    tirpc = ["-I", str(build), "-I", "/usr/include/tirpc"]
    for source in C_SERVER_SOURCES:  # ours: no warning passes
        _run(["gcc", "-O1", "-Wall", "-Wextra", "-Werror", *tirpc, "-c", str(source)], build)
    # rpcgen's code draws warnings of its own (unused variables, casts): not ours to fix.
    objects = [f"{source.stem}.o" for source in C_SERVER_SOURCES]
    _run(["gcc", "-O1", "-w", *tirpc, "-o", "demo_server", *objects, "demo_svc.c", "demo_xdr.c",
          "-ltirpc"], build)  # fmt: skip
    return build / "demo_server"


@contextlib.contextmanager
def _c_serving(program: Path, transport: str) -> Iterator[str]:
    """The C server on ``transport`` at 127.0.0.1, a free port: its address, once it has
    answered a NULL call (bounded by the client's timeout); killed and reaped after."""
    command = [str(program), "--proto", transport, "--host", "127.0.0.1", "--port", "0"]
    with running(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL) as (_, _, port):
        address = f"{transport}://127.0.0.1:{port}"
        with demo_x.DEMO_V1_Client(address, timeout=WAIT) as client:
            client.DEMO_NULL()
        yield address


def _sync_answers(address: str) -> list[Any]:
    with (
        demo_x.DEMO_V1_Client(address, timeout=WAIT) as v1,
        demo_x.DEMO_V2_Client(address, timeout=WAIT) as v2,
    ):
        return [
            v1.DEMO_NULL(),  # type: ignore[func-returns-value]
            v1.DEMO_ADD(2, 3),
            v1.DEMO_ADD(2**31 - 1, 1),
            v1.DEMO_ECHO(ECHO_TEXT),
            *(v1.DEMO_COMPLEX(case.value()) for case in COMPLEX_CASES),
            v2.DEMO2_NULL(),  # type: ignore[func-returns-value]
            v2.DEMO2_ADD(2, 3),
        ]


async def _async_answers(address: str) -> list[Any]:
    async with (
        demo_x.DEMO_V1_AsyncClient(address, timeout=WAIT) as v1,
        demo_x.DEMO_V2_AsyncClient(address, timeout=WAIT) as v2,
    ):
        return [
            await v1.DEMO_NULL(),  # type: ignore[func-returns-value]
            await v1.DEMO_ADD(2, 3),
            await v1.DEMO_ADD(2**31 - 1, 1),
            await v1.DEMO_ECHO(ECHO_TEXT),
            *[await v1.DEMO_COMPLEX(case.value()) for case in COMPLEX_CASES],
            await v2.DEMO2_NULL(),  # type: ignore[func-returns-value]
            await v2.DEMO2_ADD(2, 3),
        ]


def _expected_answers() -> list[Any]:
    """What demo.x's semantics (issue 13) give for the calls above, computed here."""
    results = []
    for case in COMPLEX_CASES:  # as the C client prints them: the numbers back to ints
        printed = case.expected()
        fields: dict[str, Any] = {k: v if k == "summary" else int(v) for k, v in printed.items()}
        results.append(demo_x.complex_res(**fields))
    return [None, 5, _int32(2**31), ECHO_TEXT, *results, None, 1005]


@pytest.mark.parametrize("client", ["sync", "async"])
@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_generated_clients_call_rpcgens_c_server(
    c_server: Path, transport: str, client: str
) -> None:
    from examples.rpc import demo

    def answers(address: str) -> list[Any]:
        if client == "sync":
            return _sync_answers(address)
        return asyncio.run(asyncio.wait_for(_async_answers(address), 4 * WAIT))

    with _c_serving(c_server, transport) as address:
        from_c = answers(address)
    server = servekit.make_server(f"{transport}://127.0.0.1:0", demo.DEMO_PROG, rpcbind=False)
    with serving(server):
        from_servekit = answers(f"{transport}://127.0.0.1:{server.server_address[1]}")
    assert from_c == _expected_answers()
    assert from_servekit == from_c
