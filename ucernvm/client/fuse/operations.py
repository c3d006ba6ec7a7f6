"""What a read-only file system implements to be served over FUSE.

The interface is inode-based, like the kernel protocol: the kernel asks for a name inside a
directory inode and keeps the inode number it gets back. Inode numbers are the kernel's node
ids, so they must be stable and unique for the life of the mount, the root is ``ROOT_INO``
(1), and two names with the same ``ino`` are hard links to one inode. Errors are raised as
``OSError(errno.X, ...)``; the server turns any other exception into EIO.

Every method may be called from several worker threads at once.
"""

from __future__ import annotations

import errno
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

ROOT_INO = 1


@dataclass(frozen=True, slots=True)
class Attributes:
    """The ``stat`` of one inode, as the kernel caches it."""

    ino: int
    mode: int  # file type and permission bits, as in st_mode
    size: int = 0
    nlink: int = 1
    uid: int = 0
    gid: int = 0
    mtime_ns: int = 0  # also reported as atime and ctime: the tree never changes
    rdev: int = 0

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)


@dataclass(frozen=True, slots=True)
class FsStats:
    """What ``statfs`` reports: sizes in ``block_size`` units, nothing free (read-only)."""

    blocks: int = 0
    files: int = 0
    block_size: int = 4096
    name_max: int = 255


@dataclass(frozen=True, slots=True)
class DirEntry:
    """One directory entry; ``next_offset`` is the cookie that resumes the listing after it."""

    name: bytes
    attributes: Attributes
    next_offset: int


class Operations:
    """Base class of a read-only file system; override what the tree supports.

    ``lookup``, ``getattr``, ``open``/``read`` and ``readdir`` are the core. The defaults of the
    rest describe a tree without symlinks, xattrs or per-handle state.
    """

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
