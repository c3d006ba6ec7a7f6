"""What catalogs and the history database share: SQLite files that arrive as bytes."""

from __future__ import annotations

import sqlite3

from ucernvm.errors import FormatError

# The page size of the catalogs and history databases written: cvmfs_server's, whose bundled SQLite is
# built with SQLITE_DEFAULT_PAGE_SIZE=1024 and whose client sizes its SQLite page cache for such pages. An
# empty catalog is 16 KiB instead of 56 KiB at SQLite's 4096; lookups in a catalog of 57,000 entries cost
# a few microseconds more, which a walk through the mount does not show (docs/benchmarks.md).
PAGE_SIZE = 1024


def connect_bytes(data: bytes, what: str, check_same_thread: bool = True) -> sqlite3.Connection:
    """An in-memory database holding ``data``; FormatError if it is not SQLite."""
    connection = sqlite3.connect(":memory:", check_same_thread=check_same_thread)
    try:
        connection.deserialize(data)
    except (sqlite3.DatabaseError, MemoryError) as error:  # MemoryError: sqlite's answer to b""
        connection.close()
        raise FormatError(f"not a CernVM-FS {what}: {error}") from None
    return connection


def properties_and_columns(connection: sqlite3.Connection, table: str, what: str) -> tuple[dict[str, str], set[str]]:
    """The ``properties`` table and the column names of ``table``: FormatError if either is missing."""
    try:
        properties = dict(connection.execute("SELECT key, value FROM properties"))
        columns = {row[1] for row in connection.execute(f"PRAGMA table_info({table})")}
    except sqlite3.DatabaseError as error:
        raise FormatError(f"not a CernVM-FS {what}: {error}") from None
    if not columns:
        raise FormatError(f"not a CernVM-FS {what}: no '{table}' table")
    return properties, columns
