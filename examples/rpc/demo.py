"""The program of demo.x, served by servekit: the interop example of docs/rpc.md.

    servekit serve examples.rpc.demo:DEMO_PROG --listen tcp://127.0.0.1:0 --listen udp://127.0.0.1:0

The types and the server base classes are demo.x's, compiled by ``servekit rpcgen
examples/rpc/demo.x -o examples/rpc/demo_x.py`` (tests/test_rpcgen.py fails when that
file is stale); the procedures below are the semantics the interop checks hold a server
to. Arithmetic wraps as C's does on the machines rpcgen's servers run on (two's
complement), so that both answer alike.
"""

from __future__ import annotations

from examples.rpc import demo_x
from examples.rpc.demo_x import (
    DEMO_MAXNAME,
    DEMO_MAXVALUES,
    complex_arg,
    complex_res,
    node,
    rect,
    shape,
    shape_default,
    shape_kind,
    shape_SHAPE_CIRCLE,
    shape_SHAPE_RECT,
)

from servekit import rpc

__all__ = [
    "DEMO_MAXNAME",
    "DEMO_MAXVALUES",
    "DEMO_PROG",
    "DEMO_V1",
    "DEMO_V2",
    "complex_arg",
    "complex_res",
    "node",
    "rect",
    "shape",
    "shape_SHAPE_CIRCLE",
    "shape_SHAPE_RECT",
    "shape_default",
    "shape_kind",
]


def _int32(value: int) -> int:
    return (value + 2**31) % 2**32 - 2**31


def _int64(value: int) -> int:
    return (value + 2**63) % 2**64 - 2**63


class DEMO_V1(demo_x.DEMO_V1):
    def DEMO_NULL(self) -> None:
        pass

    def DEMO_ADD(self, a: int, b: int) -> int:
        return _int32(a + b)

    def DEMO_ECHO(self, text: str) -> str:
        return text

    def DEMO_COMPLEX(self, arg: complex_arg) -> complex_res:
        match arg.s:
            case shape_SHAPE_CIRCLE(radius=radius):
                area = _int32(radius * radius * 3)
            case shape_SHAPE_RECT(r=r):
                area = _int32(r.w * r.h)
            case _:
                area = -1
        length, item = 0, arg.list
        while item is not None:
            length, item = length + 1, item.next
        summary = "name=%s kind=%d flag=%d d=%.3f f=%.3f fixed=%02x%02x%02x" % (  # noqa: UP031 - C's format, as the C server writes it
            arg.name, arg.s.kind, arg.flag, arg.d, arg.f, *arg.fixed4,
        )  # fmt: skip
        return complex_res(
            values_sum=_int32(sum(arg.values)),
            opt_present=int(arg.opt is not None),
            opt_value=arg.opt or 0,
            big_plus_one=_int64(arg.big + 1),
            ubig=arg.ubig,
            area=area,
            list_len=length,
            blob_len=len(arg.blob),
            summary=summary,
        )


class DEMO_V2(demo_x.DEMO_V2):
    def DEMO2_NULL(self) -> None:
        pass

    def DEMO2_ADD(self, a: int, b: int) -> int:
        return _int32(a + b + 1000)


DEMO_PROG = rpc.Program(DEMO_V1, DEMO_V2, name="DEMO_PROG")
