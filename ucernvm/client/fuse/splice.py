"""Read replies spliced from files: their bytes go from the page cache to the kernel's FUSE request
without passing through the serving process.

A reply made with ``pread`` and ``writev`` copies every byte twice (page cache → a fresh buffer →
the request's pages) and allocates the buffer; ``splice(2)`` moves references to the file's pages
into a pipe and the pipe into /dev/fuse, where the kernel copies them once (what libfuse does for
``fuse_reply_data`` with a file descriptor). Each worker thread owns one ``ReplySplicer``: its pipe
holds one message at a time. A reply that does not fit the pipe, or a pipe that fills up, is left to
the caller's ``pread`` path: ``send`` returns False before anything reached the kernel. The mount
asks the kernel for reads no larger than a pipe carries (``data_pages``): where pipes stay at the
default 1 MiB, a 1 MiB read would never fit (its header takes a slot of its own).
"""

from __future__ import annotations

import errno
import fcntl
import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

PAGE = os.sysconf("SC_PAGE_SIZE")
# A 1 MiB read plus its header, from spans that need not start on a page: 260 page-sized slots.
# Beyond fs.pipe-max-size (1 MiB) only with CAP_SYS_RESOURCE; a smaller pipe serves smaller reads.
PIPE_BYTES = 2 << 20
# Slots a message takes beyond its data's pages: the header, and the partial first and last pages of
# the spans of a read that crosses from one chunk into the next (chunks are larger than any read).
OVERHEAD_SLOTS = 3

Span = tuple[int, int, int]  # (file descriptor, offset in it, length)


class ReplySplicer:
    """One pipe, through which replies are spliced into /dev/fuse."""

    def __init__(self) -> None:
        self._read_end, self._write_end = -1, -1
        self._slots = 0
        self._open_pipe()

    @classmethod
    def create(cls) -> ReplySplicer | None:
        """A splicer, or None where the platform has no splice(2)."""
        return cls() if hasattr(os, "splice") else None

    @property
    def data_pages(self) -> int:
        """The pages of file data one message carries whatever their alignment (in up to two spans)."""
        return self._slots - OVERHEAD_SLOTS

    def send(self, fuse_fd: int, header: bytes, spans: Sequence[Span]) -> bool:
        """Send ``header`` followed by the bytes of ``spans`` as one message to ``fuse_fd``.

        False when nothing was sent (too many pages for the pipe, or the pipe full): reply another way.
        OSError(EIO) when a file ends before its span does. A request the kernel no longer waits for
        (ENOENT: interrupted) counts as sent.
        """
        pages = 1 + sum((offset % PAGE + length + PAGE - 1) // PAGE for _, offset, length in spans)
        if pages > self._slots:
            return False
        write_end = self._write_end
        os.write(write_end, header)
        total = len(header)
        try:
            for fd, offset, length in spans:
                total += length
                while length:
                    moved = os.splice(fd, write_end, length, offset_src=offset, flags=os.SPLICE_F_NONBLOCK)
                    if not moved:
                        raise OSError(errno.EIO, "cached object is shorter than its catalog entry")
                    offset += moved
                    length -= moved
        except BlockingIOError:
            self._reset()
            return False
        except OSError:
            self._reset()
            raise
        try:
            os.splice(self._read_end, fuse_fd, total)
        except OSError as error:
            self._reset()  # whatever the kernel left in the pipe must not start the next message
            if error.errno != errno.ENOENT:
                raise
        return True

    def close(self) -> None:
        for fd in (self._read_end, self._write_end):
            if fd >= 0:
                os.close(fd)
        self._read_end = self._write_end = -1

    def _open_pipe(self) -> None:
        self._read_end, self._write_end = os.pipe2(os.O_CLOEXEC)
        for size in (PIPE_BYTES, PIPE_BYTES // 2):
            try:
                fcntl.fcntl(self._write_end, fcntl.F_SETPIPE_SZ, size)
                break
            except OSError:
                continue  # EPERM above fs.pipe-max-size: reads too large for the pipe take the pread path
        self._slots = fcntl.fcntl(self._write_end, fcntl.F_GETPIPE_SZ) // PAGE

    def _reset(self) -> None:
        self.close()
        self._open_pipe()
