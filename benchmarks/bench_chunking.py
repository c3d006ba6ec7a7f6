"""Throughput of the chunker next to the work the publisher does on each chunk anyway.

Usage (from the repository root): PYTHONPATH=. python3 benchmarks/bench_chunking.py [--megabytes 256] [--level 6]

On the same random data: cut_offsets (buffer), iter_chunks (streaming from a file object,
including the copy of every chunk), zlib.compress at the given level (per 8 MiB piece, as
chunks are compressed) and hashlib.sha1.  A last row chunks zero-filled data, where no cut
mark ever shows and three quarters of every chunk must be scanned (the worst case).
Ratios are against zlib: the chunker must never be the bottleneck.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import time
import zlib
from collections.abc import Callable

import numpy as np

from ucernvm.cvmfs.chunking import cut_offsets, iter_chunks

PIECE = 8 << 20


def seconds(run: Callable[[], object], repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        began = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - began)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=256)
    parser.add_argument("--level", type=int, default=6)
    args = parser.parse_args()
    size = args.megabytes << 20
    data = np.random.default_rng(1).integers(0, 256, size, dtype=np.uint8).tobytes()
    zeros = bytes(size)

    def stream() -> None:
        for _ in iter_chunks(io.BytesIO(data)):
            pass

    def compress() -> None:
        for offset in range(0, size, PIECE):
            zlib.compress(data[offset:offset + PIECE], args.level)

    rows = [
        ("chunker, cut_offsets", seconds(lambda: cut_offsets(data), 3)),
        ("chunker, iter_chunks", seconds(stream, 3)),
        (f"zlib.compress level {args.level}", seconds(compress)),
        ("hashlib.sha1", seconds(lambda: hashlib.sha1(data).digest(), 3)),
        ("chunker, zeros (worst case)", seconds(lambda: cut_offsets(zeros), 3)),
    ]
    zlib_rate = size / dict(rows)[f"zlib.compress level {args.level}"]
    print(f"{args.megabytes} MiB, {len(cut_offsets(data)) + 1} chunks at the cvmfs defaults")
    print(f"{'':30} {'MB/s':>8} {'x zlib':>8}")
    for name, elapsed in rows:
        rate = size / elapsed
        print(f"{name:30} {rate / 1e6:8.0f} {rate / zlib_rate:8.1f}")


if __name__ == "__main__":
    main()
