"""The CernVM-FS file system: one verified snapshot of a repository, served read-only over FUSE.

Inodes are handed out on first sight and kept for the life of the mount (the tree never changes),
hard links of one group share one inode, and file contents are spliced from the cache's files into
the replies (or read with ``pread``) after the object was fetched and verified once. Chunks of large files are fetched ahead of the reader
by a pool of threads, so a sequential read keeps several downloads in flight; when a catalog is
loaded, its nested catalogs are downloaded ahead by another pool, so a walk into them does not wait
for one round trip per catalog; once the kernel walks a tree, the listings of the directories it
will list next are made by a background thread while the walker works (listing_ahead.py); and the
files of the snapshot's prefetch list, if given, are downloaded ahead of a boot's reads (prefetch.py),
while the order in which files are first read is recorded for the next such list.
"""

from __future__ import annotations

import bisect
import errno
import os
import resource
import stat
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ucernvm import __version__
from ucernvm.client import lazylog, logbuffer
from ucernvm.client.catalogs_ahead import CatalogsAhead
from ucernvm.client.fuse.operations import ROOT_INO, Attributes, DirEntry, FsStats, Operations, report
from ucernvm.client.listing_ahead import ListingsAhead
from ucernvm.client.pinning import Pinner
from ucernvm.client.prefetch import Prefetcher, ReadOrder, warn
from ucernvm.client.repository import Repository
from ucernvm.client.sinks import PIECE_SIZE
from ucernvm.client.variant_symlinks import expand_variant_symlink
from ucernvm.client.workers import WorkerPool
from ucernvm.cvmfs.catalog import Catalog, Chunk, DirectoryEntry, Flag, join
from ucernvm.cvmfs.hashing import ContentHash
from ucernvm.cvmfs.manifest import META_INFO_MAX
from ucernvm.errors import UcernvmError

if TYPE_CHECKING:
    from ucernvm.client.client_config import FetcherConfig, IdMap
    from ucernvm.client.fetcher import Counters

