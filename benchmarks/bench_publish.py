"""Publish throughput: large generated files, a real OS tree, and an incremental republish.

Usage: python benchmarks/bench_publish.py [--tree /usr/share] [--large-mib 512] [--workers N]

Each workload is published into a fresh repository with the default options (ISA-L zlib, cvmfs chunk
sizes, all CPUs), then, for the ratio, copied with ``cp -a`` into a directory on the same file system
(the baseline: the same bytes read and written once, no hashing, no compression, no catalogs). Then one
file of the real tree is changed and the tree republished. Also reports the large-file figure with
zlib level 6 (``--compression cvmfs``), cvmfs_server's own encoder.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ucernvm.cvmfs.compression import Compression  # noqa: E402
from ucernvm.cvmfs.ingest import IngestOptions  # noqa: E402
from ucernvm.cvmfs.publisher import Publisher, PublishOptions, PublishResult  # noqa: E402
from ucernvm.cvmfs.signing import generate_repository_keys  # noqa: E402

FQRN = "bench.cern.ch"
MiB = 1 << 20


def make_large_tree(root: Path, total_mib: int) -> None:
    """Files of 32 MiB: half random (incompressible), half text-like (compresses about 3:1)."""
    rng = random.Random(7)
    words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(4000)]
    root.mkdir(parents=True)
    for index in range(max(2, total_mib // 32)):
        path = root / f"file{index:03d}.bin"
        if index % 2:
            path.write_bytes(os.urandom(32 * MiB))
        else:
            text = bytearray()
            while len(text) < 32 * MiB:
                text += b" ".join(rng.choices(words, k=4096)) + b"\n"
            path.write_bytes(bytes(text[: 32 * MiB]))


def tree_size(root: Path) -> tuple[int, int]:
    files = size = 0
    for directory, _, names in os.walk(root):
        for name in names:
            st = os.lstat(os.path.join(directory, name))
            files += 1
            size += st.st_size if os.path.isfile(os.path.join(directory, name)) else 0
    return files, size


def publish(source: Path, repo: Path, keys: Path, workers: int, compression: Compression = Compression.FAST) -> PublishResult:
    options = PublishOptions(ingest=IngestOptions(compression=compression), workers=workers)
    return Publisher(str(repo), FQRN, str(keys), options).publish(str(source))


def copy_seconds(source: Path, target: Path) -> float:
    started = time.monotonic()
    subprocess.run(["cp", "-a", str(source), str(target)], check=True)
    os.sync()
    return time.monotonic() - started


def row(name: str, result: PublishResult, size: int, baseline: float | None) -> str:
    rate = size / MiB / result.seconds
    ratio = f"{baseline / result.seconds:.2f}" if baseline else "-"
    return (
        f"| {name} | {result.files} | {size / MiB:.0f} | {result.seconds:.2f} | {rate:.0f} | "
        f"{result.files / result.seconds:.0f} | {result.bytes_written / MiB:.0f} | {ratio} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", default="/usr/share", help="a real OS tree to publish (default /usr/share)")
    parser.add_argument("--large-mib", type=int, default=512, help="size of the generated large-file tree")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir="/var/tmp") as scratch:
        work = Path(scratch)
        keys = work / "keys"
        generate_repository_keys(FQRN, keys)
        large = work / "large"
        make_large_tree(large, args.large_mib)
        real = Path(args.tree)
        rows = []

        _, large_size = tree_size(large)
        baseline = copy_seconds(large, work / "large-copy")
        shutil.rmtree(work / "large-copy")
        rows.append(row("large files (fast)", publish(large, work / "r1", keys, args.workers), large_size, baseline))
        rows.append(
            row("large files (cvmfs zlib 6)", publish(large, work / "r2", keys, args.workers, Compression.CVMFS), large_size, baseline)
        )

        _, real_size = tree_size(real)
        baseline = copy_seconds(real, work / "real-copy")
        changed = work / "real-copy"
        rows.append(row(f"{real} (first publish)", publish(changed, work / "r3", keys, args.workers), real_size, baseline))

        victim = next(path for path in changed.rglob("*") if path.is_file() and not path.is_symlink())
        victim.write_bytes(victim.read_bytes() + b"changed\n")
        rows.append(row(f"{real} (1 file changed)", publish(changed, work / "r3", keys, args.workers), real_size, None))

    print(f"workers={args.workers}, cpus={os.cpu_count()}, python {sys.version.split()[0]}")
    print("| workload | files | input MiB | seconds | MiB/s | files/s | MiB written | speed vs `cp -a` |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
