"""Declaring an ONC RPC program in Python, and answering one call (no I/O).

A version of a program is a class; its procedures are methods marked with
``@procedure(number)``, whose annotations give the XDR types of the arguments and
of the result (``None`` for void)::

    class DemoV1(rpc.Version, program=0x20000123, version=1):
        @rpc.procedure(0)
        def DEMO_NULL(self) -> None:
            pass

        @rpc.procedure(1)
        def DEMO_ADD(self, a: xdr.Int, b: xdr.Int) -> xdr.Int:
            return a + b

    DEMO_PROG = rpc.Program(DemoV1, DemoV2)

One instance of the version class serves one call: ``self.call`` (the parsed call:
xid, credential, ...), ``self.credential`` (``AuthNone`` or ``AuthSys``),
``self.client_address`` and ``self.server``. A subclass that overrides a procedure
without the decorator keeps its number and types, so a generated base class (what
``servekit rpcgen`` writes) is filled in by subclassing it. On the async engine a
procedure may be ``async def``.

``Program.answer(record, client_address, server)`` is the one place a call becomes a
reply, for every transport and engine: the reply's bytes, None for a message to drop,
or (for an ``async def`` procedure) an awaitable of the reply.
"""

from __future__ import annotations

import inspect
import logging
import struct
import sys
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from servekit.rpc import message, xdr
from servekit.rpc._declare import row_unpack

if typing.TYPE_CHECKING:
    from servekit.rpc.message import Call, Credential
from servekit.rpc.replycache import IN_PROGRESS, ReplyCache

__all__ = ["Procedure", "Program", "Version", "procedure", "unimplemented"]

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

_NUMBER = "__rpc_procedure__"
_UNIMPLEMENTED = "__rpc_unimplemented__"


def procedure(number: int) -> Callable[[F], F]:
    """Mark a method of a Version as the procedure ``number``."""
    if isinstance(number, bool) or not isinstance(number, int) or not 0 <= number < 2**32:
        raise TypeError(f"a procedure number is an unsigned int, not {number!r}")

    def mark(method: F) -> F:
        setattr(method, _NUMBER, number)
        return method

    return mark


def unimplemented(method: F) -> F:
    """Mark a procedure as not served (what ``servekit rpcgen``'s server base classes
    declare): a Program answers a call to it PROC_UNAVAIL until a subclass overrides
    it. A client still calls it by this declaration."""
    setattr(method, _UNIMPLEMENTED, True)
    return method


@dataclass(frozen=True, slots=True)
class Procedure:
    """A procedure of a version: its number, its method's name, its XDR types."""

    number: int
    name: str
    args: tuple[xdr.XdrType[Any], ...]
    result: xdr.XdrType[Any]
    is_async: bool
    #: The arguments of a call, from its bytes (all of them); XdrError if they are not.
    decode_args: Callable[[bytes], tuple[Any, ...]] = field(
        default=lambda data: (), compare=False, repr=False
    )


class Version:
    """One version of an RPC program; subclass it with ``program=`` and ``version=``.

    An instance serves one call (see the module's docstring).
    """

    program: ClassVar[int]
    version: ClassVar[int]
    _procedures: ClassVar[dict[int, str]] = {}
    _typed: ClassVar[dict[int, Procedure] | None] = None

    def __init_subclass__(cls, *, program: int | None = None, version: int | None = None) -> None:
        super().__init_subclass__()
        if program is not None:
            cls.program = _unsigned(program, "program")
        if version is not None:
            cls.version = _unsigned(version, "version")
        numbers: dict[int, str] = {}
        for klass in reversed(cls.__mro__):
            for name, value in vars(klass).items():
                number = getattr(value, _NUMBER, None)
                if number is None:
                    continue
                if numbers.get(number, name) != name:
                    raise TypeError(
                        f"{cls.__name__}: procedures {numbers[number]} and {name} are both "
                        f"number {number}"
                    )
                numbers[number] = name
        cls._procedures = numbers
        cls._typed = None

    def __init__(self, call: Call, client_address: Any, server: Any) -> None:
        self.call = call
        self.credential: Credential = call.credential
        self.client_address = client_address
        self.server = server

    @classmethod
    def procedures(cls) -> dict[int, Procedure]:
        """Every procedure, by number, with its XDR types (read from the annotations
        of the method that declared it, when first asked)."""
        if cls._typed is None:
            cls._typed = {
                number: _typed_procedure(cls, number, name)
                for number, name in sorted(cls._procedures.items())
            }
        return cls._typed


