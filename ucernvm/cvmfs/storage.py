"""A repository directory being written: atomic placement of objects and of the signed files.

Everything is written to a temporary name in the same directory and renamed into place, so a reader (or
a web server) only ever sees complete files, and a crash leaves the previous revision served intact.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ucernvm.cvmfs.hashing import ContentHash, ObjectType


class RepositoryStorage:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def create_layout(self) -> None:
        """``data/00``..``data/ff`` and ``data/txn`` as ``cvmfs_server mkfs`` lays them out."""
        data = self.root / "data"
        for index in range(256):
            (data / f"{index:02x}").mkdir(parents=True, exist_ok=True)
        (data / "txn").mkdir(exist_ok=True)
        (self.root / ".cvmfs_master_replica").touch()

    def has_object(self, content_hash: ContentHash, object_type: ObjectType) -> bool:
        return (self.root / content_hash.object_path(object_type)).exists()

    def put_object(self, content_hash: ContentHash, object_type: ObjectType, data: bytes) -> bool:
        """Store an object unless it exists (objects are immutable); True if it was written."""
        target = self.root / content_hash.object_path(object_type)
        if target.exists():
            return False
        write_atomically(target, data, staging=self.root / "data" / "txn")
        return True

    def read_named(self, name: str) -> bytes | None:
        try:
            return (self.root / name).read_bytes()
        except FileNotFoundError:
            return None

    def put_named(self, name: str, data: bytes) -> None:
        write_atomically(self.root / name, data)


def write_atomically(target: Path, data: bytes, staging: Path | None = None) -> None:
    """Write, flush to disk, and rename over ``target`` (``staging`` must be on the same file system)."""
    directory = staging or target.parent
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
