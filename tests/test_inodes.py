"""Inode numbers of a mounted snapshot: one per entry for the mount's life, whichever way the kernel
meets it first, shared by hard links, and a node made only for the numbers the kernel uses."""

from __future__ import annotations

import errno
import stat
from pathlib import Path

import pytest

from test_listing_ahead import filesystem_of_tree
from ucernvm.client.filesystem import DOTS
from ucernvm.client.fuse.operations import ROOT_INO


def listed(filesystem, ino: int) -> dict[bytes, int]:  # type: ignore[no-untyped-def]
    """The entries of a listing after "." and ".."."""
    return {entry.name: entry.attributes.ino for entry in filesystem.readdir(filesystem.opendir(ino), 0)[DOTS:]}


def test_a_listing_starts_with_the_directory_and_its_parent(tmp_path: Path, keys_dir: Path) -> None:
    filesystem, _ = filesystem_of_tree(tmp_path, keys_dir)
    try:
        etc = filesystem.lookup(ROOT_INO, b"etc").ino
        for directory, parent in ((ROOT_INO, ROOT_INO), (etc, ROOT_INO)):
            dot, dotdot, first = filesystem.readdir(filesystem.opendir(directory), 0)[:3]
            assert (dot.name, dot.attributes.ino, dot.next_offset) == (b".", directory, 1)
            assert (dotdot.name, dotdot.attributes.ino, dotdot.next_offset) == (b"..", parent, 2)
            assert first.next_offset == 3 and first.name not in (b".", b"..")
            assert filesystem.readdir(filesystem.opendir(directory), 2)[0] == first  # the offset after ".."
    finally:
        filesystem.destroy()


def test_an_entry_has_one_inode_whether_looked_up_or_listed_first(tmp_path: Path, keys_dir: Path) -> None:
    filesystem, _ = filesystem_of_tree(tmp_path, keys_dir)
    try:
        etc = filesystem.lookup(ROOT_INO, b"etc").ino
        looked_up = {name: filesystem.lookup(etc, name).ino for name in (b"hostname", b"hard_c", b"hard_a", b"motd")}
        in_listing = listed(filesystem, etc)
        assert {name: in_listing[name] for name in looked_up} == looked_up
        data = filesystem.lookup(ROOT_INO, b"data").ino
        in_listing = listed(filesystem, data)  # listed before any lookup in it
        assert {name: filesystem.lookup(data, name).ino for name in in_listing} == in_listing
        assert listed(filesystem, etc) == listed(filesystem, etc)
        assert len(set(listed(filesystem, etc).values()) | set(in_listing.values())) == 6 + len(in_listing)
    finally:
        filesystem.destroy()


def test_hard_links_share_an_inode_and_their_own_numbers_stay_unused(tmp_path: Path, keys_dir: Path) -> None:
    filesystem, _ = filesystem_of_tree(tmp_path, keys_dir)
    try:
        etc = filesystem.lookup(ROOT_INO, b"etc").ino
        inodes = listed(filesystem, etc)
        shared = {inodes[b"hard_a"], inodes[b"hard_b"], inodes[b"hard_c"]}
        assert len(shared) == 1 and filesystem.getattr(shared.pop()).nlink == 3
        # Listed in name order, hard_b and hard_c had the two numbers after hard_a's: nobody has them.
        for unused in (inodes[b"hard_a"] + 1, inodes[b"hard_a"] + 2, max(inodes.values()) + 10**6, 0):
            with pytest.raises(OSError) as stale:
                filesystem.getattr(unused)
            assert stale.value.errno == errno.ESTALE
    finally:
        filesystem.destroy()


def test_an_inode_from_a_listing_serves_without_a_lookup(tmp_path: Path, keys_dir: Path) -> None:
    """The kernel uses the numbers a READDIRPLUS gave it directly: the node is made at that first use."""
    filesystem, _ = filesystem_of_tree(tmp_path, keys_dir)
    try:
        etc = listed(filesystem, ROOT_INO)[b"etc"]
        inodes = listed(filesystem, etc)
        assert filesystem.readlink(inodes[b"motd"]) == b"hostname"
        hostname = filesystem.getattr(inodes[b"hostname"])
        assert stat.S_ISREG(hostname.mode) and hostname.size == len(b"cernvm\n")
        assert filesystem.getxattr(inodes[b"hostname"], b"user.origin") == b"test suite"
        sub = listed(filesystem, listed(filesystem, ROOT_INO)[b"data"])[b"sub"]
        assert b"file" in listed(filesystem, sub)  # a nested catalog's directory, by its listed number
    finally:
        filesystem.destroy()
