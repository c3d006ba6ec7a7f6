"""Prefetch lists: download ahead the files a boot is known to read, and record what a mount read.

A cold boot of an OS streamed from a snapshot reads about a thousand files for the first time, and
each first read waits for its download, verification and cache write while the process that wanted it
stands still. A snapshot may carry the list of those files (``.ucernvm_prefetch`` at the OS root: one
repository path per line, in the order a boot first read them; ``#`` comments). The mount then
downloads them in that order with a few background threads while the OS boots, so that most first
reads find their file cached. Container images that are fetched lazily do the same (eStargz's and
Nydus's prefetch lists). The list only says what to fetch early: every object is still verified
against its content hash, and an entry that is missing, not a regular file or fails is skipped (the
read that needs it, if any, reports the error); the paths the snapshot does not hold, a sign of a list
made for another tree, are one warning once the walk ended (how many, the first few). Once every file
of a list was fetched, the cache keeps a mark (``prefetched-<the list's content hash>-<the snapshot's
root hash>``) and later mounts of that snapshot leave the list alone: walking it again on a warm boot
would only compete with the OS for the daemon's interpreter. A new snapshot is walked again, even with the same list: its files may differ.

The mount records, in turn, the order in which files were first read (``ReadOrder``); the daemon
writes it to ``read-order.txt`` in its cache directory when it reports its statistics (SIGUSR1). That
file, taken after a boot, is the next snapshot's prefetch list.
"""

from __future__ import annotations

import os
import queue
import threading
import time

from ucernvm.client import logbuffer
from ucernvm.client.boot_layer import ListedFile, build_boot_layer
from ucernvm.client.fuse.operations import report
from ucernvm.client.repository import Repository, normalize_path
from ucernvm.cvmfs.catalog import Chunk, DirectoryEntry
from ucernvm.errors import UcernvmError

PREFETCH_LIST = ".ucernvm_prefetch"
READ_ORDER_FILE = "read-order.txt"
# In the cache directory, per list and snapshot: every file of it was fetched into this cache. Trusted by its
# presence alone: one put there by another hand only spares a walk (and the boot layer's build), it serves
# nothing; every file is still fetched, verified, on its first read.
DONE_PREFIX = "prefetched-"
MAX_ENTRIES = 100_000  # a boot reads a few thousand files; beyond this a list is not a boot's
MAX_LIST_BYTES = 16 << 20
NAMED_MISSING = 5  # of a list's paths not in the snapshot, those its warning names


def parse_prefetch_list(data: bytes) -> list[str]:
    """The repository paths of a prefetch list, in order; unusable lines are dropped, not fatal."""
    paths: list[str] = []
    seen: set[str] = set()
    for raw in data[:MAX_LIST_BYTES].splitlines():
        line = raw.strip()
        if not line or line.startswith(b"#") or b"\0" in line:
            continue
        try:
            path = normalize_path(os.fsdecode(line))
        except UcernvmError:  # '..'
            continue
        if path and path not in seen:
            seen.add(path)
            paths.append(path)
            if len(paths) == MAX_ENTRIES:
                break
    return paths


def warn(message: str) -> None:
    """A warning of the mount: on its stderr (the daemon's: mount.log) and in user.logbuffer, without importing
    logging."""
    logbuffer.remember(message)
    report(f"ucernvm mount: warning: {message}")


