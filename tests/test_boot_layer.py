"""The boot layer (client/boot_layer.py): a prefetch list's files, fetched over real HTTP and verified,
laid out on disk with the catalog's attributes; never from a failed prefetch; and, under a real
overlay above a real FUSE mount, read back exactly as the mount alone serves them."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from faults import Fault, FaultServer
from helpers import fuse_unusable, run_cli
from test_prefetch import offline, open_over_http
from test_publish import FQRN, make_tree, publish
from ucernvm.client.boot_layer import LAYER_PREFIX, find_boot_layer, layer_name
from ucernvm.client.prefetch import PREFETCH_LIST, Prefetcher
from ucernvm.client.repository import Repository
from ucernvm.server import StratumServer

IN_LAYER = ("/etc/hard_a", "/bin/hello", "/data/big.bin", "/data/sub/deep/leaf")  # plain, 0755, chunked, nested
NOT_IN_LAYER = ("/etc/hostname", "/etc/motd", "/no/such/file", "/data")  # xattrs, a symlink, missing, a directory
LIST = "/" + PREFETCH_LIST


@pytest.fixture
def stratum(tmp_path: Path, keys_dir: Path) -> Path:
    source = tmp_path / "src"
    make_tree(source)
    os.unlink(source / "etc" / "variant")
    (source / PREFETCH_LIST).write_text("".join(f"{path}\n" for path in (*IN_LAYER, *NOT_IN_LAYER)))
    publish(source, tmp_path / "stratum" / FQRN, keys_dir)
    return tmp_path / "stratum"


def prefetch(repository: Repository) -> Prefetcher:
    prefetcher = Prefetcher(repository, LIST, boot_layer=True)
    prefetcher.start()
    assert prefetcher.wait(timeout=60)
    return prefetcher


def test_the_layer_holds_the_listed_files_with_the_catalogs_attributes(stratum: Path, keys_dir: Path,
                                                                       tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with StratumServer(stratum) as server:
        repository = open_over_http(server.url, keys_dir, cache)
        prefetcher = prefetch(repository)
    assert prefetcher.statistics()["layer"]["files"] == len(IN_LAYER)
    layer = find_boot_layer(str(cache), repository.root_hash.hex, LIST)
    assert layer is not None
    files = sorted("/" + os.path.relpath(os.path.join(d, f), layer) for d, _, names in os.walk(layer) for f in names)
    assert files == sorted(IN_LAYER)  # no file with xattrs, no link, nothing unlisted
    for path in IN_LAYER:
        entry, laid_out = repository.entry(path), os.lstat(layer + path)
        assert Path(layer + path).read_bytes() == (stratum.parent / "src" / path.lstrip("/")).read_bytes()
        assert (laid_out.st_mode, laid_out.st_uid, laid_out.st_gid) == (entry.mode, entry.uid, entry.gid)
        assert laid_out.st_mtime_ns == entry.mtime * 1_000_000_000 + entry.mtime_ns
    for directory in ("", "/data", "/data/sub", "/data/sub/deep", "/etc", "/bin"):
        entry, laid_out = repository.entry(directory), os.lstat(layer + directory)
        assert stat.S_ISDIR(laid_out.st_mode) and laid_out.st_mode == entry.mode, directory
        assert laid_out.st_mtime_ns == entry.mtime * 1_000_000_000 + entry.mtime_ns, directory


def test_no_layer_from_a_failed_prefetch_and_old_layers_go(stratum: Path, keys_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / f"{LAYER_PREFIX}old-snapshot").mkdir()
    with FaultServer(stratum) as server:
        repository = open_over_http(server.url, keys_dir, cache)
        leaf = repository.entry("/data/sub/deep/leaf").content_hash.hex
        server.inject(f"/data/{leaf[:2]}/{leaf[2:]}", Fault.corrupt())
        assert prefetch(repository).failed == 1
        assert find_boot_layer(str(cache), repository.root_hash.hex, LIST) is None
        (cache / (layer_name(repository.root_hash.hex, LIST) + ".partial")).mkdir()  # as if a build was cut off
        server.clear()
        prefetcher = prefetch(open_over_http(server.url, keys_dir, cache))
    assert prefetcher.statistics()["layer"]["files"] == len(IN_LAYER)
    assert [path.name for path in cache.glob(f"{LAYER_PREFIX}*")] == [layer_name(repository.root_hash.hex, LIST)]


@pytest.mark.skipif(fuse_unusable() is not None, reason=str(fuse_unusable()))
def test_an_overlay_with_the_layer_reads_as_the_mount_alone(stratum: Path, keys_dir: Path, tmp_path: Path) -> None:
    cache, point, root = tmp_path / "cache", tmp_path / "mnt", tmp_path / "root"
    for directory in (point, root, tmp_path / "upper", tmp_path / "work"):
        directory.mkdir()
    with StratumServer(stratum) as server:
        prefetch(open_over_http(server.url, keys_dir, cache))
        layer = find_boot_layer(str(cache), offline(keys_dir, cache).root_hash.hex, LIST)
        run_cli("mount", f"{server.url}/cvmfs/{FQRN}", point, "--name", FQRN, "--key", keys_dir, "--cache", cache,
                check=True)
        try:
            options = f"lowerdir={layer}:{point},upperdir={tmp_path / 'upper'},workdir={tmp_path / 'work'}"
            mounted = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(root)], capture_output=True)
            if mounted.returncode != 0:
                pytest.skip(f"overlayfs cannot be mounted here: {mounted.stderr.decode().strip()}")
            try:
                assert _tree(root) == _tree(point)
            finally:
                subprocess.run(["umount", str(root)], check=True)
        finally:
            run_cli("umount", point)


def _tree(top: Path) -> dict[str, tuple]:
    """Every entry below ``top``: kind, mode, owner, mtime, size, and the bytes or link target."""
    entries: dict[str, tuple] = {}
    for directory, names, files in os.walk(top):
        for name in names + files:
            path = os.path.join(directory, name)
            info = os.lstat(path)
            if stat.S_ISREG(info.st_mode):
                content: bytes | str = Path(path).read_bytes()
            elif stat.S_ISLNK(info.st_mode):
                content = os.readlink(path)
            else:
                content = b""
            entries[os.path.relpath(path, top)] = (info.st_mode, info.st_uid, info.st_gid, info.st_mtime_ns,
                                                   info.st_size if not stat.S_ISDIR(info.st_mode) else 0, content)
    return entries


def test_a_link_in_the_place_of_the_layer_is_no_layer_and_is_replaced(stratum: Path, keys_dir: Path,
                                                                      tmp_path: Path) -> None:
    """The scratch disk is the OS's to write: a link by the layer's name would lay another tree (the loader's own
    root, say) above the snapshot."""
    cache, elsewhere = tmp_path / "cache", tmp_path / "elsewhere"
    (elsewhere / "bin").mkdir(parents=True)
    (elsewhere / "bin" / "hello").write_text("not the snapshot's\n")
    with StratumServer(stratum) as server:
        repository = open_over_http(server.url, keys_dir, cache)
        planted = cache / layer_name(repository.root_hash.hex, LIST)
        planted.symlink_to(elsewhere)
        assert find_boot_layer(str(cache), repository.root_hash.hex, LIST) is None
        assert prefetch(repository).statistics()["layer"]["files"] == len(IN_LAYER)
    layer = find_boot_layer(str(cache), repository.root_hash.hex, LIST)
    assert layer is not None and not planted.is_symlink()
    assert Path(layer, "bin", "hello").read_bytes() == (stratum.parent / "src" / "bin" / "hello").read_bytes()
    assert (elsewhere / "bin" / "hello").read_text() == "not the snapshot's\n"
