"""A repository directory being written: atomic placement of objects and of the signed files.

Everything is written to a temporary name in the same directory and renamed into place, so a reader (or
a web server) only ever sees complete files, and a crash leaves the previous revision served intact. A
first publish that fails removes what it made, so that the directory is as it was given.
"""

from __future__ import annotations

import ctypes
import functools
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ucernvm.cvmfs.hashing import ContentHash, ObjectType
from ucernvm.errors import StorageError


class RepositoryStorage:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        # What a first publish made, outermost first, while it may be undone (see create_layout).
        self._made: list[Path] | None = None
        self._made_directories: set[Path] = set()

    def create_layout(self, record: bool = False) -> None:
        """``data/00``..``data/ff`` and ``data/txn`` as ``cvmfs_server mkfs`` lays them out (what it made is
        removed if it fails). ``record`` keeps what it makes, and every file written after into a directory
        it did not make, for ``removed_on_failure``."""
        made: list[Path] = []
        try:
            for directory in self._layout_directories():
                if _made_directory(directory):
                    made.append(directory)
            directories = set(made)
            marker = self.root / ".cvmfs_master_replica"
            if not marker.exists():
                marker.touch()
                made.append(marker)
        except OSError as error:
            for path in reversed(made):
                _remove(path)
            raise StorageError(f"cannot lay out the repository in {self.root}: {error.strerror}",
                               "give --repo a directory, or a path where one can be made") from None
        if record:
            self._made, self._made_directories = made, directories

    def _layout_directories(self) -> list[Path]:
        """The layout's directories, outermost first, from the root's outermost missing ancestor."""
        missing = [path for path in (self.root, *self.root.parents) if not path.exists()]
        data = self.root / "data"
        return [*reversed(missing), data, *(data / f"{index:02x}" for index in range(256)), data / "txn"]

    @contextmanager
    def removed_on_failure(self, kept_with: str) -> Iterator[None]:
        """If the block fails, remove what was recorded since ``create_layout(record=True)``: the files
        written, then the directories made, each with what it holds (only the publish holding the publish
        lock writes there). Nothing goes once the file ``kept_with`` is there: the directory then holds a
        repository, which another publish made meanwhile."""
        try:
            yield
        except BaseException:
            if not (self.root / kept_with).exists():
                for path in reversed(self._made or []):
                    _remove(path)
            raise
        finally:
            self._made = None

    def has_object(self, content_hash: ContentHash, object_type: ObjectType) -> bool:
        return (self.root / content_hash.object_path(object_type)).exists()

    def put_object(self, content_hash: ContentHash, object_type: ObjectType, data: bytes) -> bool:
        """Store an object unless it exists (objects are immutable); True if it was written."""
        target = self.root / content_hash.object_path(object_type)
        if target.exists():
            return False
        write_atomically(target, data, staging=self.root / "data" / "txn", durable=False)
        self.record(target)
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
        except (FileNotFoundError, NotADirectoryError):  # no repository, or no directory: create_layout says
            return None

    def put_named(self, name: str, data: bytes) -> None:
        target = self.root / name
        made = not target.exists()
        write_atomically(target, data)
        if made:
            self.record(target)

    def record(self, written: Path) -> None:
        """Keep a file made where the layout did not make the directory (one made goes with all in it)."""
        made = self._made
        if made is not None and written.parent not in self._made_directories:
            made.append(written)  # list.append is atomic: objects are written from several threads


def _made_directory(directory: Path) -> bool:
    """Make ``directory`` unless it is one; whether it was made here."""
    try:
        directory.mkdir()
    except FileExistsError:
        if not directory.is_dir():
            raise
        return False
    return True


def _remove(path: Path) -> None:
    """Remove a file, or a directory with everything in it; what cannot be removed stays (the failure that
    brought this about is the one to report)."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass


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
