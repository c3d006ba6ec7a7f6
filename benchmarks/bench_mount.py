"""Benchmark the CernVM-FS client (`ucernvm mount`) against raw HTTP and a local directory; print a table.

One repository is published into a work directory under /var/tmp: ``/big`` holds large files of
mixed data (half random, half text-like; chunked and compressed by the publisher's defaults),
``/whole`` files of the same data small enough to be stored whole (3 MiB, below the minimum chunk size) and
``/tree`` about 100k small files, directories and symlinks with a nested catalog in every top
directory and in one subdirectory of each. A StratumServer on 127.0.0.1 serves it, first as is,
then with a delay per request (``--latency``). Each figure is one run against a baseline measured
in the same run:

- cold read: a fresh cache, mount, ``cat`` every big file to /dev/null; the baseline downloads the
  same objects with one keep-alive HTTP client (http.client, in its own process, timed from its first
  request to its last byte) and discards them: the transfer alone, no verification, no decompression;
  a second row sets the daemon's CPU against the format's floor: checking the same objects against
  their content hashes and inflating them, in one thread and in the pieces a download brings, what
  every client has to do;
- warm read: ``cat`` again through the mount, with the page cache warm (four passes in one
  ``cat``), and with only the local object cache warm (page cache dropped); the baseline reads
  the source directory the same ways;
- files stored whole: the cold and warm reads of ``/whole``, by the default mount and by one with
  ``--passthrough``, and the cost of an open + read + close of a small file in the page cache
  (three passes over 2,000 files of ``/tree``; with the system calls alone, and with Python's
  ``open()``, whose isatty() is an ioctl FUSE forwards to the daemon), where passthrough adds OPEN
  and RELEASE;
- tree walk: ``find -printf`` with sizes and modes (an lstat of every entry) on a fresh mount with
  an empty cache (every catalog fetched), again on the same mount, and on a new mount whose cache
  holds the catalogs; the baseline walks the source directory with cold and warm kernel caches. A
  second row sets the daemon's CPU in the last walk against the CPU of ``find`` on the local directory
  (mostly the kernel walking ext4). The local and the mount's walks are alternated ``--walk-pairs``
  times (default 3) and each row shows the pair with the median ratio: this host's speed drifts by
  tens of percent within minutes, a pair's two walks share it.

    sudo .venv/bin/python benchmarks/bench_mount.py [--big-files 4] [--big-mib 64] [--whole-mib 240]
                                                   [--entries 100000] [--workloads cold,warm,whole,tree]
                                                   [--walk-pairs 3]

Needs root (FUSE mounts, /proc/sys/vm/drop_caches). ``--work DIR`` keeps the trees and the
repository in DIR and reuses them on the next run. The last line says whether the machine hands its
free memory back to its hypervisor (free page reporting), which makes a cold read's new pages dear.
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from ucernvm.cvmfs.hashing import ContentHash

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

FQRN = "bench.cern.ch"
MIB = 1 << 20
WORDS = [f"w{index:x}" for index in range(4096)]
PAGE_CACHE_PASSES = 4
WHOLE_FILE_MIB = 3  # below the publisher's minimum chunk size (4 MiB): one object per file
OPEN_FILES, OPEN_PASSES = 2000, 3


# --- the trees --------------------------------------------------------------------------------------


def mixed_data(rng: random.Random, size: int) -> bytes:
    """Alternate MiB of random bytes and of text-like words: some compresses, some does not."""
    blocks = []
    for index in range(size // MIB):
        if index % 2:
            text = " ".join(rng.choices(WORDS, k=MIB // 4)).encode()
            blocks.append(text[:MIB])
        else:
            blocks.append(rng.randbytes(MIB))
    return b"".join(blocks)


def build_big(root: Path, files: int, mib: int) -> None:
    root.mkdir(parents=True)
    rng = random.Random(1)
    for index in range(files):
        (root / f"file{index}").write_bytes(mixed_data(rng, mib * MIB))


def build_whole(root: Path, mib: int) -> None:
    root.mkdir(parents=True)
    rng = random.Random(2)
    for index in range(max(1, mib // WHOLE_FILE_MIB)):
        (root / f"file{index:03d}").write_bytes(mixed_data(rng, WHOLE_FILE_MIB * MIB))


def build_tree(root: Path, entries: int) -> None:
    """``tNN/mNN/lNN/`` directories of 32 entries (files of 0-1000 bytes and symlinks); every
    top directory and its first subdirectory are nested catalogs."""
    per_leaf, leaves_per_mid, mids_per_top = 32, 12, 8
    tops = max(1, round(entries / (per_leaf * leaves_per_mid * mids_per_top)))
    for top in range(tops):
        top_dir = root / f"t{top:02d}"
        for mid in range(mids_per_top):
            mid_dir = top_dir / f"m{mid:02d}"
            for leaf in range(leaves_per_mid):
                leaf_dir = mid_dir / f"l{leaf:02d}"
                leaf_dir.mkdir(parents=True)
                for index in range(per_leaf - 4):
                    (leaf_dir / f"f{index:02d}").write_bytes(b"%d\n" % index * (index * 37 % 250))
                for index in range(4):
                    (leaf_dir / f"s{index}").symlink_to(f"f{index:02d}")
            if mid == 0:
                (mid_dir / ".cvmfscatalog").write_bytes(b"")
        (top_dir / ".cvmfscatalog").write_bytes(b"")


def prepare(work: Path, args: argparse.Namespace) -> None:
    """Source trees, keys and the published repository (kept when they are there already)."""
    from ucernvm.cvmfs.publisher import Publisher, PublishOptions
    from ucernvm.cvmfs.signing import generate_repository_keys

    source = work / "source"
    builders = {"big": lambda: build_big(source / "big", args.big_files, args.big_mib),
                "whole": lambda: build_whole(source / "whole", args.whole_mib),
                "tree": lambda: build_tree(source / "tree", args.entries)}
    missing = [name for name in builders if not (source / name).exists()]
    if not missing and (work / "stratum" / FQRN / ".cvmfspublished").exists():
        log(f"reusing the repository in {work}")
        return
    started = time.perf_counter()
    for name in missing:
        builders[name]()
    log(f"trees built in {time.perf_counter() - started:.1f} s: {', '.join(missing)}")
    if not (work / "keys").exists():
        generate_repository_keys(FQRN, work / "keys")
    result = Publisher(str(work / "stratum" / FQRN), FQRN, str(work / "keys"), PublishOptions()).publish(
        str(work / "source"))
    log(f"published {result.files} files, {result.catalogs_written} catalogs in {result.seconds:.1f} s")


# --- mounts and caches ---------------------------------------------------------------------------------


def drop_caches(level: int) -> None:
    """1: the page cache; 3: also dentries and inodes (the kernel's view of every tree)."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text(f"{level}\n")


VIRTIO_BALLOON_F_REPORTING = 5  # the feature bit of free page reporting (virtio spec, 5.5.3)


def free_page_reporting() -> str:
    """Whether this virtual machine hands its free memory back to the hypervisor (virtio-balloon free
    page reporting). Then a page the guest frees and uses again some seconds later costs a fault in the
    hypervisor: the mount's new page-cache pages pay it, raw HTTP, which keeps nothing, does not."""
    features = Path("/sys/bus/virtio/drivers/virtio_balloon").glob("virtio*/features")
    if not any(path.read_text()[VIRTIO_BALLOON_F_REPORTING:][:1] == "1" for path in features):
        return "free page reporting: off"
    delay = Path("/sys/module/page_reporting/parameters/min_free_ms")  # where the kernel lets it be delayed
    after = f", after pages are free for {delay.read_text().strip()} ms" if delay.exists() else ""
    return f"free page reporting: on{after}"


@contextmanager
def mounted(url: str, work: Path, cache: Path, *options: str) -> Iterator[Path]:
    """``ucernvm mount`` as a user runs it; unmounted, and its daemon gone, whatever happens."""
    point = work / "mnt"
    point.mkdir(exist_ok=True)
    command = [sys.executable, "-m", "ucernvm", "mount", url, str(point), "--name", FQRN,
               "--key", str(work / "keys" / f"{FQRN}.pub"), "--cache", str(cache), *options]
    subprocess.run(command, check=True, cwd=REPO_ROOT, stdout=subprocess.DEVNULL)
    pid = None
    try:
        pid = int(os.getxattr(point, "user.pid"))
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)
        if pid is not None:
            wait_gone(pid)
    errors = (cache / "mount.log").read_text() if (cache / "mount.log").exists() else ""
    if errors.strip():
        raise SystemExit(f"the mount daemon reported errors:\n{errors}")


