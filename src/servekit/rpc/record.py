"""ONC RPC record marking over TCP (RFC 5531, section 11): a reader and a writer.

This module contains no networking code at all: no sockets, no threads, no
clocks. The caller reads bytes from wherever they come from and hands them to
a :class:`RecordReader`, which answers with a whole record (``bytes``),
:data:`NEED_DATA` ("more, please") or :data:`CLOSED` (the stream ended between
two records); to send, :func:`record_pieces` or :func:`encode_record` frame a
record. Every engine (threads, fork, asyncio) drives the same objects, and a
client reading replies uses the same reader as a server reading calls.

The wire format: a record (one RPC call or reply) is one or more fragments;
each fragment is a 4-byte big-endian header and then the fragment's bytes. The
header's top bit says "this is the record's last fragment"; its low 31 bits
are the fragment's length. The record is the concatenation of its fragments'
bytes, headers left out.

Which to use:

- Reading (a server's calls, a client's replies): one :class:`RecordReader`
  per connection. After every ``receive_data()``, call ``next_record()`` until
  it answers NEED_DATA.
- Writing with ``socket.sendmsg()`` / ``writev`` or a transport's
  ``writelines()``: :func:`record_pieces`, which copies nothing of the payload.
- Writing with a plain ``sendall()``: :func:`encode_record`, one ``bytes``.

Theory of operation:

- Rule 1: a limit is checked on the header, before a byte of the fragment is
  buffered. A header whose length would take the record past
  ``max_record_size``, or that is the record's ``max_fragments`` + 1st
  fragment, fails as soon as its 4 bytes are in, whatever follows it.
- Rule 2: nothing is copied twice over. The reader keeps two ``bytearray``:
  what it was given and has not parsed, and the fragment bytes of the current
  record so far. Parsing takes bytes off the front of the first (which costs
  O(1) in CPython) and appends them to the second, and a finished record is
  sliced out once; a record that arrives whole in one fragment skips the
  second buffer. So a record costs time proportional to its size however many
  ``receive_data()`` calls it came in, even one byte at a time.
- Rule 3: memory is bounded. Once ``next_record()`` has answered NEED_DATA,
  the reader holds at most ``max_record_size`` + 3 bytes (the current
  record's fragment bytes, and at most 3 bytes of the next header):
  see :attr:`RecordReader.buffered`. Before that, it holds what it was given.
- Rule 4: a broken stream stays broken. After a :class:`RecordError`,
  ``next_record()`` raises it again and new bytes are dropped: record
  boundaries are lost, and nothing more from the peer can be trusted. Close
  the connection.

Zero-length fragments. RFC 5531 allows fragments of 0 to 2**31 - 1 bytes. The
reader accepts a zero-length *last* fragment and refuses a zero-length fragment
that is *not* the last (a header of four zero bytes), with ``limit=None``:

- libtirpc's own writer sends a zero-length last fragment: when a record fills
  its send buffer exactly, ``xdrrec_putbytes()`` flushes a full non-last
  fragment and ``xdrrec_endofrecord()`` then ends the record with an empty
  one (``flush_out(rstrm, TRUE)`` with nothing after the header). Refusing it
  would refuse libtirpc clients whose calls are a multiple of 65,532 bytes. A
  record made of a single zero-length last fragment is an empty record:
  ``next_record()`` returns ``b""``, and the RPC layer above refuses it as a
  call or reply too short to hold an xid.
- libtirpc's reader refuses the all-zero header: ``set_input_fragment()`` in
  ``xdr_rec.c`` fails on ``header == 0`` ("the only record size we can
  positively identify as being 'wildly incorrect' is zero"); its non-blocking
  server path (``__xdrrec_getrec()``) refuses every zero-length fragment. No
  writer we know of sends one: it carries nothing, and four zero bytes where a
  header should be are the likeliest sign of a stream out of step with its
  records.
- Every fragment, empty or not, counts toward ``max_fragments``, and an empty
  record costs its sender 4 bytes each, so no stream of empty fragments makes
  the reader loop or buffer without end.
"""

from __future__ import annotations

import enum
import struct
from typing import Final, Literal, TypeAlias

__all__ = [
    "CLOSED",
    "DEFAULT_MAX_FRAGMENT",
    "DEFAULT_MAX_FRAGMENTS",
    "DEFAULT_MAX_RECORD_SIZE",
    "HEADER_LENGTH",
    "LAST_FRAGMENT",
    "MAX_FRAGMENT_LENGTH",
    "NEED_DATA",
    "Closed",
    "NeedData",
    "RecordError",
    "RecordLimit",
    "RecordReader",
    "encode_record",
    "record_pieces",
]

