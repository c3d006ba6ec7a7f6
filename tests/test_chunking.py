"""Content-defined chunking against a line-by-line port of cvmfs's Xor32Detector and cvmfs's
own unit-test vectors (test/unittests/t_chunk_detectors.cc)."""

from __future__ import annotations

import io
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from ucernvm.cvmfs.chunking import (
    DEFAULT_PARAMS,
    ChunkingParams,
    cut_offsets,
    iter_chunks,
    rolling_xor32,
)
from ucernvm.errors import ConfigError

INT32_MIN = -(1 << 31)
MAGIC = 0x7FFFFFFF


def _wrap_int32(value: int) -> int:
    return (value + (1 << 31)) % (1 << 32) - (1 << 31)


class ReferenceDetector:
    """cvmfs's ChunkDetector/Xor32Detector (ingestion/chunk_detector.{h,cc}), statement by
    statement, with the C semantics of cvmfs's build (-fwrapv) spelled out."""

    def __init__(self, min_size: int, avg_size: int, max_size: int) -> None:
        self.min_size, self.max_size = min_size, max_size
        self.threshold = 0xFFFFFFFF // avg_size
        self.last_cut = self.offset = self.xor32_ptr = self.xor32 = 0

    def feed(self, byte: int) -> None:
        self.xor32 = ((self.xor32 << 1) ^ byte) & 0xFFFFFFFF

    def check_threshold(self) -> bool:
        difference = _wrap_int32(_wrap_int32(self.xor32) - MAGIC)
        magnitude = difference if difference == INT32_MIN else abs(difference)
        return magnitude < self.threshold

    def _cut(self, offset: int) -> int:
        self.xor32 = 0
        self.xor32_ptr = self.last_cut = offset
        return offset

    def _no_cut(self, offset: int) -> int:
        self.xor32_ptr = offset
        return 0

    def find_next_cut_mark(self, block: bytes) -> int:
        result = self._do_find_next_cut_mark(block)
        if result == 0:
            self.offset += len(block)
        return result

    def _do_find_next_cut_mark(self, block: bytes) -> int:
        global_offset = max(self.last_cut + self.min_size - 32, self.xor32_ptr)
        if global_offset >= self.offset + len(block):
            return self._no_cut(global_offset)
        i = global_offset - self.offset
        precompute_end = min(self.last_cut + self.min_size - self.offset, len(block))
        while i < precompute_end:
            self.feed(block[i])
            i += 1
        max_end = self.last_cut + self.max_size - self.offset
        compute_end = min(max_end, len(block))
        while i < compute_end:
            self.feed(block[i])
            if self.check_threshold():
                return self._cut(i + self.offset)
            i += 1
        if i == max_end:
            return self._cut(i + self.offset)
        return self._no_cut(i + self.offset)


def reference_cuts(data: bytes, params: ChunkingParams, block_sizes: Iterator[int]) -> list[int]:
    """Cut marks as cvmfs's TaskChunk takes them: blocks fed in turn, a mark at EOF ignored."""
    detector = ReferenceDetector(params.min_size, params.avg_size, params.max_size)
    cuts = []
    position = 0
    while position < len(data):
        block = data[position:position + next(block_sizes)]
        while (cut := detector.find_next_cut_mark(block)) != 0:
            if cut < len(data):
                cuts.append(cut)
        position += len(block)
    return cuts


def is_cut_mark(data: bytes | np.ndarray, position: int, params: ChunkingParams) -> bool:
    detector = ReferenceDetector(params.min_size, params.avg_size, params.max_size)
    for byte in data[position - 31:position + 1]:
        detector.feed(int(byte))
    return detector.check_threshold()


def pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


def stream_chunks(data: bytes, params: ChunkingParams) -> list[bytes]:
    return list(iter_chunks(io.BytesIO(data), params))


def pattern_for(value: int) -> bytes:
    """32 bytes after which the rolling value is exactly ``value`` (one bit per byte)."""
    return bytes((value >> k) & 1 for k in range(31, -1, -1))


SMALL = [ChunkingParams(32, 33, 34), ChunkingParams(64, 128, 256), ChunkingParams(100, 1000, 5000),
         ChunkingParams(1024, 2048, 4096)]


def _random(rng: random.Random, size: int) -> bytes:
    return rng.randbytes(size)


def _runs(rng: random.Random, size: int) -> bytes:
    out = bytearray()
    while len(out) < size:
        out += bytes([rng.choice((0, 0xFF, 0x7F, 0x80, rng.randrange(256)))]) * rng.randrange(1, 600)
    return bytes(out[:size])


