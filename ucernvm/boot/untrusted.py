"""Reading a file that whoever wrote it may have replaced by anything: a context medium, or the scratch
disk, which the booted OS writes and a later boot reads back. A symbolic link anywhere on the path is
refused (it would pull in a file of the booting system), and only a small regular file is read: a FIFO
would block PID 1, a huge file (or a device) would fill its memory. The boot's directories on the scratch
disk are made without going through a link either (``scratch_directory``).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from ucernvm.boot.system import MakeDirs, RemoveFile

if TYPE_CHECKING:
    from ucernvm.boot.system import Action
    from ucernvm.boot.state import BootState


class UnusableFile(Exception):
    """A file that exists but is not a small regular file."""


def read_file(root: Path | str, relative: str, limit: int) -> bytes | None:
    """The bytes of ``root/relative``; None when absent. Raises ``UnusableFile`` for a symbolic link
    anywhere on the path, a non-regular file, a read error or more than ``limit`` bytes."""
    parts = [part for part in relative.split("/") if part]
    if not parts:
        raise UnusableFile(f"{relative or '.'} is not a regular file")  # but the root directory
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


def not_a_directory(mode: int) -> str:
    """What stands where a directory belongs, for a warning: a link (the case that matters) or anything else."""
    return "a symbolic link" if stat.S_ISLNK(mode) else "not a directory"


def scratch_directory(state: BootState, relative: str, what: str, root: Path | None = None) -> bool:
    """Make the directory ``relative`` on the scratch disk (or in the OS's *root*, whose writable layer lies
    there), never through what the OS left in place of one of its directories: a symbolic link (µCernVM's
    mkdir -p followed it, and the boot's files went into the loader's own tree or onto another mount), or
    any other file, is removed with a warning naming it. (The OS is not running: what is checked here stays
    so.) As ``do_or_warn``, a failing disk is a warning naming *what*; whether the directory is there."""
    base = root or state.scratch
    where = "on the scratch disk" if root is None else "in the OS's root"
    path = base
    actions: list[Action] = []
    for part in relative.split("/"):
        path = path / part
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError:
            break  # and nothing below it
        except OSError as error:
            state.warn(f"{what} not written: {error.strerror or error}")
            return False
        if not stat.S_ISDIR(mode):
            state.warn(f"{path.relative_to(base)} {where} is {not_a_directory(mode)}: "
                       "removed, not followed, and made a directory")
            actions.append(RemoveFile(str(path)))
            break
    return state.do_or_warn(what, *actions, MakeDirs(str(base / relative)))


def in_os_root(state: BootState, path: Path, what: str) -> bool:
    """Whether ``path``, to be written, lies in the OS's root once its links are followed: they are the OS's,
    on the scratch disk, and resolve here in the loader's tree (an absolute one above all), not the OS's.
    Where it does not, a warning naming *what*, which the OS does without."""
    root = os.path.realpath(state.new_root)
    if os.path.realpath(path).startswith(root + os.sep):
        return True
    state.warn(f"{what} not written: a symbolic link in the OS's root on the way to "
               f"/{path.relative_to(state.new_root)} leads out of it")
    return False
