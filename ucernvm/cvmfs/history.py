"""The history database: named tags of root catalogs (``trunk``, ``trunk-previous``, and user tags)."""

from __future__ import annotations

import sqlite3

from ucernvm.cvmfs import sqlite_db
from ucernvm.cvmfs.hashing import ContentHash
from ucernvm.cvmfs.sqlite_db import connect_bytes, properties_and_columns
from ucernvm.errors import FormatError
from ucernvm.records import NamedTuple

SCHEMA = "1.0"
SCHEMA_REVISION = 3
TRUNK = "trunk"
TRUNK_PREVIOUS = "trunk-previous"


class Tag(NamedTuple):
    name: str
    root_hash: ContentHash
    revision: int
    timestamp: int
    description: str = ""
    size: int = 0  # uncompressed size of the root catalog
    branch: str = ""


class History:
    """A history database held in memory; read from and serialized to the ``...H`` object's bytes."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection
        self.properties, columns = properties_and_columns(connection, "tags", "history database")
        self._has_branch = "branch" in columns

    @classmethod
    def from_bytes(cls, data: bytes) -> History:
        return cls(connect_bytes(data, "history database"))

    @classmethod
    def create(cls, fqrn: str) -> History:
        connection = sqlite3.connect(":memory:")
        connection.execute(f"PRAGMA page_size = {sqlite_db.PAGE_SIZE}")  # before the first table: fixed then
        connection.executescript(
            """
            CREATE TABLE properties (key TEXT, value TEXT, CONSTRAINT pk_properties PRIMARY KEY (key));
            CREATE TABLE branches (branch TEXT, parent TEXT, initial_revision INTEGER,
                CONSTRAINT pk_branch PRIMARY KEY (branch), FOREIGN KEY (parent) REFERENCES branches (branch));
            CREATE TABLE tags (name TEXT, hash TEXT, revision INTEGER, timestamp INTEGER, channel INTEGER,
                description TEXT, size INTEGER, branch TEXT, CONSTRAINT pk_tags PRIMARY KEY (name),
                FOREIGN KEY (branch) REFERENCES branches (branch));
            CREATE INDEX idx_revision ON tags (revision);
            CREATE TABLE recycle_bin (hash TEXT, flags INTEGER, CONSTRAINT pk_hash PRIMARY KEY (hash));
            INSERT INTO branches (branch, parent, initial_revision) VALUES ('', NULL, 0);
            """
        )
        connection.executemany(
            "INSERT INTO properties (key, value) VALUES (?, ?)",
            [("schema", SCHEMA), ("schema_revision", str(SCHEMA_REVISION)), ("fqrn", fqrn)],
        )
        connection.commit()
        return cls(connection)

    def to_bytes(self) -> bytes:
        self._connection.commit()
        self._connection.execute("VACUUM")
        return self._connection.serialize()

    @property
    def fqrn(self) -> str | None:
        return self.properties.get("fqrn")

    def tags(self) -> list[Tag]:
        """All tags, newest revision first."""
        branch = "branch" if self._has_branch else "''"
        try:
            rows = self._connection.execute(
                f"SELECT name, hash, revision, timestamp, description, size, {branch} FROM tags "
                "ORDER BY revision DESC, timestamp DESC, name"
            ).fetchall()
        except sqlite3.DatabaseError as error:
            raise FormatError(f"corrupt history database: {error}") from None
        return [
            Tag(name, ContentHash.parse(digest), int(revision), int(timestamp or 0), description or "", int(size or 0), b or "")
            for name, digest, revision, timestamp, description, size, b in rows
        ]

    def find(self, name: str) -> Tag | None:
        return next((tag for tag in self.tags() if tag.name == name), None)

    def insert(self, tag: Tag) -> None:
        """Add or replace a tag (an existing name is moved to the new root)."""
        if not self._has_branch:
            self._upgrade()
        self._connection.execute(
            "INSERT OR REPLACE INTO tags (name, hash, revision, timestamp, channel, description, size, branch) "
            "VALUES (?, ?, ?, ?, 0, ?, ?, ?)",
            (tag.name, tag.root_hash.hex, tag.revision, tag.timestamp, tag.description, tag.size, tag.branch),
        )

    def remove(self, name: str) -> None:
        self._connection.execute("DELETE FROM tags WHERE name = ?", (name,))

    def _upgrade(self) -> None:
        """Bring a pre-branch history (schema revision < 3, as cvmfs 2.1 wrote) to revision 3."""
        self._connection.executescript(
            """
            CREATE TABLE IF NOT EXISTS branches (branch TEXT, parent TEXT, initial_revision INTEGER,
                CONSTRAINT pk_branch PRIMARY KEY (branch), FOREIGN KEY (parent) REFERENCES branches (branch));
            INSERT OR IGNORE INTO branches (branch, parent, initial_revision) VALUES ('', NULL, 0);
            ALTER TABLE tags ADD COLUMN branch TEXT;
            UPDATE tags SET branch = '';
            """
        )
        self._connection.execute(
            "INSERT OR REPLACE INTO properties (key, value) VALUES ('schema_revision', ?)", (str(SCHEMA_REVISION),)
        )
        self._has_branch = True

    def set_previous_revision(self, history_hash: ContentHash | None) -> None:
        if history_hash is None:
            self._connection.execute("DELETE FROM properties WHERE key='previous_revision'")
        else:
            self._connection.execute(
                "INSERT OR REPLACE INTO properties (key, value) VALUES ('previous_revision', ?)", (history_hash.hex,)
            )
