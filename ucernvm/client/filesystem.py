"""The CernVM-FS file system: one verified snapshot of a repository, served read-only over FUSE.

Inodes are handed out on first sight and kept for the life of the mount (the tree never changes),
hard links of one group share one inode, and file contents are read from the cache with ``pread``
after the object was fetched and verified once. Chunks of large files are fetched ahead of the reader
by a pool of threads, so a sequential read keeps several downloads in flight.
"""

from __future__ import annotations

import bisect
import errno
import itertools
import os
import re
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

from ucernvm import __version__
from ucernvm.client.fuse.operations import ROOT_INO, Attributes, DirEntry, FsStats, Operations
from ucernvm.client.repository import Repository
from ucernvm.cvmfs.catalog import Chunk, DirectoryEntry, parent_path
from ucernvm.cvmfs.hashing import ObjectType
from ucernvm.errors import UcernvmError

_VARIANT = re.compile(r"\$\(([^)]*)\)")


def expand_variant_symlink(target: str, environment: dict[str, str]) -> str:
    """cvmfs's variant symlinks: ``$(VAR)`` and ``$(VAR:-default)`` from the daemon's environment."""

    def value(match: re.Match[str]) -> str:
        name, _, default = match.group(1).partition(":-")
        return environment.get(name, default)

    return _VARIANT.sub(value, target)


class _Node:
    __slots__ = ("path", "entry", "attributes")

    def __init__(self, path: str, entry: DirectoryEntry, attributes: Attributes) -> None:
        self.path = path
        self.entry = entry
        self.attributes = attributes


class _OpenFile:
    """A regular file being read: the descriptors of its cached object or chunks."""

    __slots__ = ("node", "chunks", "offsets", "fds", "scheduled", "lock")

    def __init__(self, node: _Node, chunks: list[Chunk]) -> None:
        self.node = node
        self.chunks = chunks
        self.offsets = [chunk.offset for chunk in chunks]
        self.fds: dict[int, int] = {}
        self.scheduled: set[int] = set()
        self.lock = threading.Lock()


