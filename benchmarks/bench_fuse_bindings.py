"""Compare FUSE bindings for serving the read-only CernVM-FS tree, and print a table.

Bindings: ``raw`` is ucernvm.client.fuse.kernel (the kernel protocol on /dev/fuse, no libfuse),
``raw-*`` are variants of its MountOptions, ``pyfuse3`` is libfuse3 through pyfuse3 (on trio),
driven by the same Operations tree through a small adapter. Each binding serves one synthetic
MemoryTree (default 100k files in nested directories, symlinks, hard links, nine 64 MiB files)
from its own process, so the client's Python does not share a GIL with the server; a copy of
the tree on the local disk is the baseline. Every figure is one run (the ratios are what count).

    sudo python3 benchmarks/bench_fuse_bindings.py [--bindings raw,pyfuse3] [--entries 100000]

Needs root and /dev/fuse; pyfuse3 needs `apt-get install libfuse3-dev pkg-config fuse3` and
`pip install pyfuse3`; the footprint column uses `ldd`, `strip` and `zstd`.
"""

from __future__ import annotations

import argparse
import errno
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

BIG_SIZE = 64 << 20
BIG_FILES = 9  # big0 for sequential reads, big1..big8 for the parallel readers
READY = "ready"  # a file in the tree's root: stat() succeeds once the mount is live
VARIANTS: dict[str, dict[str, Any]] = {
    "raw": {},
    "raw-1thread": {"threads": 1},
    "raw-readdir": {"readdirplus": False},
    "raw-ra128k": {"read_ahead_kb": None},
}
IMPORTS = {"raw": "ucernvm.client.fuse.kernel", "pyfuse3": "pyfuse3"}


# --- the tree ------------------------------------------------------------------------------------


