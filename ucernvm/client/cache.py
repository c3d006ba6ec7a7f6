"""The local cache: verified objects, decompressed, in a content-addressed directory.

Layout (as cvmfs's posix cache): ``XX/<rest of hex><algorithm id>`` holds the *decompressed* bytes of
an object (the type suffix is dropped), ``txn/`` holds downloads in progress. An object is written to
``txn/`` while it arrives and renamed into place only once its stored bytes matched their hash (the
source checks that), so the cache never holds a partial or unverified object, whatever happens to the
process or the machine; what a killed process left in ``txn/`` is removed by the next one.

A stored object is trusted by its name from then on, as cvmfs trusts its cache (it hashes nothing again at
open; cvmfs_fsck checks a cache apart). Its hash is of the compressed bytes and the cache holds them
inflated, so a check means compressing each object again exactly as the publisher did: zlib level 6 runs
at 35 MB/s on one x86-64 core, 2.4 s of a warm Debian boot's 84 MB (many times that under emulation),
and an object a publisher compressed otherwise (ISA-L) cannot be checked that way at all. The cache lives
on the scratch disk, which the OS it booted can write; but so is the writable layer that lies above the
snapshot, so a hand that could change an object could as well change the file the OS sees. What the
cache does refuse, with a warning each: anything but a regular file in an object's place (removed and fetched
again: a FIFO would block the mount, a link lead out of the cache), a copy of another size than its catalog
entry gives (the same), and a copy its user finds broken (a catalog that does not open, a certificate the
whitelist does not list: ``Repository._checked`` fetches it again).

The cache also keeps, per repository, the last verified whitelist, manifest and certificate (a mount
with every server down uses them: offline mode) and the newest manifest's timestamp and revision, the
breadcrumb ``cvmfschecksum.<fqrn>``, so an older manifest is refused after a newer one was seen. The copies
are verified again at each use as if fetched (signatures, name), only the whitelist's expiry is not checked
offline; the breadcrumb guards against servers, not against the disk's writer, who could remove it.

Quota: when the cached bytes exceed it, the least recently used objects are removed until half the
quota is used (as cvmfs); pinned objects (open files, loaded catalogs) are never removed. Use is
recorded in each file's mtime, so the order survives restarts without a database.

A full disk (the scratch disk's writable layer shares it with the cache) is met the same way: the
least recently used objects make room for the new one. When nothing can go, CacheFull: a caller that
can do without the cache fetches the object into memory instead (a catalog).

One mount uses a cache at a time, as one cvmfs2 instance locks its cache directory: two processes would
each count the quota for themselves (the cache growing past it), evict the objects the other pinned
(its loaded catalogs, its pin list), and append to one log. A mount takes ``lock`` (``flock``), which
the kernel drops when the last process holding it ends, however it ends.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ucernvm.client.lazylog import LazyLogger
from ucernvm.client.sinks import MAX_NAMED_BYTES, Sink
from ucernvm.cvmfs.hashing import ContentHash
from ucernvm.errors import FormatError, StorageError
from ucernvm.records import NamedTuple

BREADCRUMB_PREFIX = "cvmfschecksum."
MIB = 1 << 20  # the unit of a quota (CVMFS_QUOTA_LIMIT): cvmfs multiplies it by 1024 * 1024
DEFAULT_QUOTA = 4000  # MiB, cvmfs's default CVMFS_QUOTA_LIMIT
TOUCH_INTERVAL = 60.0  # seconds: how stale the eviction order may be for objects in use
ROOM_MARGIN = 32 << 20  # bytes freed beyond the object on a full disk, so the next misses fit too
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
TOP_DIRECTORIES = frozenset({"txn", *(f"{number:02x}" for number in range(256))})  # and the fan-out ones
ABANDONED_AFTER = 60.0  # seconds without a write before an unlocked download's file in txn/ is removed
LOCK_FILE = "lock"  # held by the mount using the cache; holds its mount point
# How an object's place is opened (ObjectCache._stored): never through a link, never waiting for a FIFO's writer,
# never taking a terminal planted there as the daemon's own.
_IN_PLACE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_log = LazyLogger(__name__)


class CacheFull(StorageError):
    """The cache's disk has no room for an object, even after evicting what could go."""


