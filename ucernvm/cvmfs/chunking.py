"""Content-defined chunking, cut for cut identical to cvmfs's ``Xor32Detector``.

cvmfs feeds every byte into a rolling value ``x = (x << 1) ^ byte`` (32 bits) and cuts a chunk
where ``abs(int32(x) - 0x7fffffff) < 0xffffffff // avg`` holds, searching only between
``min`` and ``max`` bytes after the previous cut (hard cut at ``max``; the last chunk runs
to the end of the file).  cvmfs is built with ``-fwrapv``, so the subtraction wraps and
``abs(INT_MIN)`` stays negative: ``x == 0xffffffff`` is a cut mark too.  The numpy int32
arithmetic below has exactly these semantics.

``x`` after byte ``i`` is ``XOR(data[i-k] << k for k in 0..31)``: it depends on the last 32
bytes only.  cvmfs resets ``x`` at each cut but re-feeds the 32 bytes before the first tested
position, so the reset never shows and ``x`` can be computed for whole blocks at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ucernvm.errors import ConfigError

_WINDOW = 32  # bytes that determine the rolling value (cvmfs kXor32Window)
_MAGIC = 0x7FFFFFFF  # centre of the cut-mark interval (cvmfs kMagicNumber)
_BLOCK = 1 << 18  # positions per numpy pass: amortises per-call cost, scratch stays in cache
_SIZE_LIMIT = 1 << 31  # far beyond any sensible chunk; bounds the streaming window (2 x max)

MiB = 1 << 20


@dataclass(frozen=True)
class ChunkingParams:
    """Chunk size bounds in bytes; the defaults are cvmfs's (CVMFS_{MIN,AVG,MAX}_CHUNK_SIZE).

    The checks are cvmfs's own (min >= 32 window bytes, min < avg < max) plus an upper bound.
    """

    min_size: int = 4 * MiB
    avg_size: int = 8 * MiB
    max_size: int = 16 * MiB

    def __post_init__(self) -> None:
        sizes = (self.min_size, self.avg_size, self.max_size)
        if not all(isinstance(size, int) and not isinstance(size, bool) for size in sizes):
            raise ConfigError(f"chunk sizes must be integers, got {sizes!r}")
        if not _WINDOW <= self.min_size < self.avg_size < self.max_size <= _SIZE_LIMIT:
            raise ConfigError(
                f"invalid chunk sizes min={self.min_size} avg={self.avg_size} max={self.max_size}",
                hint=f"need {_WINDOW} <= min < avg < max <= {_SIZE_LIMIT} "
                "(cvmfs defaults: 4194304, 8388608, 16777216)",
            )

    @property
    def threshold(self) -> int:
        return 0xFFFFFFFF // self.avg_size

    def might_chunk(self, file_size: int) -> bool:
        """cvmfs only runs the chunker on files larger than the minimum chunk size."""
        return file_size > self.min_size


DEFAULT_PARAMS = ChunkingParams()


def _xor32_into(data: np.ndarray, v16: np.ndarray, t16: np.ndarray,
                w32: np.ndarray, t32: np.ndarray) -> np.ndarray:
    """Rolling value after each byte of ``data`` (starting from 0), computed in ``w32``.

    Doubling: a window of 2w bytes is ``v[i] ^ (v[i-w] << w)`` of the w-byte windows.  The
    first three steps fit in 16 bits (half the memory traffic); multiplying is faster than
    shifting in numpy.
    """
    n = len(data)
    v = v16[:n]
    np.copyto(v, data)
    for k in (1, 2, 4):
        if k < n:
            np.multiply(v[:n - k], np.uint16(1 << k), out=t16[:n - k])
            np.bitwise_xor(v[k:], t16[:n - k], out=v[k:])
    w = w32[:n]
    np.copyto(w, v)
    for k in (8, 16):
        if k < n:
            np.multiply(w[:n - k], np.uint32(1 << k), out=t32[:n - k])
            np.bitwise_xor(w[k:], t32[:n - k], out=w[k:])
    return w


def rolling_xor32(data: bytes | bytearray | memoryview) -> np.ndarray:
    """cvmfs's xor32 value after each byte of ``data``, fed from a fresh detector (uint32)."""
    array = np.frombuffer(data, dtype=np.uint8)
    n = len(array)
    return _xor32_into(array, np.empty(n, np.uint16), np.empty(n, np.uint16),
                       np.empty(n, np.uint32), np.empty(n, np.uint32))