def tree_spec(entries: int, big: bool) -> list[tuple[str, str, Any]]:
    """(path, kind, payload) for every entry, parents first; the same for FUSE and the local copy."""
    spec: list[tuple[str, str, Any]] = [(READY, "file", b"")]
    per_leaf = 100
    leaves = max(1, entries // per_leaf)
    tops = max(1, leaves // 10)
    for top in range(tops):
        spec.append((f"d{top:03d}", "dir", None))
        for sub in range(10):
            leaf = f"d{top:03d}/s{sub:02d}"
            spec.append((leaf, "dir", None))
            for index in range(per_leaf - 2):
                spec.append((f"{leaf}/file{index:03d}.txt", "file", b"x" * (index * 7 % 300)))
            spec.append((f"{leaf}/link", "symlink", b"file000.txt"))
            spec.append((f"{leaf}/hard", "link", f"{leaf}/file001.txt"))
    if big:
        spec.append(("big", "dir", None))
        spec.extend((f"big/big{index}", "big", None) for index in range(BIG_FILES))
    return spec


def big_data() -> bytes:
    return (os.urandom(1 << 20) * (BIG_SIZE >> 20))


def build_memory_tree(spec: list[tuple[str, str, Any]]):  # -> MemoryTree
    from ucernvm.client.fuse.memory import MemoryTree
    from ucernvm.client.fuse.operations import ROOT_INO

    tree = MemoryTree(mtime_ns=time.time_ns())
    inodes = {"": ROOT_INO}
    data = big_data() if any(kind == "big" for _, kind, _ in spec) else b""
    for path, kind, payload in spec:
        parent, _, name = path.rpartition("/")
        where, raw = inodes[parent], name.encode()
        if kind == "dir":
            inodes[path] = tree.mkdir(where, raw)
        elif kind == "file":
            inodes[path] = tree.add_file(where, raw, payload)
        elif kind == "big":
            inodes[path] = tree.add_file(where, raw, data)
        elif kind == "symlink":
            tree.symlink(where, raw, payload)
        else:
            tree.link(where, raw, inodes[payload])
    return tree


def build_local_tree(spec: list[tuple[str, str, Any]], root: Path) -> None:
    data = big_data()
    root.mkdir()
    for path, kind, payload in spec:
        target = root / path
        if kind == "dir":
            target.mkdir()
        elif kind == "file":
            target.write_bytes(payload)
        elif kind == "big":
            target.write_bytes(data)
        elif kind == "symlink":
            target.symlink_to(payload.decode())
        else:
            os.link(root / payload, target)
    os.sync()


# --- servers (run in a child process: `--serve BINDING MOUNTPOINT`) --------------------------------


def serve(binding: str, mountpoint: str, entries: int, big: bool) -> None:
    tree = build_memory_tree(tree_spec(entries, big))
    if binding == "pyfuse3":
        serve_pyfuse3(tree, mountpoint)
        return
    from ucernvm.client.fuse.kernel import MountOptions, mount

    mount(tree, mountpoint, MountOptions(**VARIANTS[binding])).serve()


def serve_pyfuse3(tree, mountpoint: str) -> None:
    """pyfuse3 in front of an Operations tree, with the same cache policy as the raw server."""
    import pyfuse3
    import trio  # type: ignore[import-untyped]

    timeout = 86400.0 * 365

    def entry(attributes) -> pyfuse3.EntryAttributes:
        out = pyfuse3.EntryAttributes()
        out.st_ino = attributes.ino
        out.st_mode = attributes.mode
        out.st_nlink = attributes.nlink
        out.st_size = attributes.size
        out.st_uid, out.st_gid, out.st_rdev = attributes.uid, attributes.gid, attributes.rdev
        out.st_blksize, out.st_blocks = 4096, (attributes.size + 511) >> 9
        out.st_atime_ns = out.st_mtime_ns = out.st_ctime_ns = attributes.mtime_ns
        out.entry_timeout = out.attr_timeout = timeout
        return out

    def fuse_error(error: OSError) -> pyfuse3.FUSEError:
        return pyfuse3.FUSEError(error.errno or errno.EIO)

    class Adapter(pyfuse3.Operations):
        def __init__(self) -> None:
            super().__init__()
            self.handles: dict[int, object] = {}
            self.counter = 0

        def _handle(self, value: object) -> int:
            self.counter += 1
            self.handles[self.counter] = value
            return self.counter

        async def lookup(self, parent_inode, name, ctx=None):
            try:
                return entry(tree.lookup(parent_inode, name))
            except OSError as error:
                if error.errno == errno.ENOENT:  # negative entry, cached like the raw server's
                    negative = pyfuse3.EntryAttributes()
                    negative.st_ino, negative.entry_timeout = 0, timeout
                    return negative
                raise fuse_error(error) from None

        async def forget(self, inode_list):
            tree.forget(inode_list)

        async def getattr(self, inode, ctx=None):
            try:
                return entry(tree.getattr(inode))
            except OSError as error:
                raise fuse_error(error) from None

        async def readlink(self, inode, ctx):
            return tree.readlink(inode)

        async def open(self, inode, flags, ctx):
            return pyfuse3.FileInfo(fh=self._handle(tree.open(inode, flags)), keep_cache=True)

        async def read(self, fh, off, size):
            return tree.read(self.handles[fh], off, size)

        async def release(self, fh):
            tree.release(self.handles.pop(fh))

        async def opendir(self, inode, ctx):
            return self._handle(tree.opendir(inode))

        async def readdir(self, fh, start_id, token):
            for item in tree.readdir(self.handles[fh], start_id):
                if not pyfuse3.readdir_reply(token, item.name, entry(item.attributes), item.next_offset):
                    break

        async def releasedir(self, fh):
            tree.releasedir(self.handles.pop(fh))

        async def statfs(self, ctx):
            stats, out = tree.statfs(), pyfuse3.StatvfsData()
            out.f_bsize = out.f_frsize = stats.block_size
            out.f_blocks, out.f_files, out.f_namemax = stats.blocks, stats.files, stats.name_max
            return out

        async def getxattr(self, inode, name, ctx):
            try:
                return tree.getxattr(inode, name)
            except OSError as error:
                raise fuse_error(error) from None

        async def listxattr(self, inode, ctx):
            return list(tree.listxattr(inode))

    options = set(pyfuse3.default_options) | {"fsname=ucernvm", "subtype=ucernvm", "ro", "allow_other"}
    pyfuse3.init(Adapter(), mountpoint, options)
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=False)


class Server:
    """A server process for one binding, mounted at ``mountpoint`` until ``stop``."""

    def __init__(self, binding: str, mountpoint: Path, entries: int, big: bool) -> None:
        self.mountpoint = mountpoint
        started = time.perf_counter()
        self.process = subprocess.Popen([sys.executable, __file__, "--serve", binding, str(mountpoint),
                                         "--entries", str(entries)] + ([] if big else ["--no-big"]))
        while True:  # stat blocks while INIT is pending, and fails until mount(2) happened
            try:
                os.stat(mountpoint / READY)
                break
            except FileNotFoundError:
                if self.process.poll() is not None:
                    raise SystemExit(f"the {binding} server exited with {self.process.returncode}")
                time.sleep(0.001)
        self.startup = time.perf_counter() - started

    def stop(self) -> None:
        if subprocess.run(["umount", str(self.mountpoint)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(self.mountpoint)], check=False)
        self.process.wait(30)


# --- measurements ----------------------------------------------------------------------------------


def timed(function, *args) -> tuple[float, Any]:
    started = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - started, result


def find_count(root: Path) -> int:
    out = subprocess.run(f"find {root} | wc -l", shell=True, check=True, capture_output=True, text=True)
    return int(out.stdout)


def walk_stat(root: Path) -> int:
    count = 0
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            os.lstat(os.path.join(directory, name))
            count += 1
    return count


def read_file(path: Path) -> int:
    buffer = bytearray(1 << 20)
    total = 0
    with open(path, "rb", buffering=0) as handle:
        while count := handle.readinto(buffer):
            total += count
    return total


def read_parallel(paths: list[Path]) -> int:
    sizes: list[int] = []
    threads = [threading.Thread(target=lambda p=path: sizes.append(read_file(p))) for path in paths]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(sizes)


def drop_cache(paths: list[Path]) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)


