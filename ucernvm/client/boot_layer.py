"""The boot layer: the files of a snapshot's prefetch list, copied out of the verified cache into a
plain directory tree beside it, to lie above the FUSE mount in the OS root's overlay.

A warm boot finds every file it reads in the cache, and still asks the mount for each: ~1,100 reads
and ~650 lookups of a Debian boot went through the daemon's interpreter, most of its time in the
boot. With the boot layer as the upper of the overlay's two read-only layers, the kernel finds those
files on the scratch disk's ext4 and the mount serves only the rest (directories, links, files not in
the list). The layer holds nothing the cache does not: each file is built from the objects the
mount verified when it downloaded them, with the catalog's mode, owner and modification time, and
each directory on the way with its own. It is built once per snapshot and list, after the prefetch
of that list completed, in ``<name>.partial`` and renamed to its final name when whole, so a layer
that exists is complete; building a new one removes the others. Snapshots with extended attributes
have none (the layer's files would lack them).
"""

from __future__ import annotations

import os
import shutil
import stat

from ucernvm.client.repository import Repository, normalize_path
from ucernvm.cvmfs.catalog import Chunk, DirectoryEntry
from ucernvm.cvmfs.hashing import sha1
from ucernvm.errors import UcernvmError
from ucernvm.records import NamedTuple

LAYER_PREFIX = "boot-layer-"
_PARTIAL = ".partial"


class ListedFile(NamedTuple):
    """A regular file of the prefetch list, as the prefetch looked it up."""

    path: str
    entry: DirectoryEntry
    chunks: list[Chunk]


def layer_name(root_hash: str, list_path: str) -> str:
    """The layer's directory name: one per snapshot (its root catalog hash) and prefetch list."""
    return LAYER_PREFIX + sha1(f"{root_hash}:{normalize_path(list_path)}".encode()).hexdigest()[:20]


def build_boot_layer(repository: Repository, list_path: str, files: list[ListedFile], directory: str) -> int:
    """Build the layer of ``files`` (those under the list's directory count) in ``directory``; returns the
    number of files in it (0 if it was there already). Raises UcernvmError (or OSError) when a file
    cannot be made: the partial layer is then removed and none is used."""
    name = layer_name(repository.root_hash.hex, list_path)
    base = normalize_path(os.path.dirname(normalize_path(list_path)))
    for old in os.listdir(directory):
        if old.startswith(LAYER_PREFIX) and old != name:
            shutil.rmtree(os.path.join(directory, old), ignore_errors=True)
    final, partial = os.path.join(directory, name), os.path.join(directory, name + _PARTIAL)
    if _is_layer(final):
        return 0
    if os.path.lexists(final):
        os.unlink(final)  # not a layer of ours: the rename below replaces no link or file
    shutil.rmtree(partial, ignore_errors=True)
    os.mkdir(partial, 0o700)
    try:
        laid_out = _LayerWriter(repository, base, partial).write(files)
        os.rename(partial, final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return laid_out


def find_boot_layer(directory: str, root_hash: str, list_path: str) -> str | None:
    """The complete layer of this snapshot and list in ``directory``, if there is one."""
    path = os.path.join(directory, layer_name(root_hash, list_path))
    return path if _is_layer(path) else None


def _is_layer(path: str) -> bool:
    """Whether ``path`` is a directory, not a link to one: the scratch disk is the OS's to write, and a link
    would lay any tree of the loader's (its own root) above the snapshot.

    What a layer holds is trusted as the cache's objects are, by name: it was copied from verified objects,
    and checking it again would read the whole list (84 MB for the Debian appliance) at every boot. Whoever
    could change it can as well write the writable layer above it."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


class _LayerWriter:
    def __init__(self, repository: Repository, base: str, target: str) -> None:
        self.repository, self.base, self.target = repository, base, target
        self.directories: set[str] = set()  # relative to the base, "" for the base itself

    def write(self, files: list[ListedFile]) -> int:
        laid_out = 0
        prefix = self.base + "/" if self.base else "/"
        for file in files:
            if not file.path.startswith(prefix) or file.entry.xattrs:
                continue
            relative = file.path[len(prefix):]
            self._directory(os.path.dirname(relative))
            self._file(file, relative)
            laid_out += 1
        # Last, and each directory after those in it (reverse order puts "a/b" before "a", "a" before ""):
        # writing into a directory changes its modification time.
        for relative in sorted(self.directories, reverse=True):
            entry = self.repository.lookup(self.base + ("/" + relative if relative else ""))
            if entry is None or not entry.is_directory:
                raise UcernvmError(f"{relative or '/'}: no longer a directory of the snapshot")
            _set_attributes(os.path.join(self.target, relative), entry)
        return laid_out

    def _directory(self, relative: str) -> None:
        if relative in self.directories:
            return
        if relative:
            self._directory(os.path.dirname(relative))
            os.mkdir(os.path.join(self.target, relative), 0o700)
        self.directories.add(relative)

    def _file(self, file: ListedFile, relative: str) -> None:
        entry = file.entry
        fd = os.open(os.path.join(self.target, relative), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            written = 0
            for chunk in file.chunks:
                source = self.repository.open_chunk(entry, chunk)
                try:
                    written += _copy(source, fd, chunk.size)
                finally:
                    os.close(source)
            if written != entry.size:
                raise UcernvmError(f"{file.path}: cached objects hold {written} bytes, the catalog says {entry.size}")
            _set_attributes(fd, entry)
        finally:
            os.close(fd)


def _copy(source: int, target: int, size: int) -> int:
    """Copy ``size`` bytes inside the kernel (no reflink on ext4, but no trip through the interpreter)."""
    copied = 0
    while copied < size:
        count = os.copy_file_range(source, target, size - copied)
        if count == 0:
            break  # the cached object is shorter than its chunk: the caller's size check says so
        copied += count
    return copied


def _set_attributes(target: int | str, entry: DirectoryEntry) -> None:
    """The catalog's owner, mode and modification time (chown first: it clears set-user-ID bits)."""
    os.chown(target, entry.uid, entry.gid)
    os.chmod(target, stat.S_IMODE(entry.mode))
    mtime = entry.mtime * 1_000_000_000 + entry.mtime_ns
    os.utime(target, ns=(mtime, mtime))
