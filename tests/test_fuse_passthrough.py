"""`ucernvm mount --passthrough`: the kernel reads files stored whole from the cache itself (Linux 6.9+).

Real mounts of a published tree served over HTTP; the daemon's statistics say which reads reached it.
Where the kernel does not offer passthrough the tests that need it skip, saying so.
"""

from __future__ import annotations

import mmap
import os
import subprocess
from pathlib import Path

import pytest

from helpers import daemon_statistics, fuse_unusable, snapshot_tree
from test_mount import Mounts, mounts, published  # noqa: F401 (fixtures)
from test_publish import FQRN

pytestmark = pytest.mark.skipif(fuse_unusable() is not None, reason=str(fuse_unusable()))

WHOLE_FILES = ("etc/hostname", "etc/hard_a", "bin/hello", "data/sub/deep/leaf", "data/sub/file")


def mount_with_passthrough(mounts: Mounts, server, keys: Path, cache: Path) -> Path:  # type: ignore[no-untyped-def]
    point, _ = mounts.mount(f"{server.url}/cvmfs/{FQRN}", keys, cache, "--passthrough")
    status = daemon_statistics(point, cache)["passthrough"]["status"]
    if status == "not offered by the kernel":
        pytest.skip(f"this kernel ({os.uname().release}) does not offer FUSE passthrough (Linux 6.9+)")
    return point


def test_files_stored_whole_are_read_by_the_kernel_without_the_daemon(published, mounts, keys_dir, tmp_path) -> None:
    source, _, server = published
    cache = tmp_path / "cache"
    point = mount_with_passthrough(mounts, server, keys_dir, cache)
    assert daemon_statistics(point, cache)["passthrough"]["status"] == "on"
    for name in WHOLE_FILES:
        assert (point / name).read_bytes() == (source / name).read_bytes()
    statistics = daemon_statistics(point, cache)
    assert statistics["passthrough"]["opens"] == len(WHOLE_FILES)
    assert statistics["requests"].get("read", 0) == 0  # every byte came from the cached objects, in the kernel
    # A chunked file has no single backing file: its reads come to the daemon, as without passthrough.
    assert (point / "data" / "big.bin").read_bytes() == (source / "data" / "big.bin").read_bytes()
    assert daemon_statistics(point, cache)["requests"]["read"] > 0
    assert snapshot_tree(point) == snapshot_tree(source)  # and the whole tree reads back exactly


def test_an_inode_open_twice_shares_its_backing_file_and_maps_it(published, mounts, keys_dir, tmp_path) -> None:
    """The kernel allows one backing file per inode while it is open: every open of it names the same
    one (a second registration would fail the open with EIO), and it is given back once all are closed."""
    source, _, server = published
    cache = tmp_path / "cache"
    point = mount_with_passthrough(mounts, server, keys_dir, cache)
    expected = (source / "data/sub/deep/leaf").read_bytes()
    hard_links = [point / "etc" / f"hard_{name}" for name in "abc"]  # one inode, three names
    with open(point / "data/sub/deep/leaf", "rb") as first, open(point / "data/sub/deep/leaf", "rb") as second:
        assert first.read() == expected
        with mmap.mmap(second.fileno(), 0, prot=mmap.PROT_READ) as mapped:
            assert mapped[:] == expected
        files = [open(path, "rb") for path in hard_links]
        try:
            assert {file.read() for file in files} == {b"shared inode\n"}
        finally:
            for file in files:
                file.close()
    for _ in range(3):  # closed and opened again: a new backing file each time
        assert (point / "data/sub/deep/leaf").read_bytes() == expected
    statistics = daemon_statistics(point, cache)
    assert statistics["passthrough"]["opens"] == 2 + 3 + 3
    assert statistics["requests"].get("read", 0) == 0


def test_a_cache_on_a_stacked_file_system_falls_back_to_reads_by_the_daemon(published, mounts, keys_dir,
                                                                          tmp_path) -> None:
    """The kernel refuses backing files on overlayfs (stacking depth): the mount says so once and serves
    every read itself, with the same bytes, and opens are free again."""
    source, _, server = published
    layers = {name: tmp_path / name for name in ("lower", "upper", "work", "merged")}
    for directory in layers.values():
        directory.mkdir()
    options = f"lowerdir={layers['lower']},upperdir={layers['upper']},workdir={layers['work']}"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(layers["merged"])], check=True)
    try:
        cache = layers["merged"] / "cache"
        point = mount_with_passthrough(mounts, server, keys_dir, cache)
        assert (point / "etc/hostname").read_bytes() == (source / "etc/hostname").read_bytes()
        statistics = daemon_statistics(point, cache)
        assert statistics["passthrough"] == {"status": "refused by the kernel: Too many levels of symbolic links",
                                             "opens": 0}
        assert snapshot_tree(point) == snapshot_tree(source)
        opened = daemon_statistics(point, cache)["requests"]["open"]
        for name in WHOLE_FILES:
            assert (point / name).read_bytes() == (source / name).read_bytes()
        requests = daemon_statistics(point, cache)["requests"]
        assert requests["open"] == opened and requests["read"] > 0  # zero-message opens; reads by the daemon
        assert (cache / "mount.log").read_text().count("passthrough refused by the kernel") == 1
    finally:
        mounts.unmount_all()
        subprocess.run(["umount", "-l", str(layers["merged"])], capture_output=True)


def test_without_the_option_the_daemon_serves_every_read(published, mounts, keys_dir, tmp_path) -> None:
    source, _, server = published
    cache = tmp_path / "cache"
    point, _ = mounts.mount(f"{server.url}/cvmfs/{FQRN}", keys_dir, cache)
    for name in WHOLE_FILES:
        assert (point / name).read_bytes() == (source / name).read_bytes()
    statistics = daemon_statistics(point, cache)
    assert statistics["passthrough"] == {"status": "off", "opens": 0}
    assert statistics["requests"]["read"] >= len(WHOLE_FILES) and statistics["requests"].get("open", 0) <= 1
