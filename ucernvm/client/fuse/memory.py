"""A read-only tree held in memory, served through ``Operations``: tests and benchmarks mount it.

Built with ``mkdir``/``add_file``/``symlink``/``link``, then served unchanged. File contents are
bytes in memory or a range of a local file read with ``os.pread``.
"""

from __future__ import annotations

import errno
import os
import stat

from ucernvm.client.fuse.operations import ROOT_INO, Attributes, DirEntry, FsStats, Operations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence


class _Node:
    __slots__ = ("attributes", "children", "data", "target", "xattrs")

    def __init__(self, attributes: Attributes) -> None:
        self.attributes = attributes
        self.children: dict[bytes, int] | None = None  # directories: name -> ino, in insertion order
        self.data: bytes | tuple[int, int] = b""  # files: the bytes, or (fd, length) of a local file
        self.target = b""  # symlinks
        self.xattrs: dict[bytes, bytes] = {}


class MemoryTree(Operations):
    def __init__(self, mtime_ns: int = 0) -> None:
        self._mtime_ns = mtime_ns
        root = _Node(Attributes(ROOT_INO, stat.S_IFDIR | 0o755, nlink=2, mtime_ns=mtime_ns))
        root.children = {}
        self._nodes: dict[int, _Node] = {ROOT_INO: root}
        self._listings: dict[int, list[DirEntry]] = {}  # built on first listing; the tree is frozen by then
        self._files: list[int] = []  # local files opened for (fd, length) contents

    # --- building -----------------------------------------------------------------------------

    def _add(self, parent: int, name: bytes, mode: int, size: int = 0) -> _Node:
        siblings = self._nodes[parent].children
        if siblings is None or name in siblings or not name or b"/" in name:
            raise ValueError(f"cannot add {name!r} under inode {parent}")
        ino = len(self._nodes) + 1
        node = _Node(Attributes(ino, mode, size=size, mtime_ns=self._mtime_ns))
        self._nodes[ino] = node
        siblings[name] = ino
        return node

    def mkdir(self, parent: int, name: bytes, mode: int = 0o755) -> int:
        node = self._add(parent, name, stat.S_IFDIR | mode)
        node.children = {}
        node.attributes = node.attributes._replace(nlink=2)
        parent_node = self._nodes[parent]
        parent_node.attributes = parent_node.attributes._replace(nlink=parent_node.attributes.nlink + 1)
        return node.attributes.ino

    def add_file(self, parent: int, name: bytes, data: bytes, mode: int = 0o644) -> int:
        node = self._add(parent, name, stat.S_IFREG | mode, len(data))
        node.data = data
        return node.attributes.ino

    def add_local_file(self, parent: int, name: bytes, path: str, mode: int = 0o644) -> int:
        """A file whose contents are read from ``path`` on each read (kept open until ``close``)."""
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self._files.append(fd)
        length = os.fstat(fd).st_size
        node = self._add(parent, name, stat.S_IFREG | mode, length)
        node.data = (fd, length)
        return node.attributes.ino

    def symlink(self, parent: int, name: bytes, target: bytes) -> int:
        node = self._add(parent, name, stat.S_IFLNK | 0o777, len(target))
        node.target = target
        return node.attributes.ino

    def link(self, parent: int, name: bytes, ino: int) -> None:
        """A second name for the file ``ino`` (a hard link)."""
        siblings = self._nodes[parent].children
        node = self._nodes[ino]
        if siblings is None or name in siblings or stat.S_ISDIR(node.attributes.mode):
            raise ValueError(f"cannot link {name!r} under inode {parent}")
        siblings[name] = ino
        node.attributes = node.attributes._replace(nlink=node.attributes.nlink + 1)

    def set_xattr(self, ino: int, name: bytes, value: bytes) -> None:
        self._nodes[ino].xattrs[name] = value

    def close(self) -> None:
        for fd in self._files:
            os.close(fd)
        self._files.clear()

    # --- Operations ---------------------------------------------------------------------------

    def _node(self, ino: int) -> _Node:
        try:
            return self._nodes[ino]
        except KeyError:
            raise OSError(errno.ENOENT, "no such inode") from None

    def lookup(self, parent_ino: int, name: bytes) -> Attributes:
        children = self._node(parent_ino).children
        if children is None:
            raise OSError(errno.ENOTDIR, "not a directory")
        try:
            return self._nodes[children[name]].attributes
        except KeyError:
            raise OSError(errno.ENOENT, "no such entry") from None

    def getattr(self, ino: int) -> Attributes:
        return self._node(ino).attributes

    def readlink(self, ino: int) -> bytes:
        node = self._node(ino)
        if not stat.S_ISLNK(node.attributes.mode):
            raise OSError(errno.EINVAL, "not a symlink")
        return node.target

    def open(self, ino: int, flags: int) -> _Node:
        node = self._node(ino)
        if not stat.S_ISREG(node.attributes.mode):
            raise OSError(errno.EISDIR if node.children is not None else errno.EINVAL, "not a file")
        return node

    def read(self, handle: _Node, offset: int, size: int) -> bytes | memoryview:
        data = handle.data
        if isinstance(data, tuple):
            fd, length = data
            return os.pread(fd, max(0, min(size, length - offset)), offset)
        return memoryview(data)[offset : offset + size]

    def read_spans(self, handle: _Node, offset: int, size: int) -> list[tuple[int, int, int]] | None:
        data = handle.data
        if not isinstance(data, tuple):
            return None  # bytes in memory: read() hands them over as they are
        fd, length = data
        wanted = min(size, length - offset)
        return [(fd, offset, wanted)] if wanted > 0 else []

    def opendir(self, ino: int) -> list[DirEntry]:
        listing = self._listings.get(ino)
        if listing is None:
            children = self._node(ino).children
            if children is None:
                raise OSError(errno.ENOTDIR, "not a directory")
            nodes = self._nodes
            listing = [DirEntry(name, nodes[child].attributes, index + 1) for index, (name, child) in enumerate(children.items())]
            self._listings[ino] = listing
        return listing

    def readdir(self, handle: list[DirEntry], offset: int) -> Iterator[DirEntry]:
        return iter(handle[offset:])

    def getxattr(self, ino: int, name: bytes) -> bytes:
        try:
            return self._node(ino).xattrs[name]
        except KeyError:
            raise OSError(errno.ENODATA, "no such attribute") from None

    def listxattr(self, ino: int) -> Sequence[bytes]:
        return list(self._node(ino).xattrs)

    def statfs(self) -> FsStats:
        size = sum(node.attributes.size for node in self._nodes.values())
        return FsStats(blocks=(size + 4095) // 4096, files=len(self._nodes))