class Breadcrumb(NamedTuple):
    """The newest manifest this cache has seen for a repository: ``<root hash>T<timestamp>R<revision>``."""

    root_hash: str
    timestamp: int
    revision: int

    @classmethod
    def parse(cls, text: str) -> Breadcrumb:
        try:
            root_hash, rest = text.strip().split("T", 1)
            timestamp, revision = rest.split("R", 1)
            return cls(root_hash, int(timestamp), int(revision))
        except ValueError:
            raise FormatError(f"malformed cache breadcrumb {text[:80]!r}") from None

    def __str__(self) -> str:
        return f"{self.root_hash}T{self.timestamp}R{self.revision}"


class ObjectCache:
    """All file operations go through a descriptor of the cache directory, never its path: the FUSE
    daemon keeps working after the directory was moved (switch_root moves the scratch disk's mount)."""

    def __init__(self, directory: str | os.PathLike[str], quota_bytes: int | None = None) -> None:
        self.root = Path(directory)
        self.quota = quota_bytes
        try:
            # The 256 fan-out directories (00/ to ff/) are made as objects arrive: making or finding all
            # of them at every start cost a boot under emulation 0.1 s of system calls.
            self.root.mkdir(parents=True, exist_ok=True)
            self._dir = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            spoiled = _remove_what_is_no_directory(self._dir)
            _make_top_directory("txn", self._dir)
        except OSError as error:
            raise StorageError(f"cannot create the cache in {self.root}: {error.strerror}") from None
        for name, mode in spoiled:
            self._warn(f"{name}/ was {file_kind(mode)}, no directory: removed, the directory made in its place")
        self._base = str(self.root)
        self._lock = threading.Lock()
        self._pins: dict[str, int] = {}
        self._in_flight: dict[str, threading.Event] = {}
        # When this process last marked an object used: a file read over and over (every process
        # maps the same libraries) costs a metadata write once per TOUCH_INTERVAL, not per open.
        self._touched: dict[str, float] = {}
        self._usage: int | None = None  # bytes in the cache, once counted
        self._stored_while_counting = 0
        self._cleanups: list[float] = []  # when (time.time()) evictions ran, for the last day's count
        self._lock_fd = -1  # the lock file, once this process holds it (lock())
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def enter(self) -> None:
        """Make the cache the working directory and hand out relative paths from now on.

        SQLite opens catalogs by path; relative to the working directory, such a path still works
        after the cache directory's mount was moved, as cvmfs's own cache does.
        """
        os.fchdir(self._dir)
        self._base = "."

    def local_path(self, name: str) -> str:
        """A path for a file kept beside the objects, valid in this process (relative once entered)."""
        return f"{self._base}/{name}"

    @property
    def directory_fd(self) -> int:
        """A descriptor of the cache directory, for files kept beside the objects."""
        return self._dir

    def lock(self, holder: str) -> str | None:
        """Hold the cache for ``holder`` (a mount point) in this process and those it forks, until they all
        ended; None once held, else what the mount that holds it wrote (its mount point; empty at first)."""
        try:
            fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644,
                         dir_fd=self._dir)
        except OSError as error:
            raise self._lock_error(error.strerror) from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO put there: nothing to read a holder from
                raise self._lock_error("not a regular file")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return os.pread(fd, 4096, 0).decode("utf-8", "replace")
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, holder.encode("utf-8", "surrogateescape"), 0)
            except OSError:  # a full disk: held all the same, by a holder a second mount cannot name
                pass
            self._lock_fd, fd = fd, -1  # open while this process lives: closing it would drop the lock
            return None
        finally:
            if fd >= 0:
                os.close(fd)

    def _lock_error(self, reason: str) -> StorageError:
        return StorageError(f"cannot lock the cache {self.root}: {LOCK_FILE}: {reason}",
                            f"remove {self.root / LOCK_FILE}")

    def start_accounting(self) -> None:
        """In the background: remove the downloads that killed processes left in ``txn/``, then count the
        cached bytes (``usage``); the quota is enforced from then on.

        Explicit, so that a process that forks (the FUSE daemon) starts the thread after the fork.
        """
        threading.Thread(target=self._count_usage, name="cache-usage", daemon=True).start()

    def remove_abandoned_downloads(self) -> int:
        """Remove the files in ``txn/`` that no download holds any more; how many went.

        A download holds a lock on its file (``_Staging``), which the kernel drops when the process
        ends, however it ends (and a killed process's pid may live on as a zombie, or be reused). A file
        younger than ABANDONED_AFTER is left alone: its download may not have locked it yet.
        """
        removed = 0
        try:
            fd = os.open("txn", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self._dir)
        except OSError:
            return 0
        try:
            names = os.listdir(fd)
        finally:
            os.close(fd)
        for name in names:
            if not _is_staging(name):
                continue
            try:
                # O_NONBLOCK: a FIFO put there would block this thread, and the quota with it, for ever.
                fd = os.open(f"txn/{name}", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                             dir_fd=self._dir)
            except OSError as error:
                if error.errno == errno.ELOOP:  # a symbolic link, which no download makes
                    _remove_any(f"txn/{name}", stat.S_IFLNK, self._dir)
                    self._warn(f"txn/{name} was a symbolic link, no download: removed")
                    removed += 1
                continue  # else finished or removed meanwhile
            try:
                if time.time() - os.fstat(fd).st_mtime < ABANDONED_AFTER:
                    continue
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.unlink(f"txn/{name}", dir_fd=self._dir)
                removed += 1
            except OSError:
                continue  # held by a download under way (BlockingIOError), or gone meanwhile
            finally:
                os.close(fd)
        return removed

    # -- objects --------------------------------------------------------------------------------

    @staticmethod
    def _name(content_hash: ContentHash) -> str:
        text = content_hash.hex
        return f"{text[:2]}/{text[2:]}"

    def get(self, content_hash: ContentHash, fill: Callable[[Sink], None]) -> str:
        """A path of the object's cached bytes, fetched as :meth:`open` fetches them, for a reader that opens
        it by path (SQLite opens a catalog so)."""
        os.close(self.open(content_hash, fill))
        return self.local_path(self._name(content_hash))

    def open(self, content_hash: ContentHash, fill: Callable[[Sink], None], size: int | None = None) -> int:
        """A read-only descriptor on the cached object; it stays valid even if the object is evicted. On a miss
        ``fill`` writes the bytes to a sink and returns once they are verified (it raises otherwise, and
        nothing is kept); concurrent callers for one object wait for one download instead of starting their own.

        A copy of another ``size`` than given (its catalog entry's) was cut short or added to on the disk
        since it was verified: it is removed, with a warning, and fetched again."""
        name = self._name(content_hash)
        with self.pinned(content_hash):  # not evicted between its download and its open, even by a tight quota
            while True:
                fd = self._stored(name, size)  # most opens: the object is there, found without the lock
                if fd is not None:
                    with self._lock:
                        self.hits += 1
                    return fd
                fd = self._fetched(content_hash, name, size, fill)
                if fd is not None:
                    return fd

    def _fetched(self, content_hash: ContentHash, name: str, size: int | None,
                 fill: Callable[[Sink], None]) -> int | None:
        """The object after a look with the lock held, where what stands in its place may be removed: found
        (another thread stored it meanwhile), or downloaded now; None once another thread's download of it
        ended, or when it was removed from outside meanwhile: look again."""
        key = content_hash.hex
        with self._lock:
            waiting = self._in_flight.get(key)
            if waiting is None:
                fd = self._stored(name, size, clear=True)
                if fd is not None:
                    self.hits += 1
                    return fd
                self.misses += 1
                done = self._in_flight[key] = threading.Event()
        if waiting is not None:
            waiting.wait()
            return None
        try:
            stored = self._store(name, fill)
            with self._lock:
                self._touched[name] = time.monotonic()  # its mtime is now: marked used
        finally:
            with self._lock:
                del self._in_flight[key]
            done.set()
        self._account(stored)
        return self._stored(name)  # verified as it arrived: its size is the one fill checked

    def open_cached(self, content_hash: ContentHash) -> int | None:
        """A read-only descriptor on the object if it is cached now (nothing is fetched, the look marks a use),
        else None."""
        return self._stored(self._name(content_hash))

    def drop(self, content_hash: ContentHash, reason: str) -> bool:
        """Remove a cached object that its user found bad (``reason``: how), pinned or not, with a warning;
        whether there was one."""
        name = self._name(content_hash)
        with self._lock:
            self._touched.pop(name, None)
            try:
                os.unlink(name, dir_fd=self._dir)
            except OSError:
                return False
        self._removed(name, reason)
        return True

    def _stored(self, name: str, size: int | None = None, clear: bool = False) -> int | None:
        """A read-only descriptor on the object stored as ``name``, its use recorded (the mtime orders the
        eviction) once per TOUCH_INTERVAL; None if there is none.

        The scratch disk is the OS's, which may leave anything in an object's place, so the open itself is
        the check: it follows no symbolic link (one would lead out of the cache), waits for no FIFO's writer,
        and the fstat that follows tells a regular file of the right size from anything else (a device is
        opened once so, before it goes: root in the OS, who could put one there, owns the machine anyway).
        A hit costs an open, an fstat and once a minute a futimens, no look at the name before. What is no
        object counts as none; with ``clear`` (the lock held, no download of it under way) it is removed,
        with a warning."""
        try:
            fd = os.open(name, _IN_PLACE, dir_fd=self._dir)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError:  # a symbolic link (ELOOP), a socket or a device without its driver (ENXIO)...
            try:
                st = os.stat(name, dir_fd=self._dir, follow_symlinks=False)
            except OSError:
                return None  # gone meanwhile
            if stat.S_ISREG(st.st_mode):
                raise  # an object that does not open: the disk's error, as it is
            if clear:
                self._clear(name, st, size)
            return None
        try:
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode) and (size is None or st.st_size == size):
                self._mark_used(name, fd)
                fd, found = -1, fd
                return found
        finally:
            if fd >= 0:
                os.close(fd)
        if clear:
            self._clear(name, st, size)
        return None

    def _mark_used(self, name: str, fd: int) -> None:
        """Set the object's mtime to now, once per TOUCH_INTERVAL (see ``_touched``)."""
        now = time.monotonic()
        if now - self._touched.get(name, -TOUCH_INTERVAL) >= TOUCH_INTERVAL:
            os.utime(fd)
            self._touched[name] = now

    def _clear(self, name: str, st: os.stat_result, size: int | None) -> None:
        """Remove what stands in the place of the object ``name`` and is no copy of it (``st``: its stat), with a
        warning saying what it was."""
        self._touched.pop(name, None)
        _remove_any(name, st.st_mode, self._dir)
        if stat.S_ISREG(st.st_mode):
            self._removed(name, f"held {st.st_size} bytes, its catalog entry gives {size}")
        else:
            self._removed(name, f"was {file_kind(st.st_mode)}, no object")

    def _removed(self, name: str, reason: str) -> None:
        self._warn(f"{name.replace('/', '')} {reason}: removed, the object is fetched again")

    def _warn(self, message: str) -> None:
        """What the cache found in its directory that it did not put there, and what it did: the scratch disk
        is the OS's, and a removal unsaid would hide who spoiled it (once per object: it is fetched again)."""
        _log.warning("cache %s: %s", self.root, message)

    def _store(self, name: str, fill: Callable[[Sink], None]) -> int:
        """Write what ``fill`` gives to a temporary name and rename it into place; its size.

        Nothing is left behind when ``fill`` or the disk fails."""
        # Unique per process and thread: a mount's process and the daemon it forks both download into the
        # cache, and thread idents repeat across processes.
        temporary = f"txn/{name.replace('/', '')}.{os.getpid()}.{threading.get_ident()}"
        staging = _Staging(self, temporary)
        try:
            fill(staging)
            staging.close()
            self._move_into_place(temporary, name)
        except BaseException:
            staging.close()
            try:
                os.unlink(temporary, dir_fd=self._dir)
            except OSError:
                pass
            raise
        return staging.size

    def _move_into_place(self, temporary: str, name: str) -> None:
        try:
            try:
                os.replace(temporary, name, src_dir_fd=self._dir, dst_dir_fd=self._dir)
            except FileNotFoundError:  # the first object of its fan-out directory
                _make_top_directory(name, self._dir)
                os.replace(temporary, name, src_dir_fd=self._dir, dst_dir_fd=self._dir)
        except OSError as error:
            raise self._write_error(error) from None

    def _write_error(self, error: OSError) -> StorageError:
        return StorageError(f"cannot write to the cache {self.root}: {error.strerror}", "check the scratch disk")

    def _full(self, evicted: int) -> CacheFull:
        return CacheFull(f"the disk of the cache {self.root} is full ({evicted} cached objects evicted, the rest in use)",
                         "free space on the scratch disk (its persistent/ layer shares the disk) or set a cache quota "
                         "(CVMFS_QUOTA_LIMIT)")

    def _make_room(self, size: int) -> int:
        """Evict the least recently used objects to free ``size`` bytes and a margin; how many went."""
        cached = sum(length for _, length, _ in self._objects())
        return self.cleanup(max(0, cached - size - ROOM_MARGIN))

    # -- pins -----------------------------------------------------------------------------------

    def pin(self, content_hash: ContentHash) -> None:
        with self._lock:
            self._pins[content_hash.hex] = self._pins.get(content_hash.hex, 0) + 1

    def unpin(self, content_hash: ContentHash) -> None:
        with self._lock:
            count = self._pins.get(content_hash.hex, 0) - 1
            if count > 0:
                self._pins[content_hash.hex] = count
            else:
                self._pins.pop(content_hash.hex, None)

    @contextmanager
    def pinned(self, content_hash: ContentHash) -> Iterator[None]:
        self.pin(content_hash)
        try:
            yield
        finally:
            self.unpin(content_hash)

    # -- quota ----------------------------------------------------------------------------------

    @property
    def usage(self) -> int | None:
        return self._usage

    def _count_usage(self) -> None:
        self.remove_abandoned_downloads()
        total = sum(size for _, size, _ in self._objects())
        with self._lock:
            # Objects stored while counting may be counted twice: an overestimate only cleans early,
            # where one missed (stored in a directory already counted) would never be evicted.
            self._usage = total + self._stored_while_counting
        self._cleanup_if_needed()

    def _account(self, added: int) -> None:
        with self._lock:
            if self._usage is None:
                self._stored_while_counting += added
            else:
                self._usage += added
        self._cleanup_if_needed()

    def _cleanup_if_needed(self) -> None:
        if self.quota is None or self._usage is None or self._usage <= self.quota:
            return
        self.cleanup(self.quota // 2)

    def cleanup(self, target: int) -> int:
        """Remove least recently used, unpinned objects until at most ``target`` bytes are cached."""
        objects = sorted(self._objects(), key=lambda item: item[2])
        total = sum(size for _, size, _ in objects)
        removed = 0
        for name, size, _ in objects:
            if total <= target:
                break
            with self._lock:
                key = name.replace("/", "")
                if key in self._pins or key in self._in_flight:
                    continue
                try:
                    os.unlink(name, dir_fd=self._dir)
                except OSError:
                    continue
                self._touched.pop(name, None)
            total -= size
            removed += 1
        with self._lock:
            self._usage = total
            self.evictions += removed
            if removed:
                now = time.time()
                self._cleanups = [at for at in self._cleanups if at > now - 86400] + [now]
        return removed

    def cleanups_since(self, when: float) -> int:
        """How many times objects were evicted since ``when`` (seconds since the epoch; kept for a day)."""
        with self._lock:
            return sum(at > when for at in self._cleanups)

    def _objects(self) -> Iterator[tuple[str, int, float]]:
        for index in range(256):
            subdirectory = f"{index:02x}"
            try:
                fd = os.open(subdirectory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self._dir)
            except OSError:
                continue
            try:
                with os.scandir(fd) as entries:
                    for entry in entries:
                        try:
                            st = entry.stat(follow_symlinks=False)
                        except OSError:
                            continue  # removed meanwhile
                        yield f"{subdirectory}/{entry.name}", st.st_size, st.st_mtime
            finally:
                os.close(fd)

    # -- per-repository state -------------------------------------------------------------------

    def save_named(self, fqrn: str, name: str, data: bytes) -> None:
        """Keep a verified signed file (manifest, whitelist) for offline mounts."""
        if self.load_named(fqrn, name) != data:  # most mounts and boots find the copy they would write
            self._store(f"{name}.{fqrn}", lambda out: out.write(data))

    def load_named(self, fqrn: str, name: str) -> bytes | None:
        """A kept file's bytes; None without one. The scratch disk may hold anything by that name: what is
        not a regular file no larger than a fetched one may be (a directory, a FIFO that would block, a
        link to a device that never ends) counts as none; a manifest or whitelist read is verified as if
        it was fetched."""
        try:
            fd = os.open(f"{name}.{fqrn}", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         dir_fd=self._dir)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode) and st.st_size <= MAX_NAMED_BYTES:
                return os.pread(fd, st.st_size, 0)
        except OSError:  # a failing disk
            pass
        finally:
            os.close(fd)
        return None

    def breadcrumb(self, fqrn: str) -> Breadcrumb | None:
        data = self.load_named(fqrn, BREADCRUMB_PREFIX.rstrip("."))
        return Breadcrumb.parse(data.decode("ascii", "replace")) if data else None

    def save_breadcrumb(self, fqrn: str, breadcrumb: Breadcrumb) -> None:
        self.save_named(fqrn, BREADCRUMB_PREFIX.rstrip("."), str(breadcrumb).encode("ascii"))