def _unsigned(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
        raise TypeError(f"a {what} number is an unsigned int, not {value!r}")
    return value


def _typed_procedure(cls: type[Version], number: int, name: str) -> Procedure:
    declared = _declaring_method(cls, name)
    module = sys.modules.get(declared.__module__)
    namespace = dict(vars(module)) if module is not None else {}
    try:
        hints = typing.get_type_hints(declared, globalns=namespace, include_extras=True)
    except NameError as exc:
        raise TypeError(f"{cls.__name__}.{name}: {exc}") from None
    parameters = list(inspect.signature(declared).parameters.values())[1:]  # self
    args: list[xdr.XdrType[Any]] = []
    for parameter in parameters:
        if parameter.kind not in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD):
            raise TypeError(f"{cls.__name__}.{name}: arguments are positional, {parameter} is not")
        if parameter.name not in hints:
            raise TypeError(f"{cls.__name__}.{name}: argument {parameter.name} has no XDR type")
        args.append(_xdr_of(hints[parameter.name], cls, name))
    returned = hints.get("return", type(None))
    result = xdr.void if returned is type(None) else _xdr_of(returned, cls, name)
    method = getattr(cls, name)
    where = f"{cls.__name__}.{name}"
    decoder = _arguments(where, [(p.name, t) for p, t in zip(parameters, args, strict=True)])
    asynchronous = inspect.iscoroutinefunction(method)
    return Procedure(number, name, tuple(args), result, asynchronous, decoder)


def _arguments(
    where: str, fields: list[tuple[str, xdr.XdrType[Any]]]
) -> Callable[[bytes], tuple[Any, ...]]:
    """How a procedure's arguments are read from a call: exactly, all the bytes."""
    if not fields:

        def none(data: bytes) -> tuple[Any, ...]:
            if data:
                raise xdr.XdrError(f"{len(data)} bytes left over after the arguments")
            return ()

        return none
    unpack = row_unpack(f"arguments of {where}", fields)

    def decode(data: bytes) -> tuple[Any, ...]:
        try:
            values, end = unpack(data, 0, xdr._Decoding(xdr.DEFAULT_LIMITS))
        except (struct.error, IndexError):
            raise xdr.XdrError(f"arguments of {where}: the data ends too soon") from None
        if end != len(data):
            raise xdr.XdrError(f"{len(data) - end} bytes left over after the arguments")
        return values  # type: ignore[no-any-return]

    return decode


def _declaring_method(cls: type[Version], name: str) -> Any:
    """The method that carries the @procedure mark (an override may not)."""
    for klass in cls.__mro__:
        value = vars(klass).get(name)
        if value is not None and hasattr(value, _NUMBER):
            return value
    raise AssertionError(name)  # _procedures only names marked methods


def _xdr_of(declared: Any, cls: type[Version], name: str) -> xdr.XdrType[Any]:
    try:
        return xdr.type_of(declared)
    except TypeError as exc:
        raise TypeError(f"{cls.__name__}.{name}: {exc}") from None


