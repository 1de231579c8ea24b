"""servekit's XDR codec against the stdlib's ``xdrlib`` (Python 3.11/3.12) on demo.x's
``complex_arg``, and the types ``servekit rpcgen`` compiles from demo.x against the same
types declared by hand: the time to encode and to decode one value, in one process.

    .venv/bin/python benchmarks/micro/xdr_codec.py [--rounds N]

servekit is ``xdr.encode(T, v)`` and ``xdr.decode(T, data)``, twice: ``declared`` with
``T`` the ``ComplexArg`` declared below by hand with ``servekit.rpc.xdr`` (as
tests/test_rpc_xdr.py declares it, and examples/rpc/demo.py did before issue 16), and
``generated`` with ``T`` the ``complex_arg`` of examples/rpc/demo_x.py, the module
``servekit rpcgen examples/rpc/demo.x`` writes (issue 16: at least as fast). The stdlib
side is a Packer/Unpacker encoder and decoder written for the same struct as rpcgen-style
code or a careful user would write it (pack_string, pack_hyper, pack_array, a loop for the
linked list, ..., the decoder checking the declared maximums, the enum and ``done()``), and
building the same objects as ``declared``. All three give the same bytes and values
(checked before timing). The six are timed in turns, ``timeit``-style, in CPU time of the
thread: each round times each one ``number`` times in a row, and the figure is the best
round (the median beside it). Prints microseconds per value, xdrlib's time over each of
servekit's (above 1: servekit is faster), and the hand-declared codec's time over the
generated one's (above 1: the generated one is faster).

xdrlib is gone from Python 3.13: there the script says so and times servekit's two alone.
"""

from __future__ import annotations

import argparse
import enum
import statistics
import sys
import time
import timeit
import warnings
from pathlib import Path
from typing import Annotated, Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # for examples.rpc.demo_x

from examples.rpc import demo_x

from servekit.rpc import xdr

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import xdrlib
    except ImportError:
        xdrlib = None  # type: ignore[assignment]


# -- demo.x's types, declared by hand ----------------------------------------------------


class ShapeKind(enum.IntEnum):
    SHAPE_CIRCLE = 1
    SHAPE_RECT = 2
    SHAPE_NONE = 3


@xdr.struct
class Rect:
    w: xdr.Int
    h: xdr.Int


@xdr.union(of=ShapeKind)
class Shape:
    kind: ShapeKind = xdr.discriminant()


@xdr.case(ShapeKind.SHAPE_CIRCLE)
class ShapeCircle(Shape):
    radius: xdr.Int


@xdr.case(ShapeKind.SHAPE_RECT)
class ShapeRect(Shape):
    r: Rect


@xdr.default
class ShapeOther(Shape):
    pass


@xdr.struct
class Node:
    value: xdr.Int
    next: Annotated[Node | None, xdr.optional("Node")]


@xdr.struct
class ComplexArg:
    name: Annotated[str, xdr.string(64)]
    big: xdr.Hyper
    ubig: xdr.UHyper
    opt: Annotated[int | None, xdr.optional(xdr.int32)]
    s: Shape
    values: Annotated[list[int], xdr.var_array(xdr.int32, 16)]
    blob: Annotated[bytes, xdr.var_opaque()]
    fixed4: Annotated[bytes, xdr.opaque(3)]
    list: Annotated[Node | None, xdr.optional(Node)]
    flag: xdr.Bool
    d: xdr.Double
    f: xdr.Float


#: The same struct, as servekit rpcgen compiles it from examples/rpc/demo.x.
GeneratedComplexArg = demo_x.complex_arg


def sample() -> ComplexArg:
    head = None
    for value in reversed(range(100, 110)):  # 10 nodes
        head = Node(value, head)
    return ComplexArg(
        name="servekit-demo-client",  # 20 characters
        big=-(2**40) - 12345,
        ubig=2**63 + 99,
        opt=42,
        s=ShapeCircle(radius=7),
        values=[i * 1000 - 7000 for i in range(16)],
        blob=bytes(range(100)),
        fixed4=b"abc",
        list=head,
        flag=True,
        d=3.141592653589793,
        f=2.5,
    )


# -- the same struct, by hand with xdrlib ------------------------------------------------


def xdrlib_encode(v: ComplexArg) -> bytes:
    p = xdrlib.Packer()
    p.pack_string(v.name.encode())
    p.pack_hyper(v.big)
    p.pack_uhyper(v.ubig)
    if v.opt is None:
        p.pack_bool(False)
    else:
        p.pack_bool(True)
        p.pack_int(v.opt)
    s: Any = v.s
    p.pack_int(s.kind)
    if s.kind == ShapeKind.SHAPE_CIRCLE:
        p.pack_int(s.radius)
    elif s.kind == ShapeKind.SHAPE_RECT:
        p.pack_int(s.r.w)
        p.pack_int(s.r.h)
    p.pack_array(v.values, p.pack_int)
    p.pack_opaque(v.blob)
    p.pack_fopaque(3, v.fixed4)
    node = v.list
    while node is not None:
        p.pack_bool(True)
        p.pack_int(node.value)
        node = node.next
    p.pack_bool(False)
    p.pack_bool(v.flag)
    p.pack_double(v.d)
    p.pack_float(v.f)
    return p.get_buffer()


