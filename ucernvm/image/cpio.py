"""Deterministic newc cpio archives, the format the kernel unpacks into its initramfs.

Hand-written (about 60 lines) because the archive must be byte-for-byte reproducible: sorted
entries, owner 0:0, one fixed mtime and sequential inode numbers, none of which the cpio or
libarchive tools let a caller pin down together.
"""

from __future__ import annotations

import hashlib
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ucernvm.errors import ConfigError, UcernvmError

_TRAILER = "TRAILER!!!"
_FIELDS = ("ino", "mode", "uid", "gid", "nlink", "mtime", "filesize", "devmajor", "devminor", "rdevmajor",
           "rdevminor", "namesize", "check")
_FIELD_MAX = 0xFFFFFFFF  # newc: every field is 8 hex digits (files end at 4 GiB)
MAX_MTIME = _FIELD_MAX  # 2106-02-07 06:28:15 UTC
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Entry:
    """One file system object of the image: a directory, a file (host path or bytes), a link or a device."""

    path: str  # relative to the image root, no leading slash
    mode: int  # full st_mode: type and permission bits
    component: str  # what it belongs to, for the size report
    source: Path | None = None
    data: bytes | None = None
    target: str = ""  # symlink target
    rdev: tuple[int, int] = (0, 0)

    @classmethod
    def directory(cls, path: str, component: str = "layout", perm: int = 0o755) -> Entry:
        return cls(path, stat.S_IFDIR | perm, component)

    @classmethod
    def file(cls, path: str, source: Path, component: str, perm: int = 0o644) -> Entry:
        return cls(path, stat.S_IFREG | perm, component, source=source)

    @classmethod
    def blob(cls, path: str, data: bytes, component: str, perm: int = 0o644) -> Entry:
        return cls(path, stat.S_IFREG | perm, component, data=data)

    @classmethod
    def symlink(cls, path: str, target: str, component: str = "layout") -> Entry:
        return cls(path, stat.S_IFLNK | 0o777, component, target=target)

    @classmethod
    def chardev(cls, path: str, major: int, minor: int, perm: int = 0o666) -> Entry:
        return cls(path, stat.S_IFCHR | perm, "layout", rdev=(major, minor))

    @property
    def size(self) -> int:
        if stat.S_ISLNK(self.mode):
            return len(self.target.encode())
        if self.data is not None:
            return len(self.data)
        if self.source is not None:
            return self.source.stat().st_size
        return 0

    def same_content(self, other: Entry) -> bool:
        if (self.mode, self.target, self.rdev) != (other.mode, other.target, other.rdev):
            return False
        return self.size == other.size and _digest(self) == _digest(other)


def _digest(entry: Entry) -> bytes:
    if entry.data is not None:
        return hashlib.sha256(entry.data).digest()
    if entry.source is not None:
        return hashlib.sha256(entry.source.read_bytes()).digest()
    return b""


def normalize(entries: Iterable[Entry]) -> list[Entry]:
    """Sorted, with every parent directory present once; the same path twice must mean the same thing."""
    by_path: dict[str, Entry] = {}
    for entry in entries:
        path = entry.path.strip("/")
        entry = entry if path == entry.path else Entry(path, entry.mode, entry.component, entry.source,
                                                        entry.data, entry.target, entry.rdev)
        known = by_path.get(path)
        if known is not None and not known.same_content(entry):
            raise ConfigError(f"two different files for the same place in the image: {_described(path, known.source)} "
                              f"of {known.component} and {_described(path, entry.source)} of {entry.component}",
                              "leave one of them out of the image's inputs (tools.txt, the module list)")
        by_path.setdefault(path, entry)
        parent = path.rpartition("/")[0]
        while parent and parent not in by_path:
            by_path[parent] = Entry.directory(parent)
            parent = parent.rpartition("/")[0]
    return [by_path[path] for path in sorted(by_path)]


def write(entries: Iterable[Entry], out: BinaryIO, mtime: int = 0) -> int:
    """Write a newc archive of the normalized *entries* to *out*; returns the bytes written."""
    written = 0
    for ino, entry in enumerate(normalize(entries), start=1):
        nlink = 2 if stat.S_ISDIR(entry.mode) else 1
        size = entry.size  # one stat: the copy must match what the header says
        written += _header(out, entry.path, ino, entry.mode, nlink, mtime, size, entry.rdev, entry.source)
        if stat.S_ISLNK(entry.mode):
            written += _padded(out, entry.target.encode())
        elif entry.data is not None:
            written += _padded(out, entry.data)
        elif entry.source is not None:
            written += _copy(out, entry, size)
    written += _header(out, _TRAILER, 0, 0, 1, 0, 0, (0, 0))
    return written


def _header(out: BinaryIO, name: str, ino: int, mode: int, nlink: int, mtime: int, size: int,
            rdev: tuple[int, int], source: Path | None = None) -> int:
    encoded = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, nlink, mtime, size, 0, 0, rdev[0], rdev[1], len(encoded), 0)
    for field, value in zip(_FIELDS, fields):
        if not 0 <= value <= _FIELD_MAX:  # a ninth digit would shift every later field
            raise ConfigError(_unfit(name, source, field, value))
    header = b"070701" + b"".join(b"%08X" % value for value in fields)
    return _padded(out, header + encoded)


def _unfit(name: str, source: Path | None, field: str, value: int) -> str:
    """What a header field that cannot hold *value* means to the one building the image."""
    what = _described(name, source)
    if field == "filesize":
        return f"{what} has {value} bytes: an initramfs's cpio (newc) archive holds files under 4 GiB"
    return f"{what}: {field} {value} does not fit a cpio (newc) header (8 hex digits)"


def _described(name: str, source: Path | None) -> str:
    """An entry by its path in the image and, for a host file, on the host."""
    return f"/{name}" + (f" (from {source})" if source is not None else "")


def _padded(out: BinaryIO, data: bytes) -> int:
    out.write(data)
    pad = -len(data) % 4
    out.write(b"\0" * pad)
    return len(data) + pad


def _copy(out: BinaryIO, entry: Entry, size: int) -> int:
    assert entry.source is not None
    copied = 0
    with entry.source.open("rb") as stream:
        while chunk := stream.read(_CHUNK):
            out.write(chunk)
            copied += len(chunk)
    if copied != size:  # the header's size no longer fits: the archive is broken from here on
        raise UcernvmError(f"{_described(entry.path, entry.source)} changed size while being archived: "
                           f"{size} bytes when its header was written, {copied} read",
                           hint="something wrote to it during the build: build again once it is done")
    out.write(b"\0" * (-copied % 4))
    return copied + (-copied % 4)
