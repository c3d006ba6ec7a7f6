"""Writing file catalogs: schema 2.5 revision 7, as ``cvmfs_server`` 2.12 creates them."""

from __future__ import annotations

import os
import sqlite3
from collections import Counter
from collections.abc import Iterable
from typing import Any

from ucernvm.cvmfs import sqlite_db
from ucernvm.cvmfs.catalog import SCHEMA, SCHEMA_REVISION, Catalog, Chunk, DirectoryEntry, parent_path, path_hash
from ucernvm.cvmfs.hashing import ContentHash

COUNTER_NAMES = (
    "regular", "symlink", "special", "dir", "nested", "chunked", "chunks",
    "file_size", "chunked_size", "xattr", "external", "external_file_size",
)  # fmt: skip

_SCHEMA_SQL = """
CREATE TABLE properties (key TEXT, value TEXT, CONSTRAINT pk_properties PRIMARY KEY (key));
CREATE TABLE catalog (md5path_1 INTEGER, md5path_2 INTEGER, parent_1 INTEGER, parent_2 INTEGER,
    hardlinks INTEGER, hash BLOB, size INTEGER, mode INTEGER, mtime INTEGER, mtimens INTEGER, flags INTEGER,
    name TEXT, symlink TEXT, uid INTEGER, gid INTEGER, xattr BLOB,
    CONSTRAINT pk_catalog PRIMARY KEY (md5path_1, md5path_2));
CREATE INDEX idx_catalog_parent ON catalog (parent_1, parent_2);
CREATE TABLE chunks (md5path_1 INTEGER, md5path_2 INTEGER, offset INTEGER, size INTEGER, hash BLOB,
    CONSTRAINT pk_chunks PRIMARY KEY (md5path_1, md5path_2, offset, size),
    FOREIGN KEY (md5path_1, md5path_2) REFERENCES catalog(md5path_1, md5path_2));
CREATE TABLE nested_catalogs (path TEXT, sha1 TEXT, size INTEGER, CONSTRAINT pk_nested_catalogs PRIMARY KEY (path));
CREATE TABLE bind_mountpoints (path TEXT, sha1 TEXT, size INTEGER, CONSTRAINT pk_bind_mountpoints PRIMARY KEY (path));
CREATE TABLE statistics (counter TEXT, value INTEGER, CONSTRAINT pk_statistics PRIMARY KEY (counter));
"""

# Properties that change with every write of a catalog, whatever its content.
_VOLATILE_PROPERTIES = frozenset({"revision", "last_modified", "previous_revision"})


class Counters(Counter[str]):
    """Entry statistics; a catalog stores its own (``self_``) and its nested catalogs' (``subtree_``)."""

    @classmethod
    def from_statistics(cls, statistics: dict[str, int], prefix: str) -> Counters:
        return cls({key[len(prefix) :]: value for key, value in statistics.items() if key.startswith(prefix)})

    def count(self, entry: DirectoryEntry, chunk_count: int) -> None:
        if entry.is_directory:
            self["dir"] += 1
        elif entry.is_symlink:
            self["symlink"] += 1
        elif entry.is_special:
            self["special"] += 1
        else:
            self["regular"] += 1
            self["file_size"] += entry.size
            if entry.is_chunked:
                self["chunked"] += 1
                self["chunked_size"] += entry.size
                self["chunks"] += chunk_count
            if entry.is_external:
                self["external"] += 1
                self["external_file_size"] += entry.size
        if entry.xattr:
            self["xattr"] += 1