def measure_tree(root: Path, fresh_mount=None) -> dict[str, float]:
    """Timings on ``root``; ``fresh_mount()`` remounts so the stat walk starts cold too."""
    big = [root / "big" / f"big{index}" for index in range(BIG_FILES)]
    figures: dict[str, float] = {}
    figures["find_s"], figures["entries"] = timed(find_count, root)
    figures["find_again_s"], _ = timed(find_count, root)
    if fresh_mount is None:
        drop_cache(big)
    figures["read_s"], size = timed(read_file, big[0])
    figures["read_again_s"], _ = timed(read_file, big[0])
    figures["parallel_s"], total = timed(read_parallel, big[1:])
    figures["read_mb_s"] = size / figures["read_s"] / 1e6
    figures["read_again_mb_s"] = size / figures["read_again_s"] / 1e6
    figures["parallel_mb_s"] = total / figures["parallel_s"] / 1e6
    if fresh_mount is not None:
        root = fresh_mount()
    figures["stat_s"], figures["stat_entries"] = timed(walk_stat, root)
    figures["stat_again_s"], _ = timed(walk_stat, root)
    return figures


def import_ms(module: str) -> float:
    """Cumulative import time of ``module`` in a fresh interpreter (after one warm-up run)."""
    command = [sys.executable, "-X", "importtime", "-c", f"import {module}"]
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    subprocess.run(command, env=env, capture_output=True, check=True)
    lines = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stderr.splitlines()
    mine = [line for line in lines if line.rsplit("|", 1)[-1].strip() == module]
    return int(mine[-1].split("|")[1]) / 1000


def footprint(module: str) -> dict[str, Any]:
    """What importing ``module`` adds to a bare interpreter: modules (compiled), .so files and
    the shared libraries they need beyond the interpreter's own, each stripped; and zstd -19."""
    probe = ("import json, sys; before = set(sys.modules); import {m}; "
             "print(json.dumps([getattr(sys.modules[n], '__file__', None) for n in set(sys.modules) - before]))")
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    added = json.loads(subprocess.run([sys.executable, "-c", probe.format(m=module)], env=env,
                                      capture_output=True, text=True, check=True).stdout)
    files = sorted({path for path in added if path})
    extensions = [path for path in files if path.endswith(".so")]
    libraries = sorted({lib for path in extensions for lib in ldd(path)} - ldd(sys.executable))
    archive = io.BytesIO()
    with tempfile.TemporaryDirectory() as scratch, tarfile.open(fileobj=archive, mode="w") as tar:
        for path in files + libraries:
            if path.endswith(".py"):
                data = _marshal_code(path)
            else:
                stripped = os.path.join(scratch, "stripped")
                subprocess.run(["strip", "-o", stripped, path], check=True)
                data = Path(stripped).read_bytes()
            info = tarfile.TarInfo(path.lstrip("/") + ("c" if path.endswith(".py") else ""))
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    packed = subprocess.run(["zstd", "-19", "-q", "-c"], input=archive.getvalue(), capture_output=True, check=True).stdout
    return {
        "modules": sum(path.endswith(".py") for path in files),
        "module_files": [os.path.basename(path) for path in files if path.endswith(".py")],
        "extensions": [_short_name(path) for path in extensions],
        "libraries": [os.path.basename(path) for path in libraries],
        "bytes": len(archive.getvalue()),
        "zstd_bytes": len(packed),
    }


def _short_name(path: str) -> str:
    """``_ctypes.so`` for ``.../_ctypes.cpython-311-x86_64-linux-gnu.so``; packages by their directory."""
    name = os.path.basename(path).split(".")[0]
    return f"{os.path.basename(os.path.dirname(path))}.so" if name == "__init__" else f"{name}.so"


def _marshal_code(path: str) -> bytes:
    import marshal

    return marshal.dumps(compile(Path(path).read_bytes(), path, "exec", optimize=1))


