"""The program of demo.x, served by servekit: the interop example of docs/rpc.md.

    servekit serve examples.rpc.demo:DEMO_PROG --listen tcp://127.0.0.1:0 --listen udp://127.0.0.1:0

The types and the version classes below are demo.x's, declared by hand with
``servekit.rpc.xdr`` (what ``servekit rpcgen`` will write); the procedures are the
semantics the interop checks hold a server to. Arithmetic wraps as C's does on the
machines rpcgen's servers run on (two's complement), so that both answer alike.
"""

from __future__ import annotations

import enum
from typing import Annotated

from servekit import rpc
from servekit.rpc import xdr

DEMO_MAXNAME = 64
DEMO_MAXVALUES = 16


class shape_kind(enum.IntEnum):
    SHAPE_CIRCLE = 1
    SHAPE_RECT = 2
    SHAPE_NONE = 3


@xdr.struct
class rect:
    w: xdr.Int
    h: xdr.Int


@xdr.union(of=shape_kind)
class shape:
    kind: shape_kind = xdr.discriminant()


@xdr.case(shape_kind.SHAPE_CIRCLE)
class shape_SHAPE_CIRCLE(shape):
    radius: xdr.Int


@xdr.case(shape_kind.SHAPE_RECT)
class shape_SHAPE_RECT(shape):
    r: rect


@xdr.default
class shape_default(shape):
    pass


@xdr.struct
class node:
    value: xdr.Int
    next: Annotated[node | None, xdr.optional("node")]


@xdr.struct
class complex_arg:
    name: Annotated[str, xdr.string(DEMO_MAXNAME)]
    big: xdr.Hyper
    ubig: xdr.UHyper
    opt: Annotated[int | None, xdr.optional(xdr.int32)]
    s: shape
    values: Annotated[list[int], xdr.var_array(xdr.int32, DEMO_MAXVALUES)]
    blob: Annotated[bytes, xdr.var_opaque()]
    fixed4: Annotated[bytes, xdr.opaque(3)]
    list: Annotated[node | None, xdr.optional(node)]
    flag: xdr.Bool
    d: xdr.Double
    f: xdr.Float


@xdr.struct
class complex_res:
    values_sum: xdr.Int
    opt_present: xdr.Int
    opt_value: xdr.Int
    big_plus_one: xdr.Hyper
    ubig: xdr.UHyper
    area: xdr.Int
    list_len: xdr.Int
    blob_len: xdr.Int
    summary: Annotated[str, xdr.string()]


def _int32(value: int) -> int:
    return (value + 2**31) % 2**32 - 2**31


def _int64(value: int) -> int:
    return (value + 2**63) % 2**64 - 2**63


class DEMO_V1(rpc.Version, program=0x20000123, version=1):
    @rpc.procedure(0)
    def DEMO_NULL(self) -> None:
        pass

    @rpc.procedure(1)
    def DEMO_ADD(self, a: xdr.Int, b: xdr.Int) -> xdr.Int:
        return _int32(a + b)

    @rpc.procedure(2)
    def DEMO_ECHO(self, text: Annotated[str, xdr.string()]) -> Annotated[str, xdr.string()]:
        return text

    @rpc.procedure(3)
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


class DEMO_V2(rpc.Version, program=0x20000123, version=2):
    @rpc.procedure(0)
    def DEMO2_NULL(self) -> None:
        pass

    @rpc.procedure(1)
    def DEMO2_ADD(self, a: xdr.Int, b: xdr.Int) -> xdr.Int:
        return _int32(a + b + 1000)


DEMO_PROG = rpc.Program(DEMO_V1, DEMO_V2, name="DEMO_PROG")