class BackgroundWalk:
    """A walk through a list in a thread of its own (``_run``), which checks ``_stop`` between files."""

    thread_name = "walk"
    kind = "list"  # what the warnings call the list

    def __init__(self, list_path: str) -> None:
        self.list_path = list_path
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._missing: list[str] = []  # listed paths the snapshot does not hold (the walk's thread only)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._walk_and_report, name=self.thread_name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def wait(self, timeout: float | None = None) -> bool:
        """True once the whole list was worked through (or the walk was stopped)."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self._thread is None or not self._thread.is_alive()

    def _run(self) -> None:
        raise NotImplementedError

    def _walk_and_report(self) -> None:
        self._run()
        if self._missing and not self._stop.is_set():
            named = ", ".join(self._missing[:NAMED_MISSING])
            more = len(self._missing) - NAMED_MISSING
            count = len(self._missing)
            warn(f"{self.kind} {self.list_path} names {count} path{'s' if count > 1 else ''} not in the snapshot: "
                 f"{named}{f' and {more} more' if more > 0 else ''}")

    def _list_missing(self) -> None:
        warn(f"{self.kind} {self.list_path} is not in the snapshot")


class Prefetcher(BackgroundWalk):
    """Fetch the files of a prefetch list into the repository's cache, in order, in the background.

    ``threads`` downloads run at a time: enough to keep the network busy, few enough that the
    OS's own reads, served by the mount's workers, are not queued behind them for long."""

    thread_name = "prefetch"
    kind = "prefetch list"

    def __init__(self, repository: Repository, list_path: str, threads: int = 2, boot_layer: bool = False) -> None:
        super().__init__(list_path)
        self.repository = repository
        self.threads = threads
        self.boot_layer = boot_layer  # once fetched, lay the list's files out beside the cache (boot_layer.py)
        self.listed = 0
        self.fetched = 0  # objects fetched or found cached
        self.skipped = 0  # entries missing or not regular files
        self.failed = 0  # objects that could not be fetched
        self.done_before = False  # this cache already holds the list's files: not walked again
        self.seconds: float | None = None  # from the start to the end of the walk, once it ended
        self.layer: dict[str, object] | None = None  # the boot layer built: files and seconds, or why not
        self._counting = threading.Lock()

    def statistics(self) -> dict[str, int | bool | float | None]:
        statistics: dict[str, int | bool | float | None | dict[str, object]] = {
            "listed": self.listed, "fetched": self.fetched, "skipped": self.skipped, "failed": self.failed,
            "done_before": self.done_before, "seconds": self.seconds}
        if self.layer is not None:
            statistics["layer"] = self.layer
        return statistics

    def _run(self) -> None:
        try:
            entry = self.repository.lookup(self.list_path)
            if entry is None:
                self._list_missing()
                return
            if entry.content_hash is None:
                return
            # Per list and snapshot: a new snapshot may keep the list and change the files it names.
            done = f"{DONE_PREFIX}{entry.content_hash.hex}-{self.repository.root_hash.hex}"
            if self._cache_has(done):
                self.done_before = True
                return
            paths = parse_prefetch_list(self.repository.read(self.list_path))
        except (UcernvmError, OSError):
            return  # no list, or a broken one: the boot reads on demand as without
        self.listed = len(paths)
        started = time.monotonic()
        files = self._walk(paths)
        self.seconds = round(time.monotonic() - started, 2)
        if not self._stop.is_set() and not self.failed:
            if self.boot_layer:
                self._build_layer(files)
            self._mark_done(done)

    def _build_layer(self, files: list[ListedFile]) -> None:
        cache = self.repository.cache
        if cache is None:
            return
        started = time.monotonic()
        try:
            laid_out = build_boot_layer(self.repository, self.list_path, files, cache.local_path("."))
        except (UcernvmError, OSError) as error:
            self.layer = {"error": str(error)}  # the mount serves every file, as without a layer
            return
        self.layer = {"files": laid_out, "seconds": round(time.monotonic() - started, 2)}

    def _cache_has(self, name: str) -> bool:
        cache = self.repository.cache
        if cache is None:
            return False
        try:
            os.stat(name, dir_fd=cache.directory_fd)
        except FileNotFoundError:
            return False
        return True

    def _mark_done(self, name: str) -> None:
        cache = self.repository.cache
        if cache is not None:
            try:
                os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644, dir_fd=cache.directory_fd))
            except OSError:
                pass  # the next mount walks the list again, finding everything cached

    def _walk(self, paths: list[str]) -> list[ListedFile]:
        """Fetch the regular files among ``paths``; returns them, as looked up, for the boot layer.

        ``threads`` workers fetch the chunks the walk hands them, which stays at most two per worker ahead.
        Plain threads and a queue: concurrent.futures would bring logging into a first boot's daemon
        while the boot loader reads through the mount (see lazylog.py)."""
        files: list[ListedFile] = []
        ahead: queue.Queue[tuple[DirectoryEntry, Chunk] | None] = queue.Queue(maxsize=2 * self.threads)
        workers = [threading.Thread(target=self._fetch_from, args=(ahead,), name=f"prefetch-{number}", daemon=True)
                   for number in range(self.threads)]
        for worker in workers:
            worker.start()
        try:
            for path in paths:
                if self._stop.is_set():
                    break
                try:
                    entry = self.repository.lookup(path)
                    if entry is None:
                        self._missing.append(path)
                    if entry is None or not entry.is_regular or entry.is_external:
                        self._count("skipped")
                        continue
                    chunks = self.repository.chunks(path, entry)
                except (UcernvmError, OSError):
                    self._count("failed")
                    continue
                files.append(ListedFile(path, entry, chunks))
                for chunk in chunks:
                    ahead.put((entry, chunk))
        finally:
            for _ in workers:
                ahead.put(None)
            for worker in workers:
                worker.join()
        return files

    def _fetch_from(self, ahead: queue.Queue[tuple[DirectoryEntry, Chunk] | None]) -> None:
        while (work := ahead.get()) is not None:
            try:
                self._fetch(*work)
            except Exception:  # a bug: counted, and the worker goes on so that the walk cannot stall
                self._count("failed")

    def _fetch(self, entry: DirectoryEntry, chunk: Chunk) -> None:
        if self._stop.is_set():
            return
        try:
            os.close(self.repository.open_chunk(entry, chunk))
        except (UcernvmError, OSError):
            self._count("failed")
        else:
            self._count("fetched")

    def _count(self, counter: str) -> None:
        with self._counting:
            setattr(self, counter, getattr(self, counter) + 1)


class ReadOrder:
    """The paths of the files a mount read, each once, in the order of their first read."""

    def __init__(self) -> None:
        self._seen: dict[str, None] = {}  # insertion-ordered; setdefault is atomic for the workers

    def __len__(self) -> int:
        return len(self._seen)

    def add(self, path: str) -> None:
        self._seen.setdefault(path, None)

    def data(self) -> bytes:
        """The list's lines: each path's own bytes (names need not be UTF-8); a name with a newline, which a
        line cannot hold, is left out."""
        return b"".join(os.fsencode(path) + b"\n" for path in list(self._seen) if "\n" not in path)

    def write(self, directory_fd: int, name: str = READ_ORDER_FILE) -> None:
        """Write the list (as a prefetch list) into a directory, replacing the last one at once."""
        temporary = f".{name}.{os.getpid()}"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644, dir_fd=directory_fd)
        with os.fdopen(fd, "wb") as handle:
            handle.write(b"# files in the order of their first read (ucernvm); a prefetch list\n" + self.data())
        os.replace(temporary, name, src_dir_fd=directory_fd, dst_dir_fd=directory_fd)