def _repeated(rng: random.Random, size: int) -> bytes:
    unit = rng.randbytes(rng.randrange(1, 70))
    return (unit * (size // len(unit) + 1))[:size]


def _few_symbols(rng: random.Random, size: int) -> bytes:
    return bytes(rng.choice((0, 1, 0x7F, 0xFF)) for _ in range(size))


def _mixed(rng: random.Random, size: int) -> bytes:
    return b"".join(kind(rng, size // 4) for kind in (_random, _runs, _repeated, _few_symbols))


KINDS = [_random, _runs, _repeated, _few_symbols, _mixed]


@pytest.mark.parametrize("params", SMALL, ids=lambda p: f"{p.min_size}-{p.avg_size}-{p.max_size}")
@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__.strip("_"))
def test_matches_reference_detector(params: ChunkingParams, kind) -> None:
    for seed in range(12):
        rng = random.Random(f"{kind.__name__}-{params}-{seed}")
        data = kind(rng, rng.randrange(0, 12 * params.max_size))
        expected = reference_cuts(data, params, iter(lambda: rng.randrange(1, 3 * params.max_size), 0))
        assert cut_offsets(data, params) == expected, seed
        chunks = stream_chunks(data, params)
        assert chunks == pieces(data, expected)
        assert b"".join(chunks) == data
        sizes = [len(chunk) for chunk in chunks]
        assert all(params.min_size <= size <= params.max_size for size in sizes[:-1])


def test_reference_is_independent_of_block_sizes() -> None:
    params = ChunkingParams(64, 128, 256)
    data = random.Random(7).randbytes(20000)
    by_byte = reference_cuts(data, params, iter(lambda: 1, 0))
    assert len(by_byte) > 50
    assert reference_cuts(data, params, iter(lambda: len(data), 0)) == by_byte
    assert cut_offsets(data, params) == by_byte


# cvmfs's TEST_F(T_ChunkDetectors, Xor32): input byte, rolling value after it.
XOR32_TABLE = [
    (5, 5), (255, 245), (0, 490), (32, 1012), (27, 2035), (11, 4077), (87, 8077), (128, 16282),
    (127, 32587), (224, 65142), (63, 130259), (11, 260525), (1, 521051), (103, 1042129),
    (73, 2084331), (22, 4168640), (235, 8337259), (17, 16674503), (3, 33349005), (90, 66698048),
    (210, 133396050), (163, 266791943), (12, 533583874), (79, 1067167819), (53, 2134335651),
    (2, 4268671300), (100, 4242375404), (193, 4189783321), (64, 4084599410), (242, 3874231318),
    (14, 3453495330), (111, 2612023339), (83, 929079301), (253, 1858158839), (207, 3716317473),
    (172, 3137667822), (62, 1980368354), (190, 3960736634), (114, 3626505862), (39, 2958044459),
    (6, 1621121616), (175, 3242243087), (93, 2189518915), (238, 84070504), (184, 168140904),
    (84, 336281732), (29, 672563477), (200, 1345127138),
]


def test_cvmfs_xor32_table() -> None:
    data = bytes(byte for byte, _ in XOR32_TABLE)
    expected = [value for _, value in XOR32_TABLE]
    assert rolling_xor32(data).tolist() == expected
    detector = ReferenceDetector(32, 33, 34)
    for byte, value in XOR32_TABLE:
        detector.feed(byte)
        assert detector.xor32 == value


def cvmfs_prng_bytes(seed: int, count: int) -> np.ndarray:
    """``Prng::Next(256)`` (cvmfs util/prng.h) ``count`` times: an LCG whose state goes through a
    double.  Vectorised by jumping ahead: state[j] = mult[j] * state[0] + inc[j] (mod 2**64)."""
    block = 1 << 20
    mult = np.empty(block, np.uint64)
    inc = np.empty(block, np.uint64)
    mult[0], inc[0] = 6364136223846793005, 1442695040888963407
    done = 1
    while done < block:
        mult[done:2 * done] = mult[:done] * mult[done - 1]
        inc[done:2 * done] = mult[:done] * inc[done - 1] + inc[:done]
        done *= 2
    out = np.empty(count, np.uint8)
    state = np.uint64(seed)
    for position in range(0, count, block):
        states = mult * state + inc
        size = min(block, count - position)
        scaled = states[:size].astype(np.float64) * 256.0 / 18446744073709551616.0
        out[position:position + size] = scaled.astype(np.uint64) % 256
        state = states[-1]
    return out


def test_prng_emulation_matches_scalar_definition() -> None:
    state, expected = 42, []
    for _ in range(3000):
        state = (6364136223846793005 * state + 1442695040888963407) % (1 << 64)
        expected.append(int(float(state) * 256.0 / 18446744073709551616.0) % 256)
    assert cvmfs_prng_bytes(42, 3000).tolist() == expected


# cvmfs's TEST_F(T_ChunkDetectors, Xor32ChunkDetectorSlow): 100 MiB of Prng(42) bytes.
SLOW_TEST_CUTS = [
    742752, 2790752, 3521796, 4188893, 4940543, 5884591, 7131564,
    8520617, 9159233, 9999783, 11202120, 11778185, 13781177, 15331152,
    16497018, 17410317, 19391774, 20086877, 20763223, 21346744, 22075173,
    22705444, 23557037, 24461261, 25118505, 25663669, 26333579, 27763062,
    28369273, 29586929, 30171732, 30794768, 31811364, 32408599, 33689064,
    34678262, 36410687, 37096663, 37682005, 38269900, 39931592, 41347607,
    42701845, 44350286, 44925654, 45893350, 47770173, 48332690, 49303250,
    49861260, 50727512, 51578678, 52176356, 52949949, 54228704, 54843051,
    55796214, 56694940, 58092222, 59294196, 60381155, 61509784, 62850141,
    63505051, 64168046, 64925423, 66252082, 67232078, 68005369, 68615410,
    69454686, 70276575, 71308716, 73356716, 73946267, 74775664, 75509293,
    77487075, 78606807, 79732133, 80467148, 81185709, 82588680, 83547234,
    84220971, 85992169, 86979928, 87845294, 88392648, 89241756, 89980293,
    91129752, 91891024, 92493793, 93792263, 94393106, 95782791, 96813116,
    97723756, 98618891, 99707336, 101755336, 103405168, 104269441,
]


def test_cvmfs_slow_detector_vector() -> None:
    base = 512000
    params = ChunkingParams(base, 2 * base, 4 * base)
    data = cvmfs_prng_bytes(42, 104857600).tobytes()
    assert cut_offsets(data, params) == SLOW_TEST_CUTS
    sizes = [len(chunk) for chunk in iter_chunks(io.BytesIO(data), params)]
    assert sizes == [b - a for a, b in zip([0, *SLOW_TEST_CUTS], [*SLOW_TEST_CUTS, len(data)])]


def test_cvmfs_zeros_power_of_two_vector() -> None:
    """Xor32ChunkDetectorZerosBufferPowerOfTwo: zeros only ever get hard cuts, and a hard cut
    that lands on the end of the file makes no empty chunk."""
    size = 104857600
    params = ChunkingParams(size // 64, size // 32, size // 16)
    data = bytes(size)
    assert cut_offsets(data, params) == [k * size // 16 for k in range(1, 16)]


def _full_scan_cuts(data: np.ndarray, params: ChunkingParams) -> list[int]:
    """An independent formulation: every cut-mark position from plain uint32 arithmetic
    (the hit set of the compiled C test, checked exhaustively: |x - 0x7fffffff| < T around the
    centre, plus x == 0xffffffff), then min/max applied over the sorted marks."""
    x = data.astype(np.uint32)
    for k in (1, 2, 4, 8, 16):
        x[k:] ^= x[:-k] << np.uint32(k)
    threshold = params.threshold
    low = np.uint32(0x80000000 - threshold)
    marks = np.flatnonzero(((x - low) <= 2 * threshold - 2) | (x == 0xFFFFFFFF))
    cuts, start = [], 0
    while True:
        first = int(np.searchsorted(marks, start + params.min_size))
        cut = start + params.max_size
        if first < len(marks) and marks[first] < cut:
            cut = int(marks[first])
        if cut >= len(data):
            return cuts
        cuts.append(cut)
        start = cut


def test_defaults_on_40_megabytes(tmp_path: Path) -> None:
    data = np.random.default_rng(40).integers(0, 256, 40_000_000, dtype=np.uint8)
    raw = data.tobytes()
    cuts = cut_offsets(raw, DEFAULT_PARAMS)
    assert len(cuts) >= 3
    assert cuts == _full_scan_cuts(data, DEFAULT_PARAMS)
    window = 4096
    for start, cut in zip([0, *cuts], cuts):
        assert DEFAULT_PARAMS.min_size <= cut - start <= DEFAULT_PARAMS.max_size
        hard = cut - start == DEFAULT_PARAMS.max_size
        assert hard or is_cut_mark(data, cut, DEFAULT_PARAMS)
        first = start + DEFAULT_PARAMS.min_size
        for position in [*range(max(first, cut - window), cut), *range(first, min(first + window, cut))]:
            assert not is_cut_mark(data, position, DEFAULT_PARAMS), position
    path = tmp_path / "big"
    path.write_bytes(raw)
    for buffering in (-1, 0):
        with open(path, "rb", buffering=buffering) as stream:
            sizes = [len(chunk) for chunk in iter_chunks(stream, DEFAULT_PARAMS)]
        assert sizes == [len(piece) for piece in pieces(raw, cuts)]


class ShortReads(io.RawIOBase):
    """A readable stream that hands out at most ``step`` bytes per call, as pipes do."""

    def __init__(self, data: bytes, step: int) -> None:
        self.data, self.step, self.position = data, step, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = min(self.step, len(buffer), len(self.data) - self.position)
        buffer[:count] = self.data[self.position:self.position + count]
        self.position += count
        return count


def test_streaming_with_short_reads() -> None:
    params = ChunkingParams(64, 128, 256)
    data = random.Random(3).randbytes(30000)
    expected = pieces(data, cut_offsets(data, params))
    for step in (1, 7, 255, 256, 257, 100000):
        assert list(iter_chunks(ShortReads(data, step), params)) == expected


def test_hard_cuts_at_max_and_not_at_end_of_file() -> None:
    params = ChunkingParams(64, 128, 256)
    assert cut_offsets(bytes(256 * 5 + 17), params) == [256, 512, 768, 1024, 1280]
    assert cut_offsets(bytes(256 * 5), params) == [256, 512, 768, 1024]
    assert stream_chunks(bytes(256), params) == [bytes(256)]
    assert [len(c) for c in stream_chunks(bytes(512), params)] == [256, 256]


def test_files_up_to_min_size_are_one_piece() -> None:
    params = ChunkingParams(64, 128, 256)
    marks = (pattern_for(0x80000000) * 10)  # a cut mark at every 32nd byte
    for size in (0, 1, 63, 64):
        data = marks[:size]
        assert cut_offsets(data, params) == []
        assert stream_chunks(data, params) == [data]
        assert not params.might_chunk(size)
    # One byte beyond the minimum can already be cut off, as cvmfs does.
    data = bytes(33) + pattern_for(0x80000000)  # the mark completes at offset 64
    assert len(data) == 65 and params.might_chunk(65)
    assert cut_offsets(data, params) == [64]


def test_sole_piece_when_no_cut_before_end() -> None:
    params = ChunkingParams(64, 128, 256)
    data = bytes(200)  # larger than the minimum, no mark, shorter than the maximum
    assert cut_offsets(data, params) == []
    assert stream_chunks(data, params) == [data]


@pytest.mark.parametrize("params", [DEFAULT_PARAMS, ChunkingParams(1024, 2048, 4096)],
                         ids=["defaults", "small"])
def test_threshold_edges(params: ChunkingParams) -> None:
    """The exact cut-mark set: wrap-around past 0x80000000, the open bound T, and
    abs(INT_MIN) staying negative for x == 0xffffffff."""
    t = params.threshold
    at = params.min_size  # the first tested position: nothing before it can cut
    cases = {
        0xFFFFFFFF: True, 0x80000000: True, 0x7FFFFFFF: True,
        MAGIC - (t - 1): True, MAGIC - t: False, MAGIC + (t - 1): True, MAGIC + t: False,
        0xFFFFFFFE: False, 0: False, 0x7FFFFFFF ^ 0x40000000: False,
    }
    for value, is_mark in cases.items():
        data = bytes(at - 31) + pattern_for(value) + bytes(params.min_size)
        assert rolling_xor32(data)[at] == value
        assert is_cut_mark(data, at, params) is is_mark
        cuts = cut_offsets(data, params)
        assert (cuts[:1] == [at]) is is_mark, hex(value)
        if params.max_size < 10000:
            assert reference_cuts(data, params, iter(lambda: 999, 0)) == cuts


def test_rolling_value_depends_on_last_32_bytes_only() -> None:
    rng = random.Random(5)
    tail = rng.randbytes(32)
    values = {int(rolling_xor32(rng.randbytes(n) + tail)[-1]) for n in (0, 1, 31, 32, 1000)}
    assert len(values) == 1


@pytest.mark.parametrize("sizes", [
    (31, 64, 128), (64, 64, 128), (64, 128, 128), (128, 64, 256), (64, 128, (1 << 31) + 1),
    (64.0, 128, 256), (True, 128, 256), ("64", 128, 256), (-1, 128, 256),
])
def test_params_validation(sizes) -> None:
    with pytest.raises(ConfigError):
        ChunkingParams(*sizes)


def test_default_params_are_cvmfs_defaults() -> None:
    assert (DEFAULT_PARAMS.min_size, DEFAULT_PARAMS.avg_size, DEFAULT_PARAMS.max_size) == (
        4194304, 8388608, 16777216)
    assert DEFAULT_PARAMS.threshold == 511
    assert DEFAULT_PARAMS == ChunkingParams()
