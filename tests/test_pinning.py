"""Pinned files (`ucernvm mount --pin`, the boot's .ucernvm_pinfiles): a real mount with a cache far smaller
than what is read, then every server gone: the pinned files still read back, an unpinned one does not."""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import daemon_statistics, fuse_unusable, run_cli
from test_mount import Mounts, mounts  # noqa: F401 (fixture)
from test_publish import FQRN, make_tree, open_repo, publish
from ucernvm.client.pinning import PIN_LIST, Pinner
from ucernvm.server import StratumServer

PINNED = {"bin/hello": "bin/hello", "etc/motd": "etc/hostname", "lib/hello-link": "bin/hello",
          "data/sub/deep/leaf": "data/sub/deep/leaf"}  # a path of the list -> the file it names


@pytest.fixture
def published(tmp_path: Path, keys_dir: Path) -> Iterator[tuple[Path, Path, StratumServer]]:
    source = tmp_path / "src"
    make_tree(source)
    os.unlink(source / "etc" / "variant")
    (source / "lib").mkdir()
    (source / "lib" / "hello-link").symlink_to("/bin/../bin/hello")  # absolute: from the OS root
    (source / "opt" / "x86_64").mkdir(parents=True)
    (source / "opt" / "x86_64" / "tool").write_text("x86_64\n")
    (source / "lib" / "tool").symlink_to("/opt/$(UCERNVM_PIN_ARCH)/tool")  # variant symlinks, expanded
    (source / "lib" / "hello-default").symlink_to("../$(UCERNVM_PIN_UNSET:-bin)/hello")
    (source / PIN_LIST).write_text("# what the OS needs without a network\n" + "".join(f"/{path}\n" for path in PINNED)
                                   + "/no/such/file\n/etc\n")
    (source / "big.pinfiles").write_text("/data/big.bin\n/etc/hostname\n")  # 26 MB: more than half of 1 MB
    stratum = tmp_path / "stratum"
    publish(source, stratum / FQRN, keys_dir)
    with StratumServer(stratum) as server:
        yield source, stratum, server


def test_symlinks_are_followed_inside_the_os_tree(published, keys_dir: Path, tmp_path: Path) -> None:
    repository = open_repo(tmp_path / "stratum" / FQRN, keys_dir)
    pinner = Pinner(repository, "/" + PIN_LIST, {"UCERNVM_PIN_ARCH": "x86_64"})
    for path, target in PINNED.items():
        assert pinner.resolve("/" + path) == "/" + target
    assert pinner.resolve("/lib/tool") == "/opt/x86_64/tool"  # as the mount expands them
    assert pinner.resolve("/lib/hello-default") == "/bin/hello"
    assert pinner.resolve("/data/sub/../sub/./file") == "/data/sub/file"
    assert pinner.resolve("/no/such/file") is None


NEEDS_FUSE = pytest.mark.skipif(fuse_unusable() is not None, reason=str(fuse_unusable()))


@NEEDS_FUSE
def test_pinned_files_stay_cached_and_readable_with_every_server_gone(published, mounts: Mounts, keys_dir: Path,
                                                                      tmp_path: Path) -> None:
    source, _, server = published
    cache = tmp_path / "cache"
    point, _ = mounts.mount(f"{server.url}/cvmfs/{FQRN}", keys_dir, cache, "--pin", "/" + PIN_LIST, "--quota", "1")
    deadline = time.monotonic() + 30
    while (pinned := daemon_statistics(point, cache)["pinned"])["pinned"] < len(PINNED) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pinned == {"listed": len(PINNED) + 2, "pinned": len(PINNED),
                      "bytes": sum((source / target).stat().st_size for target in PINNED.values()),
                      "skipped": 2, "over_limit": 0}  # the missing file and the directory
    missing = f"pin list /{PIN_LIST} names 1 path not in the snapshot: /no/such/file"
    while missing not in os.getxattr(point, "user.logbuffer").decode() and time.monotonic() < deadline:
        time.sleep(0.05)  # said once the list was worked through
    assert (cache / "mount.log").read_text().count(f"ucernvm mount: warning: {missing}\n") == 1
    unpinned = Path("data/sub/file")
    assert (point / unpinned).read_bytes() == (source / unpinned).read_bytes()
    # 26 MB through a 1 MiB cache: everything that is not pinned (or open) is evicted on the way.
    assert (point / "data/big.bin").read_bytes() == (source / "data/big.bin").read_bytes()

    def cached(path: Path) -> bool:
        digest = os.getxattr(point / path, "user.hash").decode()
        return (cache / digest[:2] / digest[2:]).exists()

    assert all(cached(Path(target)) for target in PINNED.values())
    assert not cached(unpinned)
    # Every server gone, a new mount from the cache (offline), as after a reboot without network.
    url = f"{server.url}/cvmfs/{FQRN}"
    run_cli("umount", point, check=True)
    server.stop()
    again, result = mounts.mount(url, keys_dir, cache)
    assert b"offline" in result.stderr
    for target in PINNED.values():  # (read by their own names: an absolute symlink would leave the mount)
        assert (again / target).read_bytes() == (source / target).read_bytes()
    with pytest.raises(OSError) as unreachable:
        (again / unpinned).read_bytes()
    assert unreachable.value.errno == errno.EIO


@NEEDS_FUSE
def test_pinned_bytes_stop_at_half_the_quota(published, mounts: Mounts, keys_dir: Path, tmp_path: Path) -> None:
    _, _, server = published
    cache = tmp_path / "cache"
    point, _ = mounts.mount(f"{server.url}/cvmfs/{FQRN}", keys_dir, cache, "--pin", "/big.pinfiles", "--quota", "1")
    deadline = time.monotonic() + 30
    while sum((pinned := daemon_statistics(point, cache)["pinned"])[key] for key in ("pinned", "over_limit")) < 2 \
            and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pinned["over_limit"] == 1 and pinned["pinned"] == 1 and pinned["bytes"] == len("cernvm\n")