def _is_staging(name: str) -> bool:
    """Whether a name in ``txn/`` is a download's, ``<object or kept file>.<pid>.<thread>`` (``_store``); a
    kept file's name holds dots of its own (``.cvmfspublished.<fqrn>``)."""
    stem, *ids = name.rsplit(".", 2)
    return bool(stem) and len(ids) == 2 and all(part.isdigit() for part in ids)


def file_kind(mode: int) -> str:
    """What a file that is no regular one is, for a warning: "a symbolic link", "a FIFO"..."""
    kinds = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
             (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
    return next((kind for is_kind, kind in kinds if is_kind(mode)), "a regular file")


def _remove_any(name: str, mode: int, directory_fd: int) -> None:
    """Remove ``name`` whatever it is; what cannot go is left for the write in its place to report."""
    try:
        if stat.S_ISDIR(mode):
            import shutil  # only here: a mount and a boot need it no sooner

            shutil.rmtree(name, dir_fd=directory_fd)
        else:
            os.unlink(name, dir_fd=directory_fd)
    except OSError:
        pass


def _remove_what_is_no_directory(directory_fd: int) -> list[tuple[str, int]]:
    """Remove what the OS (which writes the scratch disk) left in place of ``txn/`` or a fan-out directory, a
    symbolic link above all: the files written through it would land outside the cache. One listing of the
    cache's top directory, whose entries say their type; the name and mode of each removed."""
    removed = []
    with os.scandir(directory_fd) as entries:
        for entry in entries:
            if entry.name in TOP_DIRECTORIES and not entry.is_dir(follow_symlinks=False):
                removed.append((entry.name, entry.stat(follow_symlinks=False).st_mode))
                _remove_any(entry.name, stat.S_IFREG, directory_fd)
    return removed


def _make_top_directory(name: str, directory_fd: int) -> None:
    """The directory of the cache that ``name`` goes in (``txn/``, a fan-out directory), made if missing."""
    try:
        os.mkdir(name.partition("/")[0], dir_fd=directory_fd)
    except FileExistsError:
        pass  # another thread or process made it meanwhile


class _Staging:
    """An object's file in ``txn/`` while its bytes arrive (a :class:`Sink`); the cache renames it into place.

    A full disk is met by evicting what is not in use, as often as that frees something; then CacheFull.
    """

    def __init__(self, cache: ObjectCache, name: str) -> None:
        self._cache = cache
        self._fd = -1
        self.size = 0
        self.evicted = 0
        while self._fd < 0:
            try:
                # O_NOFOLLOW: never written through a link put there
                self._fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                                   0o644, dir_fd=cache.directory_fd)
            except FileNotFoundError:  # txn/ was removed with the rest of the cache's contents: made anew
                try:
                    _make_top_directory(name, cache.directory_fd)
                except OSError as error:
                    self._disk_full(error, 0)
            except OSError as error:
                self._disk_full(error, 0)
        fcntl.flock(self._fd, fcntl.LOCK_EX)  # "in use" to remove_abandoned_downloads, until closed

    def write(self, piece: bytes) -> None:
        view = memoryview(piece)
        while view:
            try:
                written = os.write(self._fd, view)
            except OSError as error:
                self._disk_full(error, len(view))
                continue
            view = view[written:]
            self.size += written

    def _disk_full(self, error: OSError, size: int) -> None:
        """Make room after ``error`` if it says the disk is full; raise it (as the cache's) otherwise."""
        if error.errno not in _DISK_FULL:
            raise self._cache._write_error(error) from None
        evicted = self._cache._make_room(size)
        if not evicted:
            raise self._cache._full(self.evicted)
        self.evicted += evicted

    def restart(self) -> None:
        os.ftruncate(self._fd, 0)
        os.lseek(self._fd, 0, os.SEEK_SET)
        self.size = 0

    def finish(self) -> None:
        pass

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            try:
                os.close(fd)
            except OSError as error:  # a write the file system reports only now (NFS)
                raise self._cache._write_error(error) from None