class SnapshotFilesystem(Operations):
    def __init__(self, repository: Repository, *, fetch_threads: int = 8, readahead_chunks: int = 3) -> None:
        self.repository = repository
        self.readahead_chunks = readahead_chunks
        self._fetch_threads = fetch_threads
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._next_ino = itertools.count(ROOT_INO + 1).__next__
        self._inodes: dict[object, int] = {}
        root = repository.entry("")
        self._nodes: dict[int, _Node] = {ROOT_INO: _Node("", root, self._attributes(ROOT_INO, root))}
        self._environment = dict(os.environ)
        self.io_errors = 0

    # -- life cycle ------------------------------------------------------------------------------

    def init(self) -> None:
        # Threads start here, in the serving process, after any fork.
        self._pool = ThreadPoolExecutor(max_workers=self._fetch_threads, thread_name_prefix="fetch")
        cache = self.repository.cache
        if cache is not None:
            cache.enter()  # relative paths from here on: the daemon survives the cache being moved
            cache.start_accounting()

    def destroy(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    # -- inodes ------------------------------------------------------------------------------------

    @staticmethod
    def _attributes(ino: int, entry: DirectoryEntry) -> Attributes:
        return Attributes(
            ino=ino,
            mode=entry.mode,
            size=0 if entry.is_special else entry.size,
            nlink=entry.linkcount,
            uid=entry.uid,
            gid=entry.gid,
            mtime_ns=entry.mtime * 1_000_000_000 + entry.mtime_ns,
            rdev=entry.device_number,
        )

    def _node(self, path: str, entry: DirectoryEntry) -> _Node:
        # Hard links live in one directory in cvmfs, so (directory, group) names the inode.
        key: object = (parent_path(path), entry.hardlink_group) if entry.hardlink_group and not entry.is_directory else path
        with self._lock:
            ino = self._inodes.get(key)
            if ino is None:
                ino = self._inodes[key] = self._next_ino()
                self._nodes[ino] = _Node(path, entry, self._attributes(ino, entry))
            return self._nodes[ino]

    def _get(self, ino: int) -> _Node:
        try:
            return self._nodes[ino]
        except KeyError:
            raise OSError(errno.ESTALE, "unknown inode") from None

    def _failed(self, error: UcernvmError) -> OSError:
        """A fetch or verification failure becomes EIO: never unverified bytes, never a hang."""
        self.io_errors += 1
        print(f"ucernvm mount: {error.message}", file=sys.stderr, flush=True)
        return OSError(errno.EIO, error.message)

    # -- metadata ----------------------------------------------------------------------------------

    def lookup(self, parent_ino: int, name: bytes) -> Attributes:
        parent = self._get(parent_ino)
        if not parent.entry.is_directory:
            raise OSError(errno.ENOTDIR, "not a directory")
        path = f"{parent.path}/{os.fsdecode(name)}"
        try:
            entry = self.repository.lookup(path)
        except UcernvmError as error:
            raise self._failed(error) from None
        if entry is None:
            raise OSError(errno.ENOENT, "no such entry")
        return self._node(path, entry).attributes

    def getattr(self, ino: int) -> Attributes:
        return self._get(ino).attributes

    def readlink(self, ino: int) -> bytes:
        entry = self._get(ino).entry
        if not entry.is_symlink:
            raise OSError(errno.EINVAL, "not a symlink")
        return os.fsencode(expand_variant_symlink(entry.symlink, self._environment))

    def opendir(self, ino: int) -> list[DirEntry]:
        node = self._get(ino)
        if not node.entry.is_directory:
            raise OSError(errno.ENOTDIR, "not a directory")
        try:
            entries = self.repository.listdir(node.path)
        except UcernvmError as error:
            raise self._failed(error) from None
        listing = []
        for index, entry in enumerate(entries, 1):
            child = self._node(f"{node.path}/{entry.name}", entry)
            listing.append(DirEntry(os.fsencode(entry.name), child.attributes, index))
        return listing

    def readdir(self, handle: list[DirEntry], offset: int) -> list[DirEntry]:
        return handle[offset:]

    # -- contents ------------------------------------------------------------------------------------

    def open(self, ino: int, flags: int) -> _OpenFile:
        node = self._get(ino)
        entry = node.entry
        if not entry.is_regular:
            raise OSError(errno.EISDIR if entry.is_directory else errno.EINVAL, "not a regular file")
        if entry.is_external:
            raise OSError(errno.EIO, "external files are not supported")
        try:
            handle = _OpenFile(node, self.repository.chunks(node.path, entry))
            if handle.chunks:
                self._fd(handle, 0)  # fetch now: open() fails, not a later read, if the object is bad
        except UcernvmError as error:
            raise self._failed(error) from None
        return handle

    def _fd(self, handle: _OpenFile, index: int) -> int:
        fd = handle.fds.get(index)
        if fd is not None:
            return fd
        chunk = handle.chunks[index]
        entry = handle.node.entry
        object_type = ObjectType.PARTIAL if entry.is_chunked else ObjectType.FILE
        fd = self.repository.open_object(chunk.content_hash, object_type, chunk.size, entry.is_compressed)
        with handle.lock:
            if index in handle.fds:  # another thread was faster
                os.close(fd)
            else:
                handle.fds[index] = fd
            return handle.fds[index]

    def _read_ahead(self, handle: _OpenFile, index: int) -> None:
        if self._pool is None:
            return
        for ahead in range(index + 1, min(index + 1 + self.readahead_chunks, len(handle.chunks))):
            with handle.lock:
                if ahead in handle.fds or ahead in handle.scheduled:
                    continue
                handle.scheduled.add(ahead)
            self._pool.submit(self._prefetch, handle, ahead)

    def _prefetch(self, handle: _OpenFile, index: int) -> None:
        try:
            self._fd(handle, index)
        except (UcernvmError, OSError):
            pass  # the read that needs the chunk reports the error

    def read(self, handle: _OpenFile, offset: int, size: int) -> bytes:
        end = min(offset + size, handle.node.entry.size)
        if offset >= end:
            return b""
        pieces = []
        index = bisect.bisect_right(handle.offsets, offset) - 1
        try:
            while offset < end:
                chunk = handle.chunks[index]
                if len(handle.chunks) > 1:
                    self._read_ahead(handle, index)
                fd = self._fd(handle, index)
                wanted = min(end, chunk.offset + chunk.size) - offset
                data = os.pread(fd, wanted, offset - chunk.offset)
                if len(data) != wanted:
                    raise OSError(errno.EIO, "cached object is shorter than its catalog entry")
                pieces.append(data)
                offset += wanted
                index += 1
        except UcernvmError as error:
            raise self._failed(error) from None
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def release(self, handle: _OpenFile) -> None:
        with handle.lock:
            fds, handle.fds = handle.fds, {}
        for fd in fds.values():
            os.close(fd)

    # -- attributes of the file system -----------------------------------------------------------------

    def getxattr(self, ino: int, name: bytes) -> bytes:
        node = self._get(ino)
        key = os.fsdecode(name)
        if key in node.entry.xattrs:
            return node.entry.xattrs[key]
        value = self._magic_xattr(node, key)
        if value is None:
            raise OSError(errno.ENODATA, "no such attribute")
        return value.encode()

    def _magic_xattr(self, node: _Node, key: str) -> str | None:
        """cvmfs's informational attributes; not listed, so that copies (overlayfs copy-up) skip them."""
        repository, entry = self.repository, node.entry
        source = repository.source
        values = {
            "user.fqrn": lambda: repository.fqrn,
            "user.revision": lambda: str(repository.revision),
            "user.root_hash": lambda: repository.root_hash.hex,
            "user.tag": lambda: repository.tag.name if repository.tag else "",
            "user.host": lambda: str(getattr(source, "current_host", source.description)),
            "user.proxy": lambda: str(getattr(source, "current_proxy", "DIRECT")),
            "user.version": lambda: __version__,
            "user.pid": lambda: str(os.getpid()),
            "user.nioerr": lambda: str(self.io_errors),
            "user.offline": lambda: "1" if repository.offline else "0",
        }
        if entry.is_regular:
            values["user.compression"] = lambda: "zlib" if entry.is_compressed else "none"
            values["user.chunks"] = lambda: str(len(repository.chunks(node.path, entry)))
            if entry.content_hash is not None:
                values["user.hash"] = lambda: entry.content_hash.hex  # type: ignore[union-attr]
        if entry.is_symlink:
            values["user.rawlink"] = lambda: entry.symlink
        produce = values.get(key)
        return produce() if produce else None

    def listxattr(self, ino: int) -> list[bytes]:
        return [os.fsencode(name) for name in self._get(ino).entry.xattrs]

    def statfs(self) -> FsStats:
        statistics = self.repository.root_catalog.statistics()
        entries = sum(statistics.get(f"{scope}_{kind}", 0) for scope in ("self", "subtree") for kind in ("regular", "dir", "symlink", "special"))
        size = statistics.get("self_file_size", 0) + statistics.get("subtree_file_size", 0)
        return FsStats(blocks=(size + 4095) // 4096, files=entries)
