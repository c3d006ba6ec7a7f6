"""Reading file catalogs: the SQLite databases (schema 2.5) that describe a repository's tree.

Entries are keyed by the MD5 of their absolute path (``""`` for the root), split into two signed
little-endian 64-bit integers. A directory marked as a nested-catalog mountpoint is continued in a child
catalog, listed with its content hash in ``nested_catalogs``.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import struct
import threading
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any

from ucernvm.cvmfs import xattrs
from ucernvm.cvmfs.hashing import ContentHash, HashAlgorithm, ObjectType, md5
from ucernvm.cvmfs.sqlite_db import connect_bytes, properties_and_columns
from ucernvm.errors import FormatError
from ucernvm.records import NamedTuple

SCHEMA = 2.5
_NO_XATTRS: Mapping[str, bytes] = MappingProxyType({})
SCHEMA_REVISION = 7
_SCHEMA_EPSILON = 0.0005
_READABLE_SCHEMAS = (2.4, SCHEMA)


class Flag:
    """Bits of the ``flags`` column; plain ints, since an IntFlag operator costs ~1 us and every
    listing tests several per entry."""

    DIR = 1
    NESTED_MOUNTPOINT = 2
    FILE = 4
    LINK = 8
    SPECIAL = 16
    NESTED_ROOT = 32
    CHUNKED = 64
    EXTERNAL = 128
    BIND_MOUNTPOINT = 0x4000
    HIDDEN = 0x8000
    DIRECT_IO = 0x10000


COMPRESSION_SHIFT = 11
COMPRESSION_ZLIB = 0
COMPRESSION_NONE = 1


def path_hash(path: str) -> tuple[int, int]:
    """The md5path pair of an absolute path (``""`` is the root, no trailing slash)."""
    return struct.unpack("<qq", md5(os.fsencode(path)).digest())


def parent_path(path: str) -> str:
    return path.rsplit("/", 1)[0] if path else ""


def join(directory: str, name: str) -> str:
    return f"{directory}/{name}"


class DirectoryEntry(NamedTuple):
    """One row of a catalog (a named tuple made straight from the row: a mount makes one for every entry
    it meets, and other immutable records cost several times as much to build). The content hash is kept
    as the row's raw digest, its algorithm in ``flags``, and the extended attributes as the row's blob:
    each is decoded only when asked for, which a listing never does."""

    name: str
    mode: int
    size: int
    mtime: int
    flags: int
    uid: int
    gid: int
    hardlinks: int = 0
    digest: bytes | None = None
    symlink: str = ""
    mtime_ns: int = 0
    xattr: bytes | None = None  # the catalog's blob (xattrs.py)

    @property
    def xattrs(self) -> Mapping[str, bytes]:
        """The extended attributes, decoded from the blob at each call."""
        return xattrs.decode(self.xattr) if self.xattr else _NO_XATTRS

    @property
    def is_directory(self) -> bool:
        return bool(self.flags & Flag.DIR)

    @property
    def is_symlink(self) -> bool:
        return bool(self.flags & Flag.LINK)

    @property
    def is_special(self) -> bool:
        return bool(self.flags & Flag.SPECIAL)

    @property
    def is_regular(self) -> bool:
        return bool(self.flags & Flag.FILE) and not self.flags & (Flag.LINK | Flag.SPECIAL)

    @property
    def is_chunked(self) -> bool:
        return bool(self.flags & Flag.CHUNKED)

    @property
    def piece_type(self) -> ObjectType:
        """How the objects of this file's content are stored: chunks of it, or the whole file."""
        return ObjectType.PARTIAL if self.is_chunked else ObjectType.FILE

    @property
    def is_nested_mountpoint(self) -> bool:
        return bool(self.flags & Flag.NESTED_MOUNTPOINT)

    @property
    def is_nested_root(self) -> bool:
        return bool(self.flags & Flag.NESTED_ROOT)

    @property
    def is_bind_mountpoint(self) -> bool:
        return bool(self.flags & Flag.BIND_MOUNTPOINT)

    @property
    def is_hidden(self) -> bool:
        return bool(self.flags & Flag.HIDDEN)

    @property
    def is_external(self) -> bool:
        return bool(self.flags & Flag.EXTERNAL)

    @property
    def is_compressed(self) -> bool:
        return ((self.flags >> COMPRESSION_SHIFT) & 0x7) == COMPRESSION_ZLIB

    @property
    def hash_algorithm(self) -> HashAlgorithm:
        return HashAlgorithm.from_catalog_flags(self.flags)

    @property
    def content_hash(self) -> ContentHash | None:
        return ContentHash(self.hash_algorithm, self.digest) if self.digest else None

    @property
    def linkcount(self) -> int:
        count = self.hardlinks & 0xFFFFFFFF
        return count if count else 1

    @property
    def hardlink_group(self) -> int:
        return self.hardlinks >> 32

    @property
    def device_number(self) -> int:
        """Character and block devices keep their device number in the size column."""
        return self.size if stat.S_ISCHR(self.mode) or stat.S_ISBLK(self.mode) else 0