#: Every fragment starts with a 4-byte big-endian header.
HEADER_LENGTH: Final = 4
#: The header's top bit: this fragment is the last of its record.
LAST_FRAGMENT: Final = 0x8000_0000
#: The header's low 31 bits are the fragment's length, so no fragment is longer.
MAX_FRAGMENT_LENGTH: Final = 0x7FFF_FFFF

#: The default bound on a record's size (the sum of its fragments' lengths): 1 MiB.
#: It holds every message of the common RPC programs (rpcbind, mount, NLM, NFS with
#: rsize/wsize up to 512 KiB) and bounds what one connection can make us buffer. A
#: server for NFS with 1 MiB reads and writes must raise it: Linux's own server
#: accepts 1 MiB of payload (RPCSVC_MAXPAYLOAD) plus the RPC and NFS headers.
DEFAULT_MAX_RECORD_SIZE: Final = 1024 * 1024
#: The default bound on the fragments of one record: 1024. A 1 MiB record in
#: libtirpc's fragments (:data:`DEFAULT_MAX_FRAGMENT`) takes 17 of them; 1024 still
#: allows fragments of 1 KiB on average, and stops a peer that sends a record one
#: byte (or zero bytes) per fragment, for 4 bytes of header per byte of data, long
#: before the record is big.
DEFAULT_MAX_FRAGMENTS: Final = 1024
#: The default largest fragment :func:`record_pieces` and :func:`encode_record` write:
#: 65,532 bytes, so that header and fragment make 64 KiB. It is what libtirpc writes
#: over TCP (its default send buffer, ``__rpc_get_t_size()`` for TCP, is 64 KiB, and a
#: fragment is the buffer less its header), so any receiver that takes libtirpc's
#: records takes ours, including those that bound a fragment by their own buffer.
DEFAULT_MAX_FRAGMENT: Final = 64 * 1024 - HEADER_LENGTH

#: The name of the limit a :class:`RecordError` tripped, or None for a malformed stream.
RecordLimit: TypeAlias = Literal["max_record_size", "max_fragments"] | None


class RecordError(ValueError):
    """The stream broke the record marking standard or one of the reader's limits.

    ``limit`` names the limit that tripped (``"max_record_size"`` or
    ``"max_fragments"``), or is None when the stream is malformed: a
    zero-length fragment that is not the last, or a stream that ended in the
    middle of a record (the message starts with "truncated record"). Either
    way the connection is of no further use: close it.
    """

    def __init__(self, message: str, *, limit: RecordLimit = None) -> None:
        super().__init__(message)
        self.limit: RecordLimit = limit


class NeedData(enum.Enum):
    """The type of :data:`NEED_DATA`, so that ``result is NEED_DATA`` narrows types."""

    NEED_DATA = "NEED_DATA"

    def __repr__(self) -> str:
        return self.value


class Closed(enum.Enum):
    """The type of :data:`CLOSED`, so that ``result is CLOSED`` narrows types."""

    CLOSED = "CLOSED"

    def __repr__(self) -> str:
        return self.value


#: ``next_record()`` returns this when no whole record has been received yet.
NEED_DATA: Final = NeedData.NEED_DATA
#: ``next_record()`` returns this when the stream ended cleanly, between two records.
CLOSED: Final = Closed.CLOSED


class _State(enum.Enum):
    HEADER = "awaiting a fragment header"
    FRAGMENT = "reading a fragment"
    CLOSED = "closed"
    ERROR = "broken"


_HEADER = _State.HEADER
_unpack_header = struct.Struct(">I").unpack_from
_pack_header = struct.Struct(">I").pack