def xdrlib_decode(data: bytes) -> ComplexArg:
    u = xdrlib.Unpacker(data)
    raw = u.unpack_string()
    if len(raw) > 64:
        raise ValueError("name: over 64 bytes")
    name = raw.decode()
    big = u.unpack_hyper()
    ubig = u.unpack_uhyper()
    opt = u.unpack_int() if u.unpack_bool() else None
    kind = ShapeKind(u.unpack_int())
    s: Shape
    if kind == ShapeKind.SHAPE_CIRCLE:
        s = ShapeCircle(radius=u.unpack_int())
    elif kind == ShapeKind.SHAPE_RECT:
        s = ShapeRect(r=Rect(u.unpack_int(), u.unpack_int()))
    else:
        s = ShapeOther(kind=kind)
    values = u.unpack_array(u.unpack_int)
    if len(values) > 16:
        raise ValueError("values: over 16 elements")
    blob = u.unpack_opaque()
    fixed4 = u.unpack_fopaque(3)
    head = last = None
    while u.unpack_bool():
        node = Node(u.unpack_int(), None)
        if last is None:
            head = node
        else:
            last.next = node
        last = node
    flag = u.unpack_bool()
    d = u.unpack_double()
    f = u.unpack_float()
    u.done()
    return ComplexArg(name, big, ubig, opt, s, values, blob, fixed4, head, flag, d, f)


# -- timing ------------------------------------------------------------------------------


def _report(op: str, times: dict[tuple[str, str], list[float]]) -> None:
    for who in ("declared", "generated", "xdrlib"):
        if (op, who) in times:
            runs = times[(op, who)]
            best, median = min(runs), statistics.median(runs)
            sys.stdout.write(f"{op} {who:9}  best {best:6.2f} us, median {median:6.2f} us\n")

    def ratio(slow: str, fast: str) -> str:
        over, under = times[(op, slow)], times[(op, fast)]
        return (
            f"{op} {slow}/{fast}: {min(over) / min(under):.2f}x (best), "
            f"{statistics.median(over) / statistics.median(under):.2f}x (median)\n"
        )

    if (op, "xdrlib") in times:
        sys.stdout.write(ratio("xdrlib", "declared"))
        sys.stdout.write(ratio("xdrlib", "generated"))
    sys.stdout.write(ratio("declared", "generated"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=60, help="rounds of the six (60)")
    args = parser.parse_args()
    value = sample()
    data = xdr.encode(ComplexArg, value)
    assert xdr.decode(ComplexArg, data) == value
    generated = xdr.decode(GeneratedComplexArg, data)
    assert xdr.encode(GeneratedComplexArg, generated) == data, "generated: other bytes"

    encode, decode = xdr.encode, xdr.decode
    cases: dict[tuple[str, str], Any] = {
        ("encode", "declared"): lambda: encode(ComplexArg, value),
        ("encode", "generated"): lambda: encode(GeneratedComplexArg, generated),
        ("decode", "declared"): lambda: decode(ComplexArg, data),
        ("decode", "generated"): lambda: decode(GeneratedComplexArg, data),
    }
    if xdrlib is None:
        sys.stdout.write(
            f"xdrlib is not importable on Python {sys.version.split()[0]} "
            "(removed in 3.13): servekit's two codecs alone\n"
        )
    else:
        assert xdrlib_encode(value) == data, "xdrlib and servekit give different bytes"
        assert xdrlib_decode(data) == value
        cases[("encode", "xdrlib")] = lambda: xdrlib_encode(value)
        cases[("decode", "xdrlib")] = lambda: xdrlib_decode(data)
    # CPU time of this thread, not the wall clock: a busy machine's other processes then
    # cost less of the figure (they still evict the caches).
    timers = {key: timeit.Timer(stmt, timer=time.thread_time) for key, stmt in cases.items()}
    # As many calls a round as fill about 20 ms for the slowest of them: short rounds,
    # many of them, so that some of each fall between the machine's busy spells.
    number = max(timer.autorange()[0] for timer in timers.values()) // 10
    times: dict[tuple[str, str], list[float]] = {key: [] for key in timers}
    for _ in range(args.rounds):
        for key, timer in timers.items():
            times[key].append(timer.timeit(number) / number * 1e6)

    sys.stdout.write(
        f"complex_arg: {len(data)} bytes; {args.rounds} rounds of {number} calls each, "
        f"Python {sys.version.split()[0]}\n"
    )
    for op in ("encode", "decode"):
        _report(op, times)


if __name__ == "__main__":
    main()