class Chunk(NamedTuple):
    offset: int
    size: int
    content_hash: ContentHash


class NestedCatalogRef(NamedTuple):
    """A row of ``nested_catalogs`` or, with ``bind``, of ``bind_mountpoints``: where a child catalog is
    mounted. A bind mountpoint (``/.cvmfs/snapshots/<tag>``) mounts another snapshot's root catalog."""

    path: str
    content_hash: ContentHash
    size: int
    bind: bool = False


def _schema_hint(schema: float) -> str:
    """What a catalog of a schema ucernvm does not read comes from, and what to do about it."""
    if schema < 2.0 - _SCHEMA_EPSILON:
        return ("a schema 1.x catalog belongs to a cvmfs 2.0 repository; `cvmfs_server import -l` migrates it to "
                f"schema {SCHEMA}")
    if schema > SCHEMA + _SCHEMA_EPSILON:
        return "a cvmfs newer than 2.12 wrote it"
    return "cvmfs clients refuse it too"


class Catalog:
    """A read-only catalog database. Thread-safe: one connection guarded by a lock."""

    def __init__(self, connection: sqlite3.Connection, content_hash: ContentHash | None = None) -> None:
        self.content_hash = content_hash
        self._connection = connection
        self._lock = threading.Lock()
        connection.text_factory = _file_name  # until the properties are read; then see _query
        self.properties, columns = properties_and_columns(connection, "catalog", "catalog")
        try:
            self.schema = float(self.properties.get("schema", "1.0"))
        except ValueError:
            raise FormatError(f"catalog has a malformed schema {self.properties['schema']!r}") from None
        # cvmfs's CheckSchemaCompatibility: of the 2.x schemas only 2.4 and 2.5. cvmfs clients also read 1.x,
        # the catalogs of cvmfs 2.0 repositories, whose columns differ; none has been served since cvmfs 2.1
        # migrated them, and they are not read here.
        if not any(abs(self.schema - schema) < _SCHEMA_EPSILON for schema in _READABLE_SCHEMAS):
            raise FormatError(f"catalog schema {self.schema} is not supported: ucernvm reads schemas 2.4 and {SCHEMA}",
                              _schema_hint(self.schema))
        # The columns of a DirectoryEntry in its order, NULLs made its defaults by SQLite (in C, where
        # a test in Python for every column of every row cost as much as building the entry).
        self._select = (
            "SELECT name, mode, ifnull(size, 0), ifnull(mtime, 0), flags, ifnull(uid, 0), ifnull(gid, 0), "
            "ifnull(hardlinks, 0), hash, ifnull(symlink, ''), "
            + ("ifnull(mtimens, 0), " if "mtimens" in columns else "0, ")
            + ("xattr " if "xattr" in columns else "NULL ")
            + "FROM catalog "
        )
        connection.text_factory = str
        self._nested: list[NestedCatalogRef] | None = None
        self._has_bind_mountpoints = bool(
            connection.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='bind_mountpoints'").fetchone()
        )

    @classmethod
    def from_bytes(cls, data: bytes, content_hash: ContentHash | None = None) -> Catalog:
        """Open an uncompressed catalog held in memory."""
        return cls(connect_bytes(data, "catalog", check_same_thread=False), content_hash)

    @classmethod
    def open(cls, path: str | os.PathLike[str], content_hash: ContentHash | None = None) -> Catalog:
        """Open an uncompressed catalog file read-only (as cvmfs does in its cache)."""
        uri = "file:" + os.fspath(path) + "?mode=ro&immutable=1"
        try:
            connection = sqlite3.connect(uri, uri=True, check_same_thread=False)
        except sqlite3.Error as error:
            raise FormatError(f"cannot open catalog {path}: {error}") from None
        return cls(connection, content_hash)

    @property
    def connection(self) -> sqlite3.Connection:
        return self._connection

    def close(self) -> None:
        self._connection.close()

    # -- properties -----------------------------------------------------------------------------

    @property
    def revision(self) -> int:
        return int(self.properties.get("revision", "0"))

    @property
    def schema_revision(self) -> int:
        return int(self.properties.get("schema_revision", "0"))

    @property
    def root_prefix(self) -> str:
        return self.properties.get("root_prefix", "")

    @property
    def last_modified(self) -> int:
        return int(self.properties.get("last_modified", "0"))

    @property
    def previous_revision(self) -> ContentHash | None:
        """The hash of this catalog's previous version; None for none. cvmfs reads a value that is no hash
        as its null hash, "none": cvmfs_server 2.1 wrote 64 zeros into a new nested catalog."""
        try:
            previous = ContentHash.parse(self.properties.get("previous_revision", ""))
        except FormatError:
            return None
        return previous if any(previous.digest) else None

    @property
    def ttl(self) -> int:
        return int(self.properties.get("TTL", "240"))

    # -- queries --------------------------------------------------------------------------------

    def _query(self, sql: str, parameters: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._fetch(sql, parameters)
            except sqlite3.DatabaseError as error:
                raise FormatError(f"corrupt catalog: {error}") from None

    def _fetch(self, sql: str, parameters: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        try:
            return self._connection.execute(sql, parameters).fetchall()
        except sqlite3.OperationalError as error:
            if not str(error).startswith("Could not decode to UTF-8"):
                raise
        # A name that is not UTF-8 (Linux allows any bytes). SQLite decodes text in C and a Python
        # text_factory costs ~0.5 us a column, so it is set only for a catalog that needs it.
        self._connection.text_factory = _file_name
        return self._connection.execute(sql, parameters).fetchall()

    def lookup(self, path: str) -> DirectoryEntry | None:
        rows = self._query(self._select + "WHERE md5path_1=? AND md5path_2=?", path_hash(path))
        return _entry_of_row(rows[0]) if rows else None

    def listing(self, path: str) -> list[DirectoryEntry]:
        """The entries of a directory (the directory's own path, not a name), in stored order."""
        rows = self._query(self._select + "WHERE parent_1=? AND parent_2=?", path_hash(path))
        return [_entry_of_row(row) for row in rows]

    def entries(self) -> list[tuple[tuple[int, int], tuple[int, int], DirectoryEntry]]:
        """Every row with its path and parent hashes (for comparison and traversal)."""
        select = self._select.replace("SELECT ", "SELECT md5path_1, md5path_2, parent_1, parent_2, ", 1)
        return [((r[0], r[1]), (r[2], r[3]), _entry_of_row(r[4:])) for r in self._query(select)]

    def chunks(self, path: str, algorithm: HashAlgorithm) -> list[Chunk]:
        rows = self._query(
            "SELECT offset, size, hash FROM chunks WHERE md5path_1=? AND md5path_2=? ORDER BY offset", path_hash(path)
        )
        return [Chunk(offset, size, ContentHash(algorithm, bytes(digest))) for offset, size, digest in rows]

    def nested_catalogs(self) -> list[NestedCatalogRef]:
        if self._nested is None:  # asked on every path resolution; a catalog never changes
            tables = ("nested_catalogs", "bind_mountpoints") if self._has_bind_mountpoints else ("nested_catalogs",)
            self._nested = [
                NestedCatalogRef(path, ContentHash.parse(digest), size or 0, table == "bind_mountpoints")
                for table in tables
                for path, digest, size in self._query(f"SELECT path, sha1, size FROM {table}")
            ]
        return self._nested

    def nested_catalog_for(self, path: str) -> NestedCatalogRef | None:
        """The direct child catalog whose mountpoint is ``path`` or one of its ancestors."""
        for reference in self.nested_catalogs():
            if path == reference.path or path.startswith(reference.path + "/"):
                return reference
        return None

    def statistics(self) -> dict[str, int]:
        return dict(self._query("SELECT counter, value FROM statistics"))

    def tree_counters(self) -> dict[str, int]:
        """Each counter of the tree this catalog roots (its own entries and its nested catalogs'), by
        name without the ``self_``/``subtree_`` prefix, as cvmfs totals them for ``repo_counters``."""
        totals: dict[str, int] = {}
        for counter, value in self.statistics().items():
            scope, _, name = counter.partition("_")
            if scope in ("self", "subtree") and name:
                totals[name] = totals.get(name, 0) + (value or 0)
        return totals


def _file_name(raw: bytes) -> str:
    """A name as os.fsdecode makes it: bytes that are not UTF-8 survive as surrogates."""
    return raw.decode("utf-8", "surrogateescape")


_entry_of_row: Callable[[Iterable[Any]], DirectoryEntry] = DirectoryEntry._make  # a row of Catalog._select