class Program:
    """An RPC program: its versions, served together; what make_server serves."""

    def __init__(self, *versions: type[Version], name: str | None = None) -> None:
        if not versions:
            raise TypeError("a Program needs at least one Version class")
        numbers = {getattr(v, "program", None) for v in versions}
        if len(numbers) != 1 or None in numbers:
            raise TypeError(
                "the versions of a Program declare one program number (class "
                "V(rpc.Version, program=N, version=M)), not " + repr(sorted(map(str, numbers)))
            )
        self.number: int = versions[0].program
        self.versions: dict[int, type[Version]] = {}
        for version in versions:
            if version.version in self.versions:
                raise TypeError(
                    f"two classes for version {version.version} of program {self.number}"
                )
            self.versions[version.version] = version
        self.low, self.high = min(self.versions), max(self.versions)
        self.name = name or versions[0].__name__
        # Every procedure by (version, number): one look-up a call. Made now, so a
        # declaration mistake is a TypeError here, not at a call.
        self._procedures = {
            (version.version, number): (version, proc)
            for version in versions
            for number, proc in version.procedures().items()
            if not getattr(getattr(version, proc.name), _UNIMPLEMENTED, False)
        }

    def __repr__(self) -> str:
        return f"<rpc.Program {self.name} {self.number} v{self.low}-{self.high}>"

    def answer(
        self, record: bytes, client_address: Any, server: Any, cache: ReplyCache | None = None
    ) -> Any:
        """The reply to the call in ``record``: its bytes, None (drop the message), or
        an awaitable of the bytes when the procedure is a coroutine function.

        A procedure that raises is logged through ``server.handle_error`` (with its
        traceback) and answered with SYSTEM_ERR. With a ``cache`` (datagrams), a call
        seen before is answered from it, or dropped while its first copy runs.
        """
        try:
            call = message.parse_call(record)
        except message.NotACall as exc:
            logger.debug("%s: dropped a message from %s: %s", server, client_address, exc)
            return None
        except message.CallRejected as exc:
            logger.info("%s: refused a call from %s: %s", server, client_address, exc)
            return exc.reply
        if cache is None:
            return self._answer(call, client_address, server)
        key = (call.xid, call.prog, call.vers, call.proc, client_address)
        seen = cache.begin(key)
        if seen is IN_PROGRESS:
            logger.debug(
                "%s: xid %d from %s again, still running", server, call.xid, client_address
            )
            return None
        if isinstance(seen, bytes):
            logger.debug(
                "%s: xid %d from %s again: the same reply", server, call.xid, client_address
            )
            return seen
        try:
            reply = self._answer(call, client_address, server)
        except BaseException:
            cache.finish(key, None)
            raise
        if inspect.isawaitable(reply):
            return _cached_later(reply, cache, key)
        cache.finish(key, reply)
        return reply

    def _answer(self, call: Call, client_address: Any, server: Any) -> Any:
        found = self._procedures.get((call.vers, call.proc)) if call.prog == self.number else None
        if found is None:
            return self._not_found(call)
        version, proc = found
        try:
            args = proc.decode_args(call.args)
        except xdr.XdrError as exc:
            logger.info(
                "%s: GARBAGE_ARGS for %s from %s: %s", server, proc.name, client_address, exc
            )
            return message.garbage_args(call.xid)
        try:
            outcome = getattr(version(call, client_address, server), proc.name)(*args)
        except Exception:
            return _failed(call, client_address, server)
        if proc.is_async:  # known from the declaration: no awaitable test per call
            return _finish_async(outcome, proc, call, client_address, server)
        return _reply(outcome, proc, call, client_address, server)

    def _not_found(self, call: Call) -> bytes:
        """The refusal of a call to a procedure that is not here."""
        if call.prog != self.number:
            return message.prog_unavail(call.xid)
        if call.vers not in self.versions:
            return message.prog_mismatch(call.xid, self.low, self.high)
        return message.proc_unavail(call.xid)


async def _cached_later(reply: Awaitable[bytes], cache: ReplyCache, key: Any) -> bytes:
    try:
        data = await reply
    except BaseException:
        cache.finish(key, None)
        raise
    cache.finish(key, data)
    return data


def _reply(outcome: Any, proc: Procedure, call: Call, client_address: Any, server: Any) -> bytes:
    if outcome is None and proc.result is xdr.void:
        return message.success(call.xid)
    reply = bytearray(message.success(call.xid))
    try:
        proc.result.pack(reply, outcome)
    except Exception:
        try:
            xdr.encode(proc.result, outcome)  # the XdrError naming value and type, for the log
        except xdr.XdrError:
            return _failed(call, client_address, server)
        raise
    return bytes(reply)


async def _finish_async(
    outcome: Awaitable[Any], proc: Procedure, call: Call, client_address: Any, server: Any
) -> bytes:
    try:
        result = await outcome
    except Exception:
        return _failed(call, client_address, server)
    return _reply(result, proc, call, client_address, server)


def _failed(call: Call, client_address: Any, server: Any) -> bytes:
    """In an except block: log what the procedure raised, and answer SYSTEM_ERR."""
    handle_error = getattr(server, "handle_error", None)
    if handle_error is not None:
        handle_error(call, client_address)
    else:
        logger.error("procedure %d of program %d failed", call.proc, call.prog)
    return message.system_err(call.xid)