class CatalogWriter:
    """Collects the rows of one catalog in an in-memory database and serializes it."""

    def __init__(self, root_path: str, ttl: int) -> None:
        self.root_path = root_path
        self.self_counters = Counters()
        self.subtree_counters = Counters()
        self._db = sqlite3.connect(":memory:")
        self._db.text_factory = lambda raw: raw.decode("utf-8", "surrogateescape")
        self._db.execute(f"PRAGMA page_size = {sqlite_db.PAGE_SIZE}")  # before the first table: fixed then
        self._db.executescript(_SCHEMA_SQL)
        properties = [("schema", f"{SCHEMA}"), ("schema_revision", str(SCHEMA_REVISION)), ("TTL", str(ttl))]
        properties += [("root_prefix", root_path)] if root_path else []
        self._db.executemany("INSERT INTO properties VALUES (?,?)", properties)

    def add(self, path: str, entry: DirectoryEntry, chunks: Iterable[Chunk] = ()) -> None:
        """Add the entry at ``path`` (the catalog's own root entry has ``path == root_path``)."""
        key = path_hash(path)
        parent = (0, 0) if path == "" else path_hash(parent_path(path))
        chunk_list = list(chunks)
        self._db.execute(
            # Names are bytes on Linux: bind them as blobs cast to TEXT so that any byte sequence survives.
            "INSERT INTO catalog VALUES (?,?,?,?,?,?,?,?,?,?,?,CAST(? AS TEXT),CAST(? AS TEXT),?,?,?)",
            (
                *key,
                *parent,
                entry.hardlinks,
                entry.digest,
                entry.size,
                entry.mode,
                entry.mtime,
                entry.mtime_ns,
                entry.flags,
                os.fsencode(entry.name),
                os.fsencode(entry.symlink),
                entry.uid,
                entry.gid,
                entry.xattr,
            ),
        )
        if chunk_list:
            self._db.executemany(
                "INSERT INTO chunks VALUES (?,?,?,?,?)",
                [(*key, chunk.offset, chunk.size, chunk.content_hash.digest) for chunk in chunk_list],
            )
        self.self_counters.count(entry, len(chunk_list))

    def add_nested(self, path: str, content_hash: ContentHash, size: int, child_self: Counters, child_subtree: Counters) -> None:
        """Reference a finished child catalog mounted at ``path`` (its mountpoint row is added separately)."""
        self._db.execute("INSERT INTO nested_catalogs VALUES (?,?,?)", (path, content_hash.hex, size))
        self.self_counters["nested"] += 1
        self.subtree_counters.update(child_self)
        self.subtree_counters.update(child_subtree)

    def add_bind_mountpoint(self, path: str, content_hash: ContentHash, size: int) -> None:
        """Mount another snapshot's root catalog at ``path`` (its directory row is added separately). As cvmfs
        does, the bound tree is not counted: it is no part of this snapshot."""
        self._db.execute("INSERT INTO bind_mountpoints VALUES (?,?,?)", (path, content_hash.hex, size))

    def same_content_as(self, previous: Catalog) -> bool:
        """True if ``previous`` holds exactly these rows, so it can be reused instead of rewritten. A catalog
        of an older layout (as cvmfs_server 2.1 wrote, without ``mtimens``) is rewritten in this one."""
        if previous.schema_revision != SCHEMA_REVISION:
            return False
        return _content(self._db) == _content(previous.connection)

    def finish(self, revision: int, last_modified: int, previous_revision: ContentHash | None) -> bytes:
        properties = [("revision", str(revision)), ("last_modified", str(last_modified))]
        if previous_revision is not None:
            properties.append(("previous_revision", previous_revision.hex))
        self._db.executemany("INSERT INTO properties VALUES (?,?)", properties)
        statistics = [(f"self_{name}", self.self_counters[name]) for name in COUNTER_NAMES]
        statistics += [(f"subtree_{name}", self.subtree_counters[name]) for name in COUNTER_NAMES]
        self._db.executemany("INSERT INTO statistics VALUES (?,?)", statistics)
        self._db.commit()
        self._db.execute("VACUUM")
        data = self._db.serialize()
        self._db.close()
        return data


def _content(db: sqlite3.Connection) -> tuple[Any, ...]:
    """What a catalog says, independent of row order and of the properties every write changes."""
    catalog = sorted(
        db.execute(
            "SELECT md5path_1, md5path_2, parent_1, parent_2, hardlinks, hash, size, mode, mtime, "
            "COALESCE(mtimens, 0), flags, CAST(name AS BLOB), CAST(symlink AS BLOB), uid, gid, xattr FROM catalog"
        ).fetchall(),
        key=repr,
    )
    chunks = sorted(db.execute("SELECT * FROM chunks").fetchall(), key=repr)
    nested = sorted(db.execute("SELECT path, sha1, size FROM nested_catalogs").fetchall())
    bound = sorted(db.execute("SELECT path, sha1, size FROM bind_mountpoints").fetchall())
    properties = {k: v for k, v in db.execute("SELECT key, value FROM properties") if k not in _VOLATILE_PROPERTIES}
    properties.setdefault("TTL", "240")
    return catalog, chunks, nested, bound, properties