def ldd(path: str) -> set[str]:
    out = subprocess.run(["ldd", path], capture_output=True, text=True).stdout
    return {os.path.realpath(line.split("=>")[1].split("(")[0].strip()) for line in out.splitlines()
            if "=>" in line and "/" in line.split("=>")[1]}


# --- the table ---------------------------------------------------------------------------------------


def table(results: dict[str, dict[str, float]], extra: dict[str, dict[str, object]]) -> str:
    columns = list(results)
    rows = [
        ("find MOUNT \\| wc -l, first (s)", "find_s", "time"),
        ("find, again (s)", "find_again_s", "time"),
        ("os.walk + lstat every entry, first (s)", "stat_s", "time"),
        ("os.walk + lstat, again (s)", "stat_again_s", "time"),
        ("read 64 MiB, first (MB/s)", "read_mb_s", "rate"),
        ("read 64 MiB, again: page cache (MB/s)", "read_again_mb_s", "rate"),
        ("8 parallel readers, first (MB/s total)", "parallel_mb_s", "rate"),
    ]
    lines = ["| figure | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for title, key, kind in rows:
        cells = []
        for column in columns:
            value, local = results[column][key], results["local"][key]
            if column == "local":
                ratio = ""
            else:
                ratio = f" ({value / local:.2f}x local)" if kind == "time" else f" ({value / local:.2f} of local)"
            cells.append(f"{value:.2f}{ratio}" if kind == "time" else f"{value:.0f}{ratio}")
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    for title, key in [("startup to mount live (s)", "startup_s"), ("import time (ms)", "import_ms"),
                       ("initramfs addition: modules / zstd -19 KB", "footprint"),
                       ("extra .so and shared libraries", "libraries")]:
        lines.append(f"| {title} | " + " | ".join(str(extra.get(column, {}).get(key, "-")) for column in columns) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bindings", default="raw,pyfuse3", help=f"comma-separated: {', '.join([*VARIANTS, 'pyfuse3'])}")
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--serve", nargs=2, metavar=("BINDING", "MOUNTPOINT"), help=argparse.SUPPRESS)
    parser.add_argument("--no-big", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve[0], args.serve[1], args.entries, not args.no_big)
        return 0
    if os.geteuid() != 0:
        print("bench_fuse_bindings: needs root (mount(2) of /dev/fuse)", file=sys.stderr)
        return 2
    bindings = args.bindings.split(",")
    unknown = [name for name in bindings if name not in VARIANTS and name != "pyfuse3"]
    if unknown:
        parser.error(f"unknown bindings: {', '.join(unknown)}")
    if "pyfuse3" in bindings and importlib.util.find_spec("pyfuse3") is None:
        print("bench_fuse_bindings: pyfuse3 is not installed, skipping it", file=sys.stderr)
        bindings.remove("pyfuse3")
    spec = tree_spec(args.entries, big=True)
    work = Path(tempfile.mkdtemp(prefix="bench-fuse-"))
    results: dict[str, dict[str, float]] = {}
    extra: dict[str, dict[str, object]] = {}
    try:
        build_local_tree(spec, work / "local")
        results["local"] = measure_tree(work / "local")
        shutil.rmtree(work / "local")
        mountpoint = work / "mnt"
        mountpoint.mkdir()
        for binding in bindings:
            module = IMPORTS["pyfuse3" if binding == "pyfuse3" else "raw"]
            server = Server(binding, mountpoint, 0, big=False)
            server.stop()
            added = footprint(module)
            extra[binding] = {
                "startup_s": f"{server.startup:.3f}",
                "import_ms": f"{import_ms(module):.1f}",
                "footprint": f"{added['modules']} / {added['zstd_bytes'] / 1000:.0f}",
                "libraries": ", ".join(added["extensions"] + added["libraries"]) or "none",
            }
            server = Server(binding, mountpoint, args.entries, big=True)

            def remount(binding: str = binding) -> Path:
                nonlocal server
                server.stop()
                server = Server(binding, mountpoint, args.entries, big=True)
                return mountpoint

            try:
                results[binding] = measure_tree(mountpoint, remount)
            finally:
                server.stop()
            print(f"{binding}: {json.dumps(results[binding])}\n  imports {' '.join(added['module_files'])}", file=sys.stderr)
    finally:
        subprocess.run(["umount", "-l", str(work / "mnt")], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    entries = {column: int(figures["stat_entries"]) for column, figures in results.items()}
    print(f"entries seen by os.walk: {entries}; files of {BIG_SIZE >> 20} MiB; {os.cpu_count()} cores")
    print(table(results, extra))
    return 0


if __name__ == "__main__":
    sys.exit(main())
