"""Catalog page size: what SQLite's page size does to the catalogs a publish writes.

Usage: python benchmarks/bench_catalog_pages.py [--trees /usr/lib/python3 /usr/share] [--sizes 1024 4096]

For each page size, publishes the demo OS (busybox) and each tree into fresh repositories and reports
every catalog's size (uncompressed, as manifest B and nested_catalogs.size count it, and as the zlib
object stored and downloaded), the publish time (median of --runs), and the lookup speed through
ucernvm/cvmfs/catalog.py: every path of the tree's largest catalog looked up in random order, and every
directory listed, on the catalog opened from a file as the client opens it from its cache (a first
pass on a fresh connection, then a second on the same one; medians of 5).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ucernvm.cvmfs import sqlite_db  # noqa: E402
from ucernvm.cvmfs.catalog import Catalog, join  # noqa: E402
from ucernvm.cvmfs.publisher import Publisher, PublishOptions  # noqa: E402
from ucernvm.cvmfs.signing import generate_repository_keys  # noqa: E402
from ucernvm.image.demo_os import make_demo_os  # noqa: E402

FQRN = "bench.cern.ch"
KiB = 1024
REPEATS = 5  # lookup passes, each on a fresh connection; medians reported


def publish_seconds(source: Path, repo_base: Path, keys: Path, runs: int) -> tuple[float, Path]:
    """The median time of ``runs`` first publishes of ``source``, and the last repository."""
    times = []
    for run in range(runs):
        repo = repo_base.with_name(f"{repo_base.name}-{run}")
        started = time.perf_counter()
        Publisher(str(repo), FQRN, str(keys), PublishOptions(workers=os.cpu_count() or 1)).publish(str(source))
        times.append(time.perf_counter() - started)
    return statistics.median(times), repo


def catalogs(repo: Path) -> list[tuple[int, int, bytes]]:
    """Every catalog object of ``repo``: (stored bytes, uncompressed bytes, uncompressed data)."""
    found = []
    for path in sorted((repo / "data").glob("*/*C")):
        stored = path.read_bytes()
        data = zlib.decompress(stored)
        found.append((len(stored), len(data), data))
    return found


def lookups(data: bytes, scratch: Path) -> tuple[int, float, float, float]:
    """Entries, microseconds per lookup (fresh connection, then warm) and per directory listing."""
    path = scratch / "catalog.db"
    path.write_bytes(data)
    catalog = Catalog.open(path)
    paths, directories = [catalog.root_prefix], [catalog.root_prefix]
    for at in (catalog.root_prefix,):  # breadth-first over the catalog's own rows
        pending = [at]
        while pending:
            directory = pending.pop()
            for entry in catalog.listing(directory):
                child = join(directory, entry.name)
                paths.append(child)
                if entry.is_directory and not entry.is_nested_mountpoint:
                    directories.append(child)
                    pending.append(child)
    catalog.close()
    random.Random(1).shuffle(paths)
    firsts, warms, listings = [], [], []
    for _ in range(REPEATS):
        catalog = Catalog.open(path)
        for timings in (firsts, warms):
            started = time.perf_counter()
            for each in paths:
                catalog.lookup(each)
            timings.append((time.perf_counter() - started) / len(paths) * 1e6)
        started = time.perf_counter()
        for each in directories:
            catalog.listing(each)
        listings.append((time.perf_counter() - started) / len(directories) * 1e6)
        catalog.close()
    median = statistics.median
    return len(paths), median(firsts), median(warms), median(listings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trees", nargs="*", default=["/usr/lib/python3", "/usr/share"])
    parser.add_argument("--sizes", nargs="*", type=int, default=[1024, 4096])
    parser.add_argument("--runs", type=int, default=3, help="publishes per tree and page size (median)")
    args = parser.parse_args()
    print(f"cpus={os.cpu_count()}, python {sys.version.split()[0]}")
    print("| tree | page | catalogs | uncompressed KiB | stored KiB | publish s | entries | lookup us (first, warm) | listing us |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(dir="/var/tmp") as scratch_name:
        scratch = Path(scratch_name)
        keys = scratch / "keys"
        generate_repository_keys(FQRN, keys)
        trees = [("demo OS", make_demo_os(scratch / "demo-os"))] + [(tree, Path(tree)) for tree in args.trees]
        for label, tree in trees:
            for number, size in enumerate(args.sizes):
                sqlite_db.PAGE_SIZE = size
                seconds, repo = publish_seconds(tree, scratch / f"repo-{len(label)}-{number}", keys, args.runs)
                found = catalogs(repo)
                largest = max(found, key=lambda each: each[1])
                entries, first, warm, listing = lookups(largest[2], scratch)
                print(f"| {label} | {size} | {len(found)} | {sum(c[1] for c in found) / KiB:.1f} | "
                      f"{sum(c[0] for c in found) / KiB:.1f} | {seconds:.2f} | {entries} | "
                      f"{first:.1f}, {warm:.1f} | {listing:.1f} |")


if __name__ == "__main__":
    main()