class RecordReader:
    """Reassembles the records of one byte stream (one TCP connection).

    Methods for the caller:

    - receive_data(data)   # b"" means the peer closed the stream
    - next_record() -> bytes | NEED_DATA | CLOSED; raises RecordError

    Properties:

    - buffered           # bytes held now; see Rule 3 in the module's docstring
    - max_record_size
    - max_fragments

    Use it so::

        reader = RecordReader()
        while True:
            data = sock.recv(65536)
            reader.receive_data(data)          # b"" at the end of the stream
            while (record := reader.next_record()) is not NEED_DATA:
                if record is CLOSED:
                    return
                handle(record)                 # bytes: one whole RPC message

    ``max_record_size`` bounds the sum of one record's fragment lengths (not
    counting headers), ``max_fragments`` the number of its fragments; both are
    checked on each fragment's header, before its bytes are buffered.
    """

    def __init__(
        self,
        *,
        max_record_size: int = DEFAULT_MAX_RECORD_SIZE,
        max_fragments: int = DEFAULT_MAX_FRAGMENTS,
    ) -> None:
        if max_record_size < 0:
            raise ValueError(f"max_record_size={max_record_size} is negative")
        if max_fragments < 1:
            raise ValueError(f"max_fragments={max_fragments}: a record has at least 1 fragment")
        self._max_record_size = max_record_size
        self._max_fragments = max_fragments
        self._input = bytearray()  # received and not yet parsed
        self._record = bytearray()  # the current record's fragment bytes so far
        self._state = _State.HEADER
        self._eof = False
        self._fragment_left = 0  # bytes of the current fragment not yet moved to _record
        self._last = False  # the current fragment is its record's last
        self._fragments = 0  # headers read for the current record
        self._size = 0  # the sum of those headers' lengths
        self._error: RecordError | None = None

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self._state.value}, {self.buffered} bytes buffered"
            f"{', peer closed' if self._eof and self._state is not _State.CLOSED else ''}>"
        )

    @property
    def max_record_size(self) -> int:
        """The largest record accepted, in bytes of fragment data."""
        return self._max_record_size

    @property
    def max_fragments(self) -> int:
        """The most fragments accepted in one record."""
        return self._max_fragments

    @property
    def buffered(self) -> int:
        """The bytes the reader holds: received and not yet returned in a record.

        Once ``next_record()`` has answered NEED_DATA this is at most
        ``max_record_size + 3``: what may have arrived of the current record and
        of the next fragment header. Read-only; for tests and metrics.
        """
        return len(self._input) + len(self._record)

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Add bytes received from the peer; ``b""`` says the peer closed the stream
        (so never pass an empty chunk to mean "nothing yet").

        Nothing is parsed here: call ``next_record()`` after. Bytes received
        after a RecordError are dropped. Raises RuntimeError for bytes after
        ``b""``.
        """
        if not data:
            self._eof = True
            return
        if self._eof:
            raise RuntimeError("data received after the end of the stream (b'')")
        if self._error is None:
            self._input += data

    def next_record(self) -> bytes | NeedData | Closed:
        """Return the next whole record, NEED_DATA, or CLOSED once the stream has
        ended between two records (and for every call after that).

        Raises RecordError as soon as a fragment header breaks a limit or the
        standard, or when the stream ended in the middle of a record; and again
        on every call after that.
        """
        data = self._input
        if not data and self._state is _HEADER and not self._fragments and not self._eof:
            return NEED_DATA  # between records, nothing more in: asked after every record
        if (
            self._state is _HEADER
            and not self._fragments
            and len(data) >= HEADER_LENGTH
            and (header := _unpack_header(data)[0]) & LAST_FRAGMENT
            and (length := header & MAX_FRAGMENT_LENGTH) <= len(data) - HEADER_LENGTH
            and length <= self._max_record_size
        ):
            # A whole one-fragment record is in, the common case: taken here,
            # not by _advance(), for a third of the time per record.
            end = HEADER_LENGTH + length
            whole = bytes(data[HEADER_LENGTH:end])
            del data[:end]
            return whole
        if self._error is not None:
            raise RecordError(str(self._error), limit=self._error.limit)
        try:
            record = self._advance()
            if record is None and self._eof:
                self._check_clean_end()
                self._state = _State.CLOSED
                return CLOSED
        except RecordError as exc:
            self._fail(exc)
            raise
        return NEED_DATA if record is None else record

    def _advance(self) -> bytes | None:
        """Parse what was received: the next whole record, or None if it is not in yet."""
        data = self._input
        while True:
            if self._state is not _State.FRAGMENT:
                if len(data) < HEADER_LENGTH:
                    return None
                header = int.from_bytes(data[:HEADER_LENGTH], "big")
                del data[:HEADER_LENGTH]
                self._start_fragment(header)
            left = self._fragment_left
            if self._last and not self._record and len(data) >= left:
                # The whole record is this one fragment, and it is in: one copy.
                with memoryview(data) as view:
                    record = bytes(view[:left])
                del data[:left]
                self._end_record()
                return record
            taken = min(left, len(data))
            if taken:
                with memoryview(data) as view:
                    self._record += view[:taken]
                del data[:taken]
                self._fragment_left = left = left - taken
            if left:
                return None
            self._state = _State.HEADER
            if self._last:
                record = bytes(self._record)
                self._end_record()
                return record

    def _start_fragment(self, header: int) -> None:
        """Check a fragment's header against the limits, and start reading the fragment."""
        length = header & MAX_FRAGMENT_LENGTH
        last = bool(header & LAST_FRAGMENT)
        self._fragments += 1
        if self._fragments > self._max_fragments:
            raise RecordError(
                f"a record of more than {self._max_fragments} fragments (max_fragments)",
                limit="max_fragments",
            )
        if length == 0 and not last:
            raise RecordError(
                f"a zero-length fragment that is not the last (fragment {self._fragments} "
                "of a record): the stream is out of step with its records"
            )
        if self._size + length > self._max_record_size:
            raise RecordError(
                f"a fragment of {length} bytes would make a record of at least "
                f"{self._size + length} bytes, over max_record_size={self._max_record_size}",
                limit="max_record_size",
            )
        self._size += length
        self._fragment_left = length
        self._last = last
        self._state = _State.FRAGMENT

    def _end_record(self) -> None:
        self._record.clear()  # frees the buffer: an idle connection holds nothing
        self._state = _State.HEADER
        self._fragment_left = self._fragments = self._size = 0
        self._last = False

    def _check_clean_end(self) -> None:
        """At the end of the stream, with no whole record left: raise unless between records."""
        if self._state is _State.FRAGMENT:
            got = self._size - self._fragment_left
            raise RecordError(
                f"truncated record: the stream ended {self._fragment_left} bytes before the end "
                f"of fragment {self._fragments} ({got} of {self._size} bytes received)"
            )
        if self._input:
            raise RecordError(
                f"truncated record: the stream ended {len(self._input)} bytes into "
                f"a {HEADER_LENGTH}-byte fragment header"
            )
        if self._fragments:
            raise RecordError(
                f"truncated record: the stream ended after fragment {self._fragments}, "
                f"which was not the last ({self._size} bytes received)"
            )

    def _fail(self, exc: RecordError) -> None:
        self._error = exc
        self._state = _State.ERROR
        self._input.clear()
        self._record.clear()