# Descriptors the daemon may hold, as cvmfs's CVMFS_NFILES: the kernel's handles (fuse/handles.py)
# keep the descriptors of their objects and chunks, far beyond the default soft limit of 1024.
NFILES = 131072
DOTS = 2  # a listing starts with "." and ".."
# cvmfs's transfer attributes, in its units (KiB, KiB/s, seconds), from an HTTP source's counters and settings.
_TRANSFER_XATTRS: dict[str, Callable[[Counters, FetcherConfig], str]] = {
    "user.ndownload": lambda counters, _: str(counters.downloads),
    "user.rx": lambda counters, _: str(counters.bytes // 1024),
    "user.speed": lambda counters, _: str(int(counters.bytes / 1024 / counters.seconds) if counters.seconds else 0),
    "user.timeout": lambda _, config: f"{config.timeout:g}",
    "user.timeout_direct": lambda _, config: f"{config.timeout_direct:g}",
}


# Entries whose catalog size is not their stat size: a device's is its number, a symlink's its target's length.
_SIZED_ELSEWHERE = Flag.SPECIAL | Flag.LINK
_new_tuple = tuple.__new__  # a record from its fields, without its Python-level constructor


def _same(id_: int) -> int:
    return id_


class _Node:
    __slots__ = ("path", "entry", "attributes", "parent", "children", "listed")

    def __init__(self, path: str, entry: DirectoryEntry, attributes: Attributes, parent: _Node | None) -> None:
        self.path = path
        self.entry = entry
        self.attributes = attributes
        self.parent = parent
        self.children: _Children | None = None  # a directory's entries, once listed or looked in
        self.listed = False  # the kernel asked for its listing


class _Children:
    """A directory's entries in listing order, numbered from one block of inode numbers: entry ``i`` is
    inode ``base + i``, except that a hard link has the inode of its group's first entry (cvmfs keeps a
    group in one directory). The number of an entry is fixed once its directory is first listed or
    looked in, and its node is made only when the kernel uses it: a walk lists every entry, opens few."""

    __slots__ = ("entries", "base", "_links", "_positions")

    def __init__(self, entries: list[DirectoryEntry], base: int) -> None:
        self.entries = entries
        self.base = base
        self._links: dict[int, int] = {}  # position of a hard link -> position of its group's first entry
        firsts: dict[int, int] = {}
        for position, entry in enumerate(entries):
            group = entry.hardlinks >> 32
            if group and not entry.flags & Flag.DIR:
                first = firsts.setdefault(group, position)
                if first != position:
                    self._links[position] = first
        self._positions: dict[str, int] | None = None  # name -> position, made for the first lookup

    def ino(self, position: int) -> int:
        return self.base + self._links.get(position, position)

    def inos(self) -> Sequence[int]:
        """The inode of each entry, in order."""
        if not self._links:
            return range(self.base, self.base + len(self.entries))
        return [self.ino(position) for position in range(len(self.entries))]

    def position(self, name: str) -> int | None:
        if self._positions is None:  # two threads may both make it: the same dict
            self._positions = {entry.name: position for position, entry in enumerate(self.entries)}
        return self._positions.get(name)


class _Directory:
    """An open directory; its listing is made on the first readdir. The kernel keeps listings in
    its cache (FOPEN_CACHE_DIR), so most directories opened again are never read again."""

    __slots__ = ("node", "entries")

    def __init__(self, node: _Node) -> None:
        self.node = node
        self.entries: list[DirEntry] | None = None


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
    has_backing_files = True  # the cached object of a file stored whole (backing_fd)

    def __init__(self, repository: Repository, *, fetch_threads: int = 8, readahead_chunks: int = 3,
                 catalog_threads: int = 4, prefetch_list: str | None = None, boot_layer: bool = False,
                 pin_list: str | None = None, os_root: str = "", uid_map: IdMap | None = None,
                 gid_map: IdMap | None = None) -> None:
        self.repository = repository
        self.read_order = ReadOrder()
        self._prefetcher = Prefetcher(repository, prefetch_list, boot_layer=boot_layer) if prefetch_list else None
        self._environment = dict(os.environ)  # what variant symlinks expand from
        self._pinner = Pinner(repository, pin_list, self._environment, os_root) if pin_list else None
        self.readahead_chunks = readahead_chunks
        self._fetch_threads = fetch_threads
        self._catalog_threads = catalog_threads
        self._pool: WorkerPool | None = None
        self._catalog_pool: WorkerPool | None = None
        self._lock = threading.Lock()
        self._last_ino = ROOT_INO  # inode numbers are handed out in blocks, one per directory (_Children)
        self._blocks: list[int] = []  # the first inode of each block, ascending
        self._block_owners: list[tuple[_Node, _Children]] = []  # the directory each block numbers the entries of
        if uid_map is not None or gid_map is not None:
            self._attributes = self._owners_mapped(uid_map, gid_map)  # type: ignore[method-assign]
        root = repository.entry("")
        self._nodes: dict[int, _Node] = {ROOT_INO: _Node("", root, self._attributes(ROOT_INO, root), None)}
        self._listings_ahead = ListingsAhead(self._listing_ahead)
        self.io_errors = 0
        self._last_io_error = 0  # when (seconds since the epoch), 0: never
        self._opens = 0  # OPENs answered
        self._open_files = 0  # of them not released yet
        self._mounted_at = time.monotonic()
        self._catalog_entries: dict[Catalog, int] = {}  # statfs's count of each loaded catalog's own entries
        self._snapshot_entries: int | None = None  # statfs's count of the whole snapshot's, once made

    # -- life cycle ------------------------------------------------------------------------------

    def init(self) -> None:
        # Threads start here, in the serving process, after any fork.
        lazylog.route(warn)  # a server or proxy switch, a cache's removal: "ucernvm mount: warning: ..."
        raise_file_limit(NFILES)
        self._pool = WorkerPool(self._fetch_threads, "fetch")
        cache = self.repository.cache
        if cache is not None:
            cache.enter()  # relative paths from here on: the daemon survives the cache being moved
            cache.start_accounting()
            self._catalog_pool = WorkerPool(self._catalog_threads, "catalog")
            catalogs_ahead = CatalogsAhead(self.repository, self._catalog_pool.submit)
            self.repository.catalog_loaded = catalogs_ahead.loaded
            for catalog in self.repository.loaded_catalogs():
                catalogs_ahead.loaded(catalog)
            if self._prefetcher is not None:
                self._prefetcher.start()
            if self._pinner is not None:
                self._pinner.start()
        self._listings_ahead.start()

    def destroy(self) -> None:
        lazylog.route(None)
        if self._prefetcher is not None:
            self._prefetcher.stop()
        if self._pinner is not None:
            self._pinner.stop()
        self._listings_ahead.stop()
        for pool in (self._pool, self._catalog_pool):
            if pool is not None:
                pool.shutdown()

    # -- inodes ------------------------------------------------------------------------------------

    def _attributes(self, ino: int, entry: DirectoryEntry) -> Attributes:
        # The tuple made directly from the entry's unpacked fields: made for every listed entry, where
        # keywords, properties or the record's own constructor cost as much again.
        _, mode, size, mtime, flags, uid, gid, hardlinks, _, _, mtime_ns, _ = entry
        rdev = 0
        if flags & _SIZED_ELSEWHERE:
            if flags & Flag.SPECIAL:
                size, rdev = 0, entry.device_number
            else:  # the length of what readlink returns, as cvmfs's: programs size their buffer by it
                size = len(self._link_target(entry))
        return _new_tuple(Attributes, (ino, mode, size, hardlinks & 0xFFFFFFFF or 1, uid, gid,
                                       mtime * 1_000_000_000 + mtime_ns, rdev))

    def _owners_mapped(self, uid_map: IdMap | None,
                       gid_map: IdMap | None) -> Callable[[int, DirectoryEntry], Attributes]:
        """_attributes with the owners the maps give (CVMFS_UID_MAP, CVMFS_GID_MAP), as cvmfs shows them; taken in
        its place only where a map is given, so that a mount without one pays nothing for them."""
        plain = self._attributes
        uid_of, gid_of = (_same if map_ is None else map_.function() for map_ in (uid_map, gid_map))

        def attributes(ino: int, entry: DirectoryEntry) -> Attributes:
            ino, mode, size, nlink, uid, gid, mtime_ns, rdev = plain(ino, entry)
            return _new_tuple(Attributes, (ino, mode, size, nlink, uid_of(uid), gid_of(gid), mtime_ns, rdev))

        return attributes

    def _link_target(self, entry: DirectoryEntry) -> bytes:
        return os.fsencode(expand_variant_symlink(entry.symlink, self._environment))

    def _children_of(self, directory: _Node) -> _Children:
        """The directory's entries, numbered (one query for the whole directory: a program that looks
        for one name in it, an interpreter's import path, a shell's PATH, looks for many)."""
        children = directory.children
        if children is None:
            entries = self.repository.listdir(directory.path, hidden=True)
            with self._lock:
                children = directory.children
                if children is None:  # else another thread numbered them meanwhile
                    children = directory.children = _Children(entries, self._last_ino + 1)
                    if entries:
                        self._last_ino += len(entries)
                        self._blocks.append(children.base)
                        self._block_owners.append((directory, children))
        return children

    def _get(self, ino: int) -> _Node:
        try:
            return self._nodes[ino]
        except KeyError:
            pass
        with self._lock:
            node = self._nodes.get(ino) or self._make_node(ino)
        if node is None:
            raise OSError(errno.ESTALE, "unknown inode")
        return node

    def _make_node(self, ino: int) -> _Node | None:
        """The node of an inode a listing or a lookup numbered, made at its first use (None: no such
        number was handed out). Called with the lock held."""
        block = bisect.bisect_right(self._blocks, ino) - 1
        if block < 0:
            return None
        directory, children = self._block_owners[block]
        position = ino - children.base
        if position >= len(children.entries) or children.ino(position) != ino:  # past the block, or a hard link's
            return None
        entry = children.entries[position]
        node = self._nodes[ino] = _Node(join(directory.path, entry.name), entry, self._attributes(ino, entry), directory)
        return node

    def _failed(self, error: UcernvmError) -> OSError:
        """A fetch or verification failure becomes EIO: never unverified bytes, never a hang."""
        self.io_errors += 1
        self._last_io_error = int(time.time())
        logbuffer.remember(error.message)
        report(f"ucernvm mount: {error.message}")
        return OSError(errno.EIO, error.message)

    # -- metadata ----------------------------------------------------------------------------------

    def lookup(self, parent_ino: int, name: bytes) -> Attributes:
        parent = self._get(parent_ino)
        if not parent.entry.is_directory:
            raise OSError(errno.ENOTDIR, "not a directory")
        try:
            children = self._children_of(parent)
        except UcernvmError as error:
            raise self._failed(error) from None
        position = children.position(os.fsdecode(name))
        if position is None:
            raise OSError(errno.ENOENT, "no such entry")
        return self._attributes(children.ino(position), children.entries[position])

    def getattr(self, ino: int) -> Attributes:
        return self._get(ino).attributes

    def readlink(self, ino: int) -> bytes:
        entry = self._get(ino).entry
        if not entry.is_symlink:
            raise OSError(errno.EINVAL, "not a symlink")
        return self._link_target(entry)

    def opendir(self, ino: int) -> _Directory:
        node = self._get(ino)
        if not node.entry.is_directory:
            raise OSError(errno.ENOTDIR, "not a directory")
        return _Directory(node)

    def readdir(self, handle: _Directory, offset: int) -> list[DirEntry]:
        if handle.entries is None:  # a race of two readers makes the same listing twice: harmless
            handle.entries = self._kernel_listing(handle.node)
        return handle.entries[offset:]

    def _kernel_listing(self, node: _Node) -> list[DirEntry]:
        """The listing the kernel asked for. A directory listed after its parent, or one whose listing
        was made ahead, is part of a tree walk: its subdirectories are listed ahead of the walker."""
        made = self._listings_ahead.take(node)
        listing = made
        if listing is None:
            try:
                listing = self._listing(node)
            except UcernvmError as error:
                raise self._failed(error) from None
        if made is not None or (node.parent is not None and node.parent.listed):
            self._listings_ahead.want(
                [self._get(entry.attributes.ino) for entry in listing[DOTS:] if stat.S_ISDIR(entry.attributes.mode)]
            )
        node.listed = True
        return listing

    def _listing_ahead(self, node: _Node) -> list[DirEntry] | None:
        return None if node.listed else self._listing(node)

    def _listing(self, node: _Node) -> list[DirEntry]:
        children = self._children_of(node)
        attributes = self._attributes
        # "." and "..", as cvmfs and local file systems list them: overlayfs passes a lower directory's
        # listing on as it is, so a booted OS's `ls -a /usr/bin` shows them only if this does.
        listing: list[DirEntry] = [_new_tuple(DirEntry, (b".", node.attributes, 1)),
                                   _new_tuple(DirEntry, (b"..", (node.parent or node).attributes, 2))]
        for ino, entry in zip(children.inos(), children.entries):
            if not entry.flags & Flag.HIDDEN:  # names as os.fsencode makes them, without its checks
                name = entry.name.encode("utf-8", "surrogateescape")
                listing.append(_new_tuple(DirEntry, (name, attributes(ino, entry), len(listing) + 1)))
        return listing

    # -- contents ------------------------------------------------------------------------------------

    def open(self, ino: int, flags: int) -> _OpenFile:
        node = self._get(ino)
        entry = node.entry
        if not entry.is_regular:
            raise OSError(errno.EISDIR if entry.is_directory else errno.EINVAL, "not a regular file")
        if entry.is_external:
            raise OSError(errno.EIO, "external files are not supported")
        self.read_order.add(node.path)
        try:
            handle = _OpenFile(node, self.repository.chunks(node.path, entry))
            if len(handle.chunks) > 1:
                self._read_ahead(handle, 0)  # the next chunks download while the first does
            if handle.chunks:
                self._fd(handle, 0)  # fetch now: open() fails, not a later read, if the object is bad
        except UcernvmError as error:
            raise self._failed(error) from None
        with self._lock:
            self._opens += 1
            self._open_files += 1
        return handle

    def _fd(self, handle: _OpenFile, index: int) -> int:
        fd = handle.fds.get(index)
        if fd is not None:
            return fd
        fd = self.repository.open_chunk(handle.node.entry, handle.chunks[index])
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

    def read_spans(self, handle: _OpenFile, offset: int, size: int) -> list[tuple[int, int, int]]:
        """The cached objects' (fd, offset, length) holding ``size`` bytes at ``offset``."""
        end = min(offset + size, handle.node.entry.size)
        spans = []
        index = bisect.bisect_right(handle.offsets, offset) - 1
        try:
            while offset < end:
                chunk = handle.chunks[index]
                if len(handle.chunks) > 1:
                    self._read_ahead(handle, index)
                wanted = min(end, chunk.offset + chunk.size) - offset
                spans.append((self._fd(handle, index), offset - chunk.offset, wanted))
                offset += wanted
                index += 1
        except UcernvmError as error:
            raise self._failed(error) from None
        return spans

    def backing_fd(self, handle: _OpenFile) -> int | None:
        """The cached object of a file stored whole (open fetched and verified it); a chunked file has none."""
        return handle.fds.get(0) if len(handle.chunks) == 1 else None

    def read(self, handle: _OpenFile, offset: int, size: int) -> bytes:
        pieces = []
        for fd, at, wanted in self.read_spans(handle, offset, size):
            data = os.pread(fd, wanted, at)
            if len(data) != wanted:
                raise OSError(errno.EIO, "cached object is shorter than its catalog entry")
            pieces.append(data)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def release(self, handle: _OpenFile) -> None:
        with handle.lock:
            fds, handle.fds = handle.fds, {}
        for fd in fds.values():
            os.close(fd)
        with self._lock:
            self._open_files -= 1

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

    def statistics(self) -> dict[str, object]:
        repository = self.repository
        counters = getattr(repository.source, "counters", None)  # an HTTP source's
        cache = repository.cache
        return {
            "inodes": self._last_ino,  # numbers handed out (a node is made for those the kernel used)
            "io_errors": self.io_errors,
            "files_read": len(self.read_order),
            **({"prefetch": self._prefetcher.statistics()} if self._prefetcher is not None else {}),
            **({"pinned": self._pinner.statistics()} if self._pinner is not None else {}),
            **({"transfer": counters._asdict()} if counters is not None else {}),
            **({"cache": {"hits": cache.hits, "misses": cache.misses}} if cache is not None else {}),
        }

    def save_records(self) -> None:
        if self.repository.cache is not None:
            self.read_order.write(self.repository.cache.directory_fd)

    def _magic_xattr(self, node: _Node, key: str) -> str | None:
        """cvmfs's informational attributes; not listed, so that copies (overlayfs copy-up) skip them."""
        if not key.startswith("user."):  # security.capability at every exec, overlayfs's own at every lookup
            return None
        repository, entry = self.repository, node.entry
        source = repository.source
        transfer = _TRANSFER_XATTRS.get(key)
        if transfer is not None:
            counters, config = getattr(source, "counters", None), getattr(source, "config", None)
            return None if counters is None or config is None else transfer(counters, config)
        values: dict[str, Callable[[], str]] = {
            "user.fqrn": lambda: repository.fqrn,
            "user.revision": lambda: str(repository.revision),
            "user.root_hash": lambda: repository.root_hash.hex,
            "user.tag": lambda: repository.tag_name,
            "user.host": lambda: str(getattr(source, "current_host", source.description)),
            "user.host_list": lambda: ";".join(getattr(source, "hosts_in_turn", [source.description])),
            "user.proxy": lambda: str(getattr(source, "current_proxy", "DIRECT")),
            "user.version": lambda: __version__,
            "user.pid": lambda: str(os.getpid()),
            "user.nioerr": lambda: str(self.io_errors),
            "user.offline": lambda: "1" if repository.offline else "0",
            # What cvmfs_config stat and site probes read, in cvmfs's units (minutes, percent).
            "user.uptime": lambda: str(int((time.monotonic() - self._mounted_at) // 60)),
            "user.expires": lambda: "never (fixed root catalog)",  # a mount serves one snapshot for its life
            "user.nclg": lambda: str(len(repository.loaded_catalogs())),
            "user.nopen": lambda: str(self._opens),
            "user.usedfd": lambda: str(self._open_files),  # files open by the mount's users
            "user.maxfd": lambda: str(resource.getrlimit(resource.RLIMIT_NOFILE)[0]),  # raised at init
            "user.timestamp_last_ioerr": lambda: str(self._last_io_error),
            "user.logbuffer": logbuffer.recent,
            "user.pubkeys": lambda: "".join(key.pem() for key in repository.master_keys),
            "user.inode_max": lambda: str(self._last_ino),  # the highest inode number handed out so far
            "user.repo_metainfo": self._meta_info,
            "user.repo_counters": lambda: _counters_csv(repository.root_catalog),
            "user.catalog_counters": lambda: self._catalog_counters(node),
        }
        cache = repository.cache
        if cache is not None:
            values["user.hitrate"] = lambda: f"{100 * cache.hits / max(1, cache.hits + cache.misses):.3f}"
            values["user.ncleanup24"] = lambda: str(cache.cleanups_since(time.time() - 86400))
            # ucernvm's own (cvmfs_config stat asks cvmfs_talk, a socket ucernvm has no need of): KiB
            # cached, once counted after the mount (else -), and the quota (-1: none, as CVMFS_QUOTA_LIMIT).
            values["user.cache_use"] = lambda: "-" if cache.usage is None else str(cache.usage // 1024)
            values["user.cache_max"] = lambda: "-1" if cache.quota is None else str(cache.quota // 1024)
        if entry.is_regular:
            values["user.compression"] = lambda: "zlib" if entry.is_compressed else "none"
            values["user.chunks"] = lambda: str(len(repository.chunks(node.path, entry)))
            values["user.chunk_list"] = lambda: "hash,offset,size\n" + "".join(
                f"{chunk.content_hash.hex},{chunk.offset},{chunk.size}\n" for chunk in repository.chunks(node.path, entry)
            )
            values["user.external_file"] = lambda: "1" if entry.is_external else "0"
            values["user.direct_io"] = lambda: "1" if entry.flags & Flag.DIRECT_IO else "0"
            if entry.content_hash is not None:
                values["user.hash"] = lambda: entry.content_hash.hex  # type: ignore[union-attr]
                values["user.lhash"] = lambda: self._cached_copy_hash(entry)
        if entry.is_symlink:
            values["user.rawlink"] = lambda: entry.symlink
        produce = values.get(key)
        return produce() if produce else None

    def _meta_info(self) -> str:
        """cvmfs's ``repo_metainfo``: the repository's meta-info JSON, or why there is none."""
        try:
            meta_info = self.repository.meta_info()
        except UcernvmError as error:
            raise self._failed(error) from None
        if meta_info is None:
            return "metainfo not available"
        if len(meta_info) > META_INFO_MAX:
            return "Failed to open: metadata file is too big"
        return meta_info.decode("utf-8", "replace")

    def _catalog_counters(self, node: _Node) -> str:
        """cvmfs's ``catalog_counters``: the counters of the catalog that holds ``node``, and which one it is."""
        mountpoint, catalog = self.repository.hosting_catalog(node.path)
        content_hash = catalog.content_hash.hex if catalog.content_hash is not None else ""
        return f"catalog_hash: {content_hash}\ncatalog_mountpoint: {mountpoint}\n" + _counters_csv(catalog)

    def _cached_copy_hash(self, entry: DirectoryEntry) -> str:
        """cvmfs's ``lhash``: the hash of the file's copy in the cache, computed anew (of its inflated bytes,
        so it differs from ``user.hash`` for a compressed file), or "Not in cache"."""
        cache, content_hash = self.repository.cache, entry.content_hash
        fd = cache.open_cached(content_hash) if cache is not None and content_hash is not None else None
        if fd is None:
            return "Not in cache"
        algorithm = content_hash.algorithm  # type: ignore[union-attr]
        with open(fd, "rb", buffering=0) as stored:
            return ContentHash(algorithm, algorithm.digest_of_file(stored, PIECE_SIZE)).hex

    def listxattr(self, ino: int) -> list[bytes]:
        return [os.fsencode(name) for name in self._get(ino).entry.xattrs]

    def statfs(self) -> FsStats:
        """The cache's size and use, as cvmfs reports them, so that df on a mount shows how full the cache is;
        the files are the snapshot's entries, and free all but those of the loaded catalogs, as cvmfs counts.
        The snapshot never changes: the catalogs are asked for their counters once."""
        entries = self._snapshot_entries
        if entries is None:
            entries = self._snapshot_entries = _entries(self.repository.root_catalog.tree_counters())
        loaded = sum(self._own_entries(catalog) for catalog in self.repository.loaded_catalogs())
        cache = self.repository.cache
        stats = _cache_stats(cache.usage, cache.quota) if cache is not None else FsStats()
        return stats._replace(files=entries, free_files=max(0, entries - loaded))

    def _own_entries(self, catalog: Catalog) -> int:
        """The entries a catalog holds itself, counted once: a loaded catalog stays loaded and never changes."""
        counted = self._catalog_entries.get(catalog)
        if counted is None:
            counted = self._catalog_entries[catalog] = _entries(catalog.statistics(), "self_")
        return counted


def _entries(counters: dict[str, int], prefix: str = "") -> int:
    """The entries (regular files, directories, symlinks, special files) among catalog counters."""
    return sum(counters.get(prefix + kind) or 0 for kind in ("regular", "dir", "symlink", "special"))


def _cache_stats(usage: int | None, quota: int | None) -> FsStats:
    """The quota as the size and the cached bytes as used (the rest free); without a quota, the cached bytes
    as the size and nothing free (cvmfs's answer for a cache of unknown capacity); before the cached bytes
    are counted, no size at all (its answer for a cache whose use it cannot tell)."""
    block = FsStats().block_size
    if usage is None:
        return FsStats()
    used = -(-usage // block)  # a block partly used is not free
    if quota is None:
        return FsStats(blocks=used)
    blocks = quota // block
    return FsStats(blocks=blocks, free=max(0, blocks - used))  # use passes the quota until cleaned


def _counters_csv(catalog: Catalog) -> str:
    """A catalog tree's counters, one ``name,value`` line each, by name (cvmfs's ``repo_counters`` form)."""
    return "".join(f"{name},{value}\n" for name, value in sorted(catalog.tree_counters().items()))


def raise_file_limit(wanted: int) -> None:
    """Raise RLIMIT_NOFILE towards ``wanted``: the hard limit too where allowed (root), else the soft one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    if hard == resource.RLIM_INFINITY or hard >= wanted:
        attempts = [(wanted, hard)]
    else:
        attempts = [(wanted, wanted), (hard, hard)]  # raising the hard limit takes privilege
    for limits in attempts:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, limits)
            return
        except (ValueError, OSError):
            continue
