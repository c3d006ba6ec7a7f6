"""Where a download's bytes go while they arrive: inflated, sized and hashed piece by piece.

A source feeds an object's stored bytes to a sink as they come off the wire (or the disk) instead of
holding the whole object first, as cvmfs does: memory stays bounded by a piece whatever the object's
size, and each piece is hashed, inflated and written while it is still in the CPU's caches. Nothing
unverified is used: :class:`Checked` tells at the end whether the stored bytes matched their content
hash, and the cache moves an object's file into place only then (:mod:`ucernvm.client.cache`). A
download's pieces are inflated before that verdict, as cvmfs does, but never beyond the size the
(verified) catalog gives: a hostile server can make the client inflate no more than a good one would.
"""

from __future__ import annotations

from typing import Protocol

from isal import isal_zlib

from ucernvm.cvmfs.hashing import ContentHash
from ucernvm.errors import FormatError

# The most a source hands a sink at once, a read off the socket or the disk: each piece is a turn of
# the source's loop (hashing, inflating, the low-speed check); 64 KiB pieces cost a large download
# 27 % more CPU.
PIECE_SIZE = 1 << 20
# The most one inflate step produces: bounds memory (a stream that inflates a thousandfold is met a
# block at a time), and a block is still in the CPU's caches when it is written.
INFLATE_BLOCK = 1 << 20
# The most a file fetched into memory by name may have (manifest, whitelist, geo reply, PAC file; each a
# few KiB): a server that sends without end is refused instead of filling the memory of a booting VM.
MAX_NAMED_BYTES = 16 << 20


class Sink(Protocol):
    def write(self, piece: bytes) -> None:
        """The next piece of the bytes."""

    def restart(self) -> None:
        """Forget everything written: the download starts over (from another server, say)."""

    def finish(self) -> None:
        """Every piece was written: check that they make a whole (a FormatError if not)."""


class Memory:
    """Bytes kept in memory (manifests, certificates, a catalog on a full disk); at most ``limit`` of them."""

    def __init__(self, limit: int | None = None) -> None:
        self._pieces: list[bytes] = []
        self._limit = limit
        self._size = 0

    def write(self, piece: bytes) -> None:
        self._size += len(piece)
        if self._limit is not None and self._size > self._limit:
            raise FormatError(f"more than the {self._limit} bytes such a file may have")
        self._pieces.append(piece)

    def restart(self) -> None:
        self._pieces.clear()
        self._size = 0

    def finish(self) -> None:
        pass

    def value(self) -> bytes:
        return self._pieces[0] if len(self._pieces) == 1 else b"".join(self._pieces)


class Inflating:
    """A zlib stream inflated into ``out``, ``size`` bytes of it, as its pieces arrive.

    A stream that inflates to more than ``size`` is refused as soon as it does, before it fills memory
    or a disk; one that is cut short or followed by other bytes is refused at ``finish``. Without a
    size nothing bounds the stream, so it is held and inflated at ``finish``, which comes only once its
    hash matched: an unverified stream never inflates without bound.
    """

    def __init__(self, out: Sink, size: int | None = None) -> None:
        self._out = out
        self._size = size
        self._inflater = isal_zlib.decompressobj()  # ISA-L: 2-2.5x zlib's speed on the same streams
        self._produced = 0
        self._held: list[bytes] = []

    def write(self, piece: bytes) -> None:
        if self._size is None:
            self._held.append(piece)
        else:
            self._inflate(piece)

    def _inflate(self, piece: bytes) -> None:
        try:
            while piece:
                self._deliver(self._inflater.decompress(piece, INFLATE_BLOCK))
                piece = self._inflater.unconsumed_tail
        except isal_zlib.error as error:
            raise FormatError(f"object does not decompress: {error}") from None

    def _deliver(self, plain: bytes) -> None:
        if not plain:
            return
        self._produced += len(plain)
        if self._size is not None and self._produced > self._size:
            raise FormatError(f"object decompresses to more than the {self._size} bytes expected")
        self._out.write(plain)

    def restart(self) -> None:
        self._inflater = isal_zlib.decompressobj()
        self._produced = 0
        self._held.clear()
        self._out.restart()

    def finish(self) -> None:
        for piece in self._held:
            self._inflate(piece)
        self._held.clear()
        try:
            self._deliver(self._inflater.flush())
        except isal_zlib.error as error:
            raise FormatError(f"object does not decompress: {error}") from None
        if not self._inflater.eof:
            raise FormatError("object is truncated: the zlib stream does not end")
        if self._inflater.unused_data:
            raise FormatError("object has trailing bytes after its zlib stream")
        if self._size is not None and self._produced != self._size:
            raise FormatError(f"object decompresses to {self._produced} bytes, expected {self._size}")
        self._out.finish()


class Sized:
    """Bytes stored as they are (a file published uncompressed) passed on to ``out``; ``size`` of them."""

    def __init__(self, out: Sink, size: int | None = None) -> None:
        self._out = out
        self._size = size
        self._written = 0

    def write(self, piece: bytes) -> None:
        self._written += len(piece)
        if self._size is not None and self._written > self._size:
            raise FormatError(f"object has more than the {self._size} bytes expected")
        self._out.write(piece)

    def restart(self) -> None:
        self._written = 0
        self._out.restart()

    def finish(self) -> None:
        if self._size is not None and self._written != self._size:
            raise FormatError(f"object has {self._written} bytes, expected {self._size}")
        self._out.finish()


class Checked:
    """A download's body, hashed on its way to ``sink``.

    ``matches`` gives the hash's verdict once the body is in (always True without an expected hash);
    ``finish`` is for a body that matched. A piece the sink refuses (FormatError: it does not inflate,
    or inflates past its size) makes the body bad data as a wrong hash does, at once: the rest of it
    cannot make it good, and is not read.
    """

    __slots__ = ("_sink", "_expected", "_hashed", "_first", "written")

    def __init__(self, sink: Sink, expected: ContentHash | None) -> None:
        self._sink = sink
        self._expected = expected
        self._hashed = None
        self._first: bytes | None = None
        self.written = 0

    def write(self, piece: bytes) -> None:
        self.hash(piece)
        self._sink.write(piece)

    def hash(self, piece: bytes) -> None:
        """The next piece, hashed only: the sink refused one before it, and the hash of the whole tells a
        body damaged on its way (a wrong hash) from one stored so (its hash matches)."""
        self.written += len(piece)
        if self._expected is not None:
            self._hash(piece)

    def _hash(self, piece: bytes) -> None:
        # A small object comes in one piece: it is hashed once whole, by the interpreter's own SHA-1
        # (see cvmfs/hashing.py), instead of loading OpenSSL's for it.
        if self._hashed is None:
            if self._first is None:
                self._first = piece
                return
            self._hashed = self._expected.algorithm.new()  # type: ignore[union-attr]
            self._hashed.update(self._first)
            self._first = None
        self._hashed.update(piece)

    def matches(self) -> bool:
        if self._expected is None:
            return True
        if self._hashed is None:
            return self._expected.matches(self._first or b"")
        return self._expected.algorithm.digest_of(self._hashed) == self._expected.digest

    def finish(self) -> None:
        self._sink.finish()


__all__ = ["INFLATE_BLOCK", "PIECE_SIZE", "Checked", "Inflating", "Memory", "Sink", "Sized"]