class _CutFinder:
    """Scratch arrays for one chunking run (one per call, so runs may share no state)."""

    def __init__(self, params: ChunkingParams) -> None:
        self.params = params
        self.block = min(_BLOCK, params.max_size - params.min_size)
        size = self.block + _WINDOW - 1
        self.v16 = np.empty(size, np.uint16)
        self.t16 = np.empty(size, np.uint16)
        self.w32 = np.empty(size, np.uint32)
        self.t32 = np.empty(size, np.uint32)
        self.distance = np.empty(self.block, np.int32)
        self.hit = np.empty(self.block, np.bool_)
        self.magic = np.int32(_MAGIC)
        self.threshold = np.int32(params.threshold)

    def _first_hit(self, segment: np.ndarray) -> int:
        """Index (counted after the 31 lead-in bytes) of the first cut mark in ``segment``, or -1."""
        x = _xor32_into(segment, self.v16, self.t16, self.w32, self.t32)[_WINDOW - 1:]
        distance = self.distance[:len(x)]
        np.subtract(x.view(np.int32), self.magic, out=distance)  # wraps, as with -fwrapv
        np.abs(distance, out=distance)  # abs(INT_MIN) == INT_MIN, as in C
        hit = self.hit[:len(x)]
        np.less(distance, self.threshold, out=hit)
        first = int(hit.argmax())
        return first if hit[first] else -1

    def next_cut(self, data: np.ndarray, start: int) -> int:
        """Where the chunk starting at ``start`` ends.

        ``data`` must hold ``max_size`` bytes from ``start`` on, or everything up to the end of
        the file.  The result is at most ``start + max_size`` and may lie at or beyond
        ``len(data)``, which at the end of the file means "no cut: the last chunk".
        """
        position = start + self.params.min_size
        stop = min(start + self.params.max_size, len(data))
        while position < stop:
            end = min(position + self.block, stop)
            first = self._first_hit(data[position - (_WINDOW - 1):end])
            if first >= 0:
                return position + first
            position = end
        return start + self.params.max_size


def cut_offsets(data: bytes | bytearray | memoryview,
                params: ChunkingParams = DEFAULT_PARAMS) -> list[int]:
    """Offsets where the 2nd, 3rd, ... chunk of ``data`` begins; empty if it stays one piece."""
    array = np.frombuffer(data, dtype=np.uint8)
    finder = _CutFinder(params)
    cuts: list[int] = []
    start = 0
    while (cut := finder.next_cut(array, start)) < len(array):
        cuts.append(cut)
        start = cut
    return cuts


class _ReadInto(Protocol):
    def readinto(self, buffer: memoryview, /) -> int | None: ...


def iter_chunks(stream: _ReadInto, params: ChunkingParams = DEFAULT_PARAMS) -> Iterator[bytes]:
    """Yield the chunks of a binary file object, reading it once, in order.

    A single yielded piece (always the case for files of at most ``min_size`` bytes) means cvmfs
    stores the file unchunked.  An empty file yields one empty piece.  Memory stays at a
    buffer of two ``max_size`` windows.
    """
    window = bytearray(2 * params.max_size)
    view = memoryview(window)
    array = np.frombuffer(window, dtype=np.uint8)
    finder = _CutFinder(params)
    filled = start = 0
    at_eof = False
    while True:
        if not at_eof and filled - start <= params.max_size:
            # Keep the unfinished chunk and refill behind it.  More than max_size bytes ahead
            # tell a hard cut from the end of the file, which is no cut.
            array[:filled - start] = array[start:filled]
            filled -= start
            start = 0
            while filled < len(window):
                count = stream.readinto(view[filled:])
                if not count:
                    at_eof = True
                    break
                filled += count
        cut = finder.next_cut(array[:filled], start)
        if at_eof and cut >= filled:
            yield bytes(view[start:filled])
            return
        yield bytes(view[start:cut])
        start = cut