def wait_gone(pid: int) -> None:
    for _ in range(200):
        if not Path(f"/proc/{pid}").exists():
            return
        time.sleep(0.05)
    os.kill(pid, 15)  # our own daemon, still serving after its mount went away


def fresh_cache(work: Path) -> Path:
    cache = work / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    return cache


# --- measurements -------------------------------------------------------------------------------------


def timed(function: Callable[[], object]) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def cat(paths: list[Path]) -> None:
    subprocess.run(["cat", *map(str, paths)], check=True, stdout=subprocess.DEVNULL)


def find_stat(root: Path) -> int:
    """Entries seen by ``find`` printing each one's type, size and mode (an lstat apiece)."""
    out = subprocess.run(["find", str(root), "-printf", "%y %s %m\n"], check=True, capture_output=True).stdout
    return out.count(b"\n")


class StoredObject(NamedTuple):
    content_hash: ContentHash
    path: str  # in the repository
    size: int  # inflated


def stored_objects(work: Path, directory: str) -> list[StoredObject]:
    """Every object (chunk) of the files in ``directory``, in reading order."""
    from ucernvm.client.repository import Repository
    from ucernvm.client.sources import DirectorySource
    from ucernvm.cvmfs.hashing import ObjectType
    from ucernvm.cvmfs.trust import load_master_keys

    repository = Repository(DirectorySource(work / "stratum" / FQRN), FQRN,
                            load_master_keys(work / "keys" / f"{FQRN}.pub"))
    objects = []
    for entry in repository.listdir(f"/{directory}"):  # sorted by name, as `cat` reads them
        kind = ObjectType.PARTIAL if entry.is_chunked else ObjectType.FILE
        chunks = repository.chunks(f"/{directory}/{entry.name}", entry)
        objects += [StoredObject(chunk.content_hash, chunk.content_hash.object_path(kind), chunk.size)
                    for chunk in chunks]
    return objects