def record_pieces(
    payload: bytes | bytearray | memoryview, max_fragment: int = DEFAULT_MAX_FRAGMENT
) -> list[bytes | memoryview]:
    """Frame ``payload`` as one record: headers and slices of it, in order, for ``writev``.

    Hand the list to ``socket.sendmsg()`` or a transport's ``writelines()``:
    the payload is not copied (its pieces are memoryviews of it, or the payload
    itself when it fits one fragment), so do not change a bytearray payload
    until they are sent. Fragments hold at most ``max_fragment`` bytes
    (1 to 2**31 - 1; default :data:`DEFAULT_MAX_FRAGMENT`). An empty payload is
    one empty last fragment: a lone header.
    """
    _check_max_fragment(max_fragment)
    view = memoryview(payload).cast("B")  # a view of bytes, whatever the payload's format
    size = view.nbytes
    if size <= max_fragment:
        header = (LAST_FRAGMENT | size).to_bytes(HEADER_LENGTH, "big")
        if not size:
            return [header]
        return [header, payload if isinstance(payload, bytes) else view]
    pieces: list[bytes | memoryview] = []
    for start in range(0, size, max_fragment):
        end = min(start + max_fragment, size)
        flag = LAST_FRAGMENT if end == size else 0
        pieces += ((flag | (end - start)).to_bytes(HEADER_LENGTH, "big"), view[start:end])
    return pieces


def encode_record(
    payload: bytes | bytearray | memoryview, max_fragment: int = DEFAULT_MAX_FRAGMENT
) -> bytes:
    """Frame ``payload`` as one record, in one ``bytes`` (the payload copied once).

    For ``sendall()``; with ``sendmsg()`` or ``writelines()`` prefer
    :func:`record_pieces`, which copies nothing. ``max_fragment`` as there.
    """
    if type(payload) is bytes and 0 < len(payload) <= max_fragment <= MAX_FRAGMENT_LENGTH:
        # One fragment, the common case: one concatenation, no list of pieces.
        return _pack_header(LAST_FRAGMENT | len(payload)) + payload
    return b"".join(record_pieces(payload, max_fragment))


def _check_max_fragment(max_fragment: int) -> None:
    if not 1 <= max_fragment <= MAX_FRAGMENT_LENGTH:
        raise ValueError(
            f"max_fragment={max_fragment} is outside 1-{MAX_FRAGMENT_LENGTH}, "
            "the lengths a fragment header can say"
        )
