"""FUSE passthrough (Linux 6.9+): the kernel reads a file straight from a backing file of ours.

A file stored whole in the cache is, byte for byte, one verified object file on the cache's disk. When
the kernel offers passthrough, the server registers that file with the kernel at OPEN
(``FUSE_DEV_IOC_BACKING_OPEN``) and answers with its backing id; from then on read(2), splice(2) and
mmap(2) of the open file go to the object file in the kernel, through its page cache (large folios,
readahead of the disk's file system), and never reach this process. Registering takes
CAP_SYS_ADMIN and a backing file system that is not itself stacked (overlayfs): where either is
missing the first registration fails and the server goes on without passthrough.

The kernel lets one inode have one backing file at a time: every open of an inode that is open already
must name the same backing id. Ids are therefore kept per inode, counted by open files, and
closed when the last of them is released.
"""

from __future__ import annotations

import fcntl
import struct
import threading

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

# include/uapi/linux/fuse.h, protocol 7.40
_BACKING_MAP = struct.Struct("=iIQ")  # fd, flags, padding
_IOC_WRITE, _FUSE_DEV_IOC_MAGIC = 1, 229


def _iow(number: int, size: int) -> int:
    return _IOC_WRITE << 30 | size << 16 | _FUSE_DEV_IOC_MAGIC << 8 | number


FUSE_DEV_IOC_BACKING_OPEN = _iow(1, _BACKING_MAP.size)
FUSE_DEV_IOC_BACKING_CLOSE = _iow(2, 4)


class BackingFiles:
    """The backing ids registered on one FUSE connection, one per open inode."""

    def __init__(self, fuse_fd: int) -> None:
        self._fuse_fd = fuse_fd
        self._ids: dict[int, list[int]] = {}  # ino -> [backing id, open files]
        self._lock = threading.Lock()
        self.accepting = True  # False once the kernel refused one: no new inode gets a backing file
        self.opens = 0

    def open(self, ino: int, backing_fd: Callable[[], int | None]) -> int | None:
        """The backing id of an open of ``ino``: the inode's own while it has one, else one registered for
        the file ``backing_fd()`` names (None: the file has none, or registering stopped); OSError when the
        kernel refuses it."""
        with self._lock:  # held across the ioctl: two first opens of one inode must not register twice
            entry = self._ids.get(ino)
            if entry is None:
                fd = backing_fd() if self.accepting else None
                if fd is None:
                    return None
                entry = self._ids[ino] = [_ioctl(self._fuse_fd, FUSE_DEV_IOC_BACKING_OPEN, _BACKING_MAP.pack(fd, 0, 0)), 0]
            entry[1] += 1
            self.opens += 1
            return entry[0]

    def release(self, ino: int) -> None:
        """One open file of ``ino`` was released; the last one gives its backing id back to the kernel."""
        with self._lock:
            entry = self._ids.get(ino)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] > 0:
                return
            del self._ids[ino]
            try:
                _ioctl(self._fuse_fd, FUSE_DEV_IOC_BACKING_CLOSE, struct.pack("=I", entry[0]))
            except OSError:
                pass  # the connection is gone (unmounted): the kernel dropped every id with it


def _ioctl(fd: int, request: int, argument: bytes) -> int:
    """ioctl(2) with a pointer to ``argument``; its return value (ioctl() returns the buffer unless asked to
    mutate it)."""
    return fcntl.ioctl(fd, request, bytearray(argument), True)