def raw_download(url_file: Path) -> str:
    """GET every URL in turn on one keep-alive connection and discard the bodies (the child's side):
    its wall and CPU seconds from the first request to the last byte (the interpreter's start and
    imports are no part of a download), and the bytes received."""
    urls = url_file.read_text().split()
    first = urlsplit(urls[0])
    buffer = memoryview(bytearray(MIB))
    total = 0
    cpu, started = own_cpu(), time.perf_counter()
    connection = http.client.HTTPConnection(first.hostname, first.port)
    for url in urls:
        connection.request("GET", urlsplit(url).path)
        response = connection.getresponse()
        if response.status != 200:
            raise SystemExit(f"{url}: HTTP {response.status}")
        while count := response.readinto(buffer):
            total += count
    return f"{time.perf_counter() - started} {own_cpu() - cpu} {total}"


def raw_seconds(work: Path, urls: list[str]) -> tuple[float, float, int]:
    """Wall and CPU seconds of the raw download, and the bytes it received."""
    url_file = work / "urls.txt"
    url_file.write_text("\n".join(urls) + "\n")
    out = subprocess.run([sys.executable, __file__, "--raw", str(url_file)], check=True, capture_output=True)
    wall, cpu, received = out.stdout.split()
    return float(wall), float(cpu), int(received)


