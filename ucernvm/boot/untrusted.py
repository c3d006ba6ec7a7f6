"""Reading a file that whoever wrote it may have replaced by anything: a context medium, or the scratch
disk, which the booted OS writes and a later boot reads back. A symbolic link anywhere on the path is
refused (it would pull in a file of the booting system), and only a small regular file is read: a FIFO
would block PID 1, a huge file (or a device) would fill its memory.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ucernvm.boot.state import BootState


class UnusableFile(Exception):
    """A file that exists but is not a small regular file."""


def read_file(root: Path | str, relative: str, limit: int) -> bytes | None:
    """The bytes of ``root/relative``; None when absent. Raises ``UnusableFile`` for a symbolic link
    anywhere on the path, a non-regular file, a read error or more than ``limit`` bytes."""
    parts = [part for part in relative.split("/") if part]
    try:
        directory = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        for part in parts[:-1]:
            if stat.S_ISLNK(os.stat(part, dir_fd=directory, follow_symlinks=False).st_mode):
                raise OSError(errno.ELOOP, "a symbolic link")
            inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=directory)
            os.close(directory)
            directory = inner
        handle = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=directory)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise UnusableFile(f"{relative} is a symbolic link") from None
        raise UnusableFile(f"{relative}: {error.strerror}") from None
    finally:
        os.close(directory)
    try:
        if not stat.S_ISREG(os.fstat(handle).st_mode):
            raise UnusableFile(f"{relative} is not a regular file")
        chunks = []
        size = 0
        while size <= limit:
            chunk = os.read(handle, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise UnusableFile(f"{relative} is larger than {limit} bytes")
        return b"".join(chunks)
    except OSError as error:
        raise UnusableFile(f"{relative}: {error.strerror}") from None
    finally:
        os.close(handle)


def read_scratch(state: BootState, relative: str, limit: int, if_unusable: str) -> bytes | None:
    """A file of the scratch disk, which the booted OS may have replaced by anything; None without it, or
    (with a warning that ends with *if_unusable*, what the boot does without it) when it is unusable."""
    try:
        return read_file(state.scratch, relative, limit)
    except UnusableFile as problem:
        state.warn(f"{problem} on the scratch disk: {if_unusable}")
        return None
