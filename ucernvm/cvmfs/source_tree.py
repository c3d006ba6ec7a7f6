"""Scanning the directory tree that is about to be published."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field

from ucernvm.cvmfs.catalog import join
from ucernvm.errors import ConfigError

CATALOG_MARKER = ".cvmfscatalog"


@dataclass(eq=False)
class SourceNode:
    """One file system object of the source tree, with its catalog path (``""`` is the root)."""

    name: str
    path: str
    fs_path: str
    st: os.stat_result
    symlink: str = ""
    xattrs: dict[str, bytes] = field(default_factory=dict)
    children: list[SourceNode] = field(default_factory=list)
    is_catalog_root: bool = False

    @property
    def is_directory(self) -> bool:
        return stat.S_ISDIR(self.st.st_mode)

    @property
    def is_regular(self) -> bool:
        return stat.S_ISREG(self.st.st_mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.st.st_mode)

    @property
    def mtime(self) -> tuple[int, int]:
        """Seconds and nanoseconds, as the catalog's ``mtime`` and ``mtimens`` hold them: from the exact
        ``st_mtime_ns`` (the float ``st_mtime`` rounds a time just before a second up to it, and truncates
        one before 1970 towards zero)."""
        seconds, nanoseconds = divmod(self.st.st_mtime_ns, 1_000_000_000)
        return seconds, nanoseconds

    @property
    def inode_key(self) -> tuple[int, int]:
        return self.st.st_dev, self.st.st_ino


def read_xattrs(fs_path: str) -> dict[str, bytes]:
    """The extended attributes of ``fs_path``, all of them: what a catalog entry cannot hold is left out,
    with a warning, when the tree is published (publisher.py ``_trim_xattrs``)."""
    try:
        names = os.listxattr(fs_path, follow_symlinks=False)
    except OSError:
        return {}  # the file system has no extended attributes
    values = {}
    for name in names:
        try:
            values[name] = os.getxattr(fs_path, name, follow_symlinks=False)
        except OSError:
            continue  # vanished or unreadable attribute: publish what can be read
    return values


def scan(root: str, include_xattrs: bool = True) -> SourceNode:
    """The whole tree below ``root``, children sorted by name; symlinks are never followed."""
    st = _stat(root, "the source", stat.S_ISDIR, "a directory", follow_symlinks=False)
    node = SourceNode("", "", root, st, xattrs=read_xattrs(root) if include_xattrs else {}, is_catalog_root=True)
    _scan_children(node, include_xattrs)
    return node


def add_root_file(tree: SourceNode, name: str, local_path: str) -> None:
    """Put the file ``local_path`` into the published tree as ``/name``, replacing whatever the source has
    there: owned by root, mode 0644, with its own content and modification time."""
    st = _stat(local_path, "the file", stat.S_ISREG, "a regular file", follow_symlinks=True)
    fields = list(st)
    fields[0], fields[3], fields[4], fields[5] = stat.S_IFREG | 0o644, 1, 0, 0  # mode, links, owner, group
    st = os.stat_result(fields, {"st_mtime": st.st_mtime, "st_mtime_ns": st.st_mtime_ns, "st_rdev": 0})
    children = [child for child in tree.children if child.name != name]
    children.append(SourceNode(name, join(tree.path, name), local_path, st))
    tree.children = sorted(children, key=lambda child: os.fsencode(child.name))


def add_catalog_marker(directory: SourceNode, mtime_ns: int) -> None:
    """Make ``directory`` a nested catalog as ``cvmfs_server`` does for a directory its dirtab selects: it
    creates an empty ``.cvmfscatalog`` there (the publishing user's, mode 0644), unless one is there, and the
    published tree holds it. Here it goes into the published tree only; the source is left as it is."""
    if any(child.name == CATALOG_MARKER for child in directory.children):
        return
    fields = [stat.S_IFREG | 0o644, 0, 0, 1, os.getuid(), os.getgid(), 0, 0, 0, 0]
    seconds = mtime_ns / 1e9
    st = os.stat_result(fields, {"st_mtime": seconds, "st_mtime_ns": mtime_ns, "st_rdev": 0})
    # An empty file to read: /dev/null reads as one. Its inode key (0, 0) is shared by every marker, so the
    # empty content is stored once.
    directory.children.append(SourceNode(CATALOG_MARKER, join(directory.path, CATALOG_MARKER), os.devnull, st))
    directory.children.sort(key=lambda child: os.fsencode(child.name))
    directory.is_catalog_root = True


def _stat(path: str, role: str, is_kind: Callable[[int], bool], kind: str, follow_symlinks: bool) -> os.stat_result:
    """``path``'s status; a ConfigError naming it by its ``role`` when it cannot be read or is not ``kind``."""
    try:
        st = os.stat(path, follow_symlinks=follow_symlinks)
    except OSError as error:
        raise ConfigError(f"cannot read {role} {path}: {error.strerror}") from None
    if not is_kind(st.st_mode):
        raise ConfigError(f"{role} {path} is not {kind}")
    return st


def _scan_children(directory: SourceNode, include_xattrs: bool) -> None:
    try:
        with os.scandir(directory.fs_path) as iterator:
            items = sorted(iterator, key=lambda item: os.fsencode(item.name))
    except OSError as error:
        raise ConfigError(f"cannot list {directory.fs_path}: {error.strerror}") from None
    for item in items:
        try:
            st = item.stat(follow_symlinks=False)
            target = os.readlink(item.path) if stat.S_ISLNK(st.st_mode) else ""
        except OSError as error:
            raise ConfigError(f"cannot read {item.path}: {error.strerror}") from None
        child = SourceNode(
            item.name,
            join(directory.path, item.name),
            item.path,
            st,
            symlink=target,
            xattrs=read_xattrs(item.path) if include_xattrs else {},
        )
        directory.children.append(child)
        if child.is_directory:
            _scan_children(child, include_xattrs)
            child.is_catalog_root = any(c.name == CATALOG_MARKER and c.is_regular for c in child.children)
