"""A repository directory being written: atomic placement of objects and of the signed files.

Everything is written to a temporary name in the same directory and renamed into place, so a reader (or
a web server) only ever sees complete files, and a crash leaves the previous revision served intact.
"""

from __future__ import annotations

import ctypes
import functools
import os
import tempfile
from pathlib import Path

from ucernvm.cvmfs.hashing import ContentHash, ObjectType
from ucernvm.errors import StorageError


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
        write_atomically(target, data, staging=self.root / "data" / "txn", durable=False)
        return True

    def sync(self) -> None:
        """Flush every object written so far, before a manifest may reference them."""
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            # syncfs(2) flushes only the repository's file system; Python's os module lacks it.
            if _libc().syncfs(fd) != 0:
                os.sync()
        finally:
            os.close(fd)

    def read_named(self, name: str) -> bytes | None:
        try:
            return (self.root / name).read_bytes()
        except FileNotFoundError:
            return None

    def put_named(self, name: str, data: bytes) -> None:
        write_atomically(self.root / name, data)


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def write_atomically(target: Path, data: bytes, staging: Path | None = None, durable: bool = True) -> None:
    """Write to a temporary name and rename over ``target`` (``staging`` must be on the same file system).

    ``durable`` flushes the data to disk before the rename; objects skip that and are flushed together
    by ``sync()`` before the manifest that references them is written.
    """
    temporary = None
    try:
        fd, temporary = tempfile.mkstemp(dir=staging or target.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, target)
    except OSError as error:
        if temporary:
            Path(temporary).unlink(missing_ok=True)
        raise StorageError(f"cannot write {target}: {error.strerror}", "check free space and permissions") from None