def format_floor_cpu(work: Path, objects: list[StoredObject]) -> float:
    """CPU seconds of what any client must do with these objects before it may serve them: check each
    against its content hash and inflate it, in the mount's 1 MiB pieces as they would arrive (one
    thread; the inflated bytes go nowhere; each object read just before, so that its bytes are in the
    CPU's caches as a received body is; the reads are not counted)."""
    from ucernvm.client.sinks import PIECE_SIZE, Checked, Inflating

    root = work / "stratum" / FQRN
    total = 0.0
    for content_hash, path, size in objects:
        stored = (root / path).read_bytes()
        pieces = [stored[start:start + PIECE_SIZE] for start in range(0, len(stored), PIECE_SIZE)]
        cpu = own_cpu()
        body = Checked(Inflating(_Nowhere(), size), content_hash)
        for piece in pieces:
            body.write(piece)
        if not body.matches():
            raise SystemExit(f"{content_hash} does not match its object")
        body.finish()
        total += own_cpu() - cpu
    return total


class _Nowhere:
    """A sink that drops what it is given (the floor counts no cache)."""

    def write(self, piece: bytes) -> None:
        pass

    def restart(self) -> None:
        pass

    def finish(self) -> None:
        pass


def own_cpu(who: int = resource.RUSAGE_SELF) -> float:
    """User and system CPU seconds of this process so far (RUSAGE_CHILDREN: of its waited-for children)."""
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def daemon_cpu(point: Path) -> float:
    """User and system CPU seconds of the daemon serving ``point``, so far."""
    fields = Path(f"/proc/{int(os.getxattr(point, 'user.pid'))}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- the workloads -------------------------------------------------------------------------------------


def mount_url(server) -> str:  # type: ignore[no-untyped-def]
    return f"{server.url}/cvmfs/{FQRN}"


def cold_read(work: Path, server, rows: list[tuple], label: str, directory: str = "big",  # type: ignore[no-untyped-def]
              options: tuple[str, ...] = ()) -> None:
    objects = stored_objects(work, directory)
    urls = [f"{mount_url(server)}/{stored.path}" for stored in objects]
    raw_s, raw_cpu, stored = raw_seconds(work, urls)
    size = sum(path.stat().st_size for path in (work / "source" / directory).iterdir())
    with mounted(mount_url(server), work, fresh_cache(work), *options) as point:
        files = sorted((point / directory).iterdir())
        cpu = daemon_cpu(point)
        mount_s = timed(lambda: cat(files))
        mount_cpu = daemon_cpu(point) - cpu
    label += files_label(directory, options)
    log(f"cold read{label}: raw {raw_s:.2f} s ({len(urls)} objects, {stored / MIB:.0f} MiB stored), mount {mount_s:.2f} s")
    rows.append((f"cold read{label}, {size // MIB} MiB ({len(urls)} objects, {stored / MIB:.0f} MiB "
                 f"compressed): MB/s", "raw HTTP", size / raw_s / 1e6, size / mount_s / 1e6, "rate"))
    rows.append((f"cold read{label}: CPU s (raw client; mount daemon)", "raw HTTP", raw_cpu, mount_cpu, "time"))
    if not server.latency:  # the floor does not change with the server's latency
        rows.append((f"cold read{label}: CPU s (hash check and inflate of the objects, one thread; mount daemon)",
                     "format's floor", format_floor_cpu(work, objects), mount_cpu, "time"))


def warm_read(work: Path, server, rows: list[tuple], directory: str = "big",  # type: ignore[no-untyped-def]
              options: tuple[str, ...] = ()) -> None:
    local_files = sorted((work / "source" / directory).iterdir())
    size = sum(path.stat().st_size for path in local_files)
    label = files_label(directory, options)
    with mounted(mount_url(server), work, fresh_cache(work), *options) as point:
        files = sorted((point / directory).iterdir())
        cat(files)  # fills the object cache and the page cache
        cat(local_files)
        # From memory a pass takes ~50 ms: four passes in one cat, so that the figure is not noise.
        mount_s = timed(lambda: cat(files * PAGE_CACHE_PASSES))
        local_s = timed(lambda: cat(local_files * PAGE_CACHE_PASSES))
        rows.append((f"warm read{label}, page cache ({PAGE_CACHE_PASSES} passes): MB/s", "local dir",
                     PAGE_CACHE_PASSES * size / local_s / 1e6, PAGE_CACHE_PASSES * size / mount_s / 1e6, "rate"))
        drop_caches(1)
        mount_s = timed(lambda: cat(files))
        drop_caches(1)
        local_s = timed(lambda: cat(local_files))
        rows.append((f"warm read{label}, object cache only (page cache dropped): MB/s", "local dir",
                     size / local_s / 1e6, size / mount_s / 1e6, "rate"))


def files_label(directory: str, options: tuple[str, ...]) -> str:
    return (", files stored whole" if directory == "whole" else "") + "".join(f", {option}" for option in options)


def open_cost(work: Path, server, rows: list[tuple], options: tuple[str, ...]) -> None:  # type: ignore[no-untyped-def]
    """An open, read and close of a small file in the page cache, in microseconds: with the system calls
    alone, and with Python's open(), which also asks isatty(): an ioctl FUSE sends to the daemon every
    time, where a local file system answers it by itself."""
    def opens(root: Path, python_open: bool) -> float:
        paths = sorted(root.glob("tree/t00/*/*/f*"))[:OPEN_FILES]
        for path in paths:  # into the page cache (and the mount's object cache)
            path.read_bytes()
        started = time.perf_counter()
        for _ in range(OPEN_PASSES):
            for path in paths:
                if python_open:
                    with open(path, "rb") as file:
                        file.read()
                else:
                    fd = os.open(path, os.O_RDONLY)
                    os.read(fd, 1 << 16)
                    os.close(fd)
        return (time.perf_counter() - started) / (OPEN_PASSES * len(paths)) * 1e6

    with mounted(mount_url(server), work, fresh_cache(work), *options) as point:
        mount_us = {python_open: opens(point, python_open) for python_open in (False, True)}
    label = files_label("", options)
    rows.append((f"open(2) + read + close of a small file, page cache{label}: us", "local dir",
                 opens(work / "source", False), mount_us[False], "time"))
    rows.append((f"Python open() + read + close of a small file, page cache{label}: us", "local dir",
                 opens(work / "source", True), mount_us[True], "time"))


class WalkPair(NamedTuple):
    """One walk of the local directory and, right after it, the mount's walks (adjacent in time, so a
    host that changes speed within a run moves both)."""

    entries: int
    local_first_s: float  # cold kernel caches (dentries, inodes, pages)
    local_again_s: float
    local_cpu: float  # of the first find: mostly the kernel walking ext4 (its system time)
    first_s: float  # fresh mount, empty cache: every catalog fetched
    again_s: float  # the same mount again
    cached_s: float  # a new mount, the catalogs in its cache
    cached_cpu: float  # the daemon's, in that walk


def walk_pair(work: Path, server) -> WalkPair:  # type: ignore[no-untyped-def]
    root = work / "source" / "tree"
    drop_caches(3)
    cpu = own_cpu(resource.RUSAGE_CHILDREN)
    local_first_s = timed(lambda: find_stat(root))
    local_cpu = own_cpu(resource.RUSAGE_CHILDREN) - cpu
    local_again_s = timed(lambda: find_stat(root))
    cache = fresh_cache(work)
    counts = {}
    drop_caches(3)  # as for the local walk: the kernel's caches empty, the memory they held free
    with mounted(mount_url(server), work, cache) as point:
        first_s = timed(lambda: counts.setdefault("mount", find_stat(point / "tree")))
        again_s = timed(lambda: find_stat(point / "tree"))
    drop_caches(3)
    with mounted(mount_url(server), work, cache) as point:
        cpu = daemon_cpu(point)
        cached_s = timed(lambda: find_stat(point / "tree"))
        cached_cpu = daemon_cpu(point) - cpu
    return WalkPair(counts["mount"], local_first_s, local_again_s, local_cpu, first_s, again_s, cached_s, cached_cpu)


def tree_walk(work: Path, server, rows: list[tuple], label: str, pairs: int) -> None:  # type: ignore[no-untyped-def]
    measured = []
    for _ in range(pairs):
        pair = walk_pair(work, server)
        log(f"walk{label}, {pair.entries} entries: local {pair.local_first_s:.2f} s; mount first {pair.first_s:.2f} s, "
            f"again {pair.again_s:.2f} s, cached catalogs {pair.cached_s:.2f} s (daemon CPU {pair.cached_cpu:.2f} s)")
        measured.append(pair)
    of = f" (the median of {pairs} pairs)" if pairs > 1 else ""

    def median_pair(title: str, baseline: str, base: str, mount: str) -> None:
        """The pair whose ratio is the median: its two figures and that ratio."""
        ranked = sorted(measured, key=lambda pair: getattr(pair, mount) / getattr(pair, base))
        chosen = ranked[len(ranked) // 2]
        rows.append((f"{title}{of}", baseline, getattr(chosen, base), getattr(chosen, mount), "time"))

    entries = measured[0].entries
    median_pair(f"find + lstat{label}, {entries} entries, empty cache: s", "local dir, cold", "local_first_s", "first_s")
    median_pair(f"find + lstat{label}, again on the same mount: s", "local dir, warm", "local_again_s", "again_s")
    median_pair(f"find + lstat{label}, new mount, catalogs cached: s", "local dir, cold", "local_first_s", "cached_s")
    median_pair(f"find + lstat{label}, new mount, catalogs cached: CPU s (find on the local dir; mount daemon)",
                "local dir, cold", "local_cpu", "cached_cpu")


def table(rows: list[tuple]) -> str:
    lines = ["| workload | baseline | baseline | mount | mount vs baseline |", "|---|---|---|---|---|"]
    for title, baseline, base_value, value, kind in rows:
        if kind == "rate":
            lines.append(f"| {title} | {baseline} | {base_value:,.0f} | {value:,.0f} | {value / base_value:.2f} of it |")
        else:
            lines.append(f"| {title} | {baseline} | {base_value:.2f} | {value:.2f} | {value / base_value:.2f}x |")
    return "\n".join(lines)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--big-files", type=int, default=4)
    parser.add_argument("--big-mib", type=int, default=64)
    parser.add_argument("--whole-mib", type=int, default=240, help=f"MiB of files of {WHOLE_FILE_MIB} MiB, stored whole")
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--latency", type=float, default=0.02, help="seconds per request in the second pass")
    parser.add_argument("--work", type=Path, help="keep the trees and the repository here (reused when present)")
    parser.add_argument("--workloads", default="cold,warm,whole,tree", help="comma-separated: cold, warm, whole, tree")
    parser.add_argument("--walk-pairs", type=int, default=3,
                        help="local and mount walks alternated this many times; each row reports the median pair")
    parser.add_argument("--raw", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.raw:
        print(raw_download(args.raw))
        return 0
    if os.geteuid() != 0:
        log("bench_mount: needs root (FUSE mounts, drop_caches)")
        return 2
    from ucernvm.server import StratumServer

    workloads = set(args.workloads.split(","))
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-mount-", dir="/var/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    rows: list[tuple] = []
    try:
        prepare(work, args)
        with StratumServer(work / "stratum") as server:
            for latency in (0.0, args.latency):
                server.latency = latency
                label = f", {latency * 1000:g} ms per request" if latency else ""
                if "cold" in workloads:
                    cold_read(work, server, rows, label)
                if "warm" in workloads and not latency:  # served from the cache: no request is made
                    warm_read(work, server, rows)
                if "whole" in workloads and not latency:
                    for options in ((), ("--passthrough",)):
                        cold_read(work, server, rows, label, "whole", options)
                        warm_read(work, server, rows, "whole", options)
                        open_cost(work, server, rows, options)
                if "tree" in workloads:
                    tree_walk(work, server, rows, label, args.walk_pairs)
    finally:
        subprocess.run(["umount", "-l", str(work / "mnt")], capture_output=True)
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"{os.cpu_count()} cores; latency pass: {args.latency * 1000:g} ms per request; {free_page_reporting()}")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
