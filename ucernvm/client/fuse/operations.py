"""What a read-only file system implements to be served over FUSE.

The interface is inode-based, like the kernel protocol: the kernel asks for a name inside a
directory inode and keeps the inode number it gets back. Inode numbers are the kernel's node
ids, so they must be stable and unique for the life of the mount, the root is ``ROOT_INO``
(1), and two names with the same ``ino`` are hard links to one inode. Errors are raised as
``OSError(errno.X, ...)``; the server turns any other exception into EIO.

Every method may be called from several worker threads at once. The server may outlive the
paths it was started from (switch_root), so an implementation imports and opens what it needs
before the mount, never lazily while serving.
"""

from __future__ import annotations

import errno
import sys
from collections import namedtuple

# The FUSE daemon runs inside the initramfs, where every import is paid for at each boot:
# records are namedtuples and typing is imported for type checkers only (dataclasses and
# typing cost ~30 ms natively, 10-20x that under emulation).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from typing import Any

ROOT_INO = 1


def report(message: str) -> None:
    """One line on the daemon's log: its stderr, mount.log beside the cache (stderr rather than logging:
    the daemon must not import more than it needs). A log that cannot be written, on a full disk, must
    not become the error of the request being served."""
    try:
        sys.stderr.write(message + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


class Attributes(namedtuple("Attributes", "ino mode size nlink uid gid mtime_ns rdev", defaults=(0, 1, 0, 0, 0, 0))):
    """The ``stat`` of one inode, as the kernel caches it.

    ``mode`` holds the file type and permission bits (as ``st_mode``); ``mtime_ns`` is also
    reported as atime and ctime, since the tree never changes.
    """

    __slots__ = ()
    ino: int
    mode: int
    size: int
    nlink: int
    uid: int
    gid: int
    mtime_ns: int
    rdev: int


class FsStats(namedtuple("FsStats", "blocks files block_size name_max free free_files",
                         defaults=(0, 0, 4096, 255, 0, 0))):
    """What ``statfs`` reports: sizes in ``block_size`` units; ``free`` blocks and ``free_files`` inodes are
    free and available alike."""

    __slots__ = ()
    blocks: int
    files: int
    block_size: int
    name_max: int
    free: int
    free_files: int


class DirEntry(namedtuple("DirEntry", "name attributes next_offset")):
    """One directory entry; ``next_offset`` is the cookie that resumes the listing after it."""

    __slots__ = ()
    name: bytes
    attributes: Attributes
    next_offset: int


class Operations:
    """Base class of a read-only file system; override what the tree supports.

    ``lookup``, ``getattr``, ``open``/``read`` and ``readdir`` are the core. The defaults of the
    rest describe a tree without symlinks, xattrs or per-handle state.
    """

    # True when ``backing_fd`` may name a file: where the kernel offers passthrough, the server then takes
    # OPEN and RELEASE for every file (instead of a zero-message open) to hand over the backing files.
    has_backing_files = False

    def init(self) -> None:
        """Called once when the kernel connection is established, before any other call."""

    def destroy(self) -> None:
        """Called once when the file system is unmounted and the server stops."""

    def lookup(self, parent_ino: int, name: bytes) -> Attributes:
        """The attributes (with ``ino``) of ``name`` in directory ``parent_ino``; ENOENT if none.

        Each successful lookup adds one reference to the inode, given back by ``forget``.
        """
        raise OSError(errno.ENOSYS, "lookup")

    def forget(self, inodes: Sequence[tuple[int, int]]) -> None:
        """The kernel dropped ``nlookup`` references on each ``(ino, nlookup)``."""

    def getattr(self, ino: int) -> Attributes:
        raise OSError(errno.ENOSYS, "getattr")

    def readlink(self, ino: int) -> bytes:
        raise OSError(errno.EINVAL, "not a symlink")

    def open(self, ino: int, flags: int) -> Any:
        """A handle for reading ``ino`` (only called for read-only opens)."""
        return ino

    def read(self, handle: Any, offset: int, size: int) -> bytes | memoryview:
        """Up to ``size`` bytes at ``offset``; fewer only at the end of the file."""
        raise OSError(errno.ENOSYS, "read")

    def read_spans(self, handle: Any, offset: int, size: int) -> Sequence[tuple[int, int, int]] | None:
        """Where the bytes ``read`` would return are, as ``(fd, offset, length)`` in files, or None.

        The server splices them into its reply (splice.py) instead of calling ``read``; the
        descriptors must stay open until ``release`` (or ``forget`` of the inode).
        """
        return None

    def backing_fd(self, handle: Any) -> int | None:
        """A descriptor of a regular file holding exactly the bytes of ``handle``'s file, or None.

        Where the kernel offers passthrough, it then reads the file from there itself (passthrough.py);
        ``handle`` is released right after, the kernel keeps its own reference to that file.
        """
        return None

    def release(self, handle: Any) -> None:
        """The last file descriptor on ``handle`` was closed."""

    def opendir(self, ino: int) -> Any:
        """A handle for listing directory ``ino``; the default hands the inode to readdir."""
        return ino

    def readdir(self, handle: Any, offset: int) -> Iterable[DirEntry]:
        """Entries after cookie ``offset`` (0: from the start), in a stable order.

        The server stops iterating once the kernel's buffer is full, so a generator is best.
        '.' and '..' need not be listed.
        """
        raise OSError(errno.ENOSYS, "readdir")

    def releasedir(self, handle: Any) -> None:
        """The directory handle from ``opendir`` is no longer used."""

    def getxattr(self, ino: int, name: bytes) -> bytes:
        raise OSError(errno.ENODATA, "no such attribute")

    def listxattr(self, ino: int) -> Sequence[bytes]:
        return ()

    def statfs(self) -> FsStats:
        return FsStats()

    def statistics(self) -> dict[str, Any]:
        """What the file system reports of itself in the server's statistics (JSON values)."""
        return {}

    def save_records(self) -> None:
        """Write what the file system records of its use to its own files (asked with the statistics)."""
