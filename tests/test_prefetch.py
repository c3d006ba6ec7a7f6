"""Prefetch lists: the files a snapshot names are downloaded ahead over real HTTP, verified, and a
mount records the order it read files in, as the next list."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from faults import Fault, FaultServer
from helpers import fuse_unusable, run_cli
from test_mount import Mounts, mounts  # noqa: F401 (fixture)
from test_publish import FQRN, make_tree, publish
from ucernvm.client.cache import ObjectCache
from ucernvm.client.fetcher import HttpSource
from ucernvm.client.prefetch import MAX_ENTRIES, PREFETCH_LIST, READ_ORDER_FILE, Prefetcher, parse_prefetch_list
from ucernvm.client.repository import Repository
from ucernvm.cvmfs.trust import load_master_keys
from ucernvm.errors import UcernvmError
from ucernvm.server import StratumServer

LISTED = ("/etc/hostname", "/data/big.bin", "/data/sub/deep/leaf")  # plain, chunked, two catalogs down
NOT_FILES = ("/etc", "/etc/motd", "/no/such/file", "/data/fifo")  # a directory, a symlink, missing, a FIFO
LIST_TEXT = "# boot order\n\n" + "".join(f"{path}\n" for path in (*LISTED[:1], *NOT_FILES, *LISTED[1:]))


@pytest.fixture
def stratum(tmp_path: Path, keys_dir: Path) -> Path:
    source = tmp_path / "src"
    make_tree(source)
    os.unlink(source / "etc" / "variant")
    (source / PREFETCH_LIST).write_text(LIST_TEXT)
    publish(source, tmp_path / "stratum" / FQRN, keys_dir)
    return tmp_path / "stratum"


def open_over_http(url: str, keys_dir: Path, cache: Path) -> Repository:
    source = HttpSource([f"{url}/cvmfs/{FQRN}"])
    return Repository(source, FQRN, load_master_keys(keys_dir / f"{FQRN}.pub"), cache=ObjectCache(cache))


def offline(keys_dir: Path, cache: Path) -> Repository:
    """The cached revision with every server gone: only what is in the cache can be read."""
    return open_over_http("http://127.0.0.1:9", keys_dir, cache)


def test_the_list_is_parsed_leniently() -> None:
    text = (b"# comment\n\n  /usr/bin/ls  \nusr/lib//x/\n/usr/bin/ls\n/a/../etc/shadow\n/bad\0name\n"
            b"/latin-1 \xe9t\xe9\r\n/\n")
    assert parse_prefetch_list(text) == ["/usr/bin/ls", "/usr/lib/x", os.fsdecode(b"/latin-1 \xe9t\xe9")]
    assert parse_prefetch_list(os.urandom(4096)) is not None  # garbage: some odd paths, no error
    assert len(parse_prefetch_list(b"".join(b"/f%d\n" % n for n in range(MAX_ENTRIES + 10)))) == MAX_ENTRIES


def test_listed_files_are_fetched_ahead_and_readable_offline(stratum: Path, keys_dir: Path, tmp_path: Path) -> None:
    with StratumServer(stratum) as server:
        repository = open_over_http(server.url, keys_dir, tmp_path / "cache")
        prefetcher = Prefetcher(repository, "/" + PREFETCH_LIST)
        prefetcher.start()
        assert prefetcher.wait(timeout=60)
    big_chunks = len(repository.chunks("/data/big.bin", repository.entry("/data/big.bin")))
    assert big_chunks > 1
    statistics = prefetcher.statistics()
    assert statistics.pop("seconds") >= 0
    assert statistics == {"listed": len(LISTED) + len(NOT_FILES), "fetched": 1 + big_chunks + 1,
                          "skipped": len(NOT_FILES), "failed": 0, "done_before": False}
    cached = offline(keys_dir, tmp_path / "cache")
    for path in LISTED:
        assert cached.read(path) == (stratum.parent / "src" / path.lstrip("/")).read_bytes()
    with pytest.raises(UcernvmError):  # not listed: never fetched
        cached.read("/bin/hello")


def test_a_list_worked_through_is_not_walked_again(stratum: Path, keys_dir: Path, tmp_path: Path) -> None:
    with FaultServer(stratum) as server:
        first = Prefetcher(open_over_http(server.url, keys_dir, tmp_path / "cache"), "/" + PREFETCH_LIST)
        first.start()
        assert first.wait(timeout=60) and first.fetched > 0
        repository = open_over_http(server.url, keys_dir, tmp_path / "cache")  # the next boot's mount
        requests = server.count()
        again = Prefetcher(repository, "/" + PREFETCH_LIST)
        again.start()
        assert again.wait(timeout=60)
        assert again.statistics() == {"listed": 0, "fetched": 0, "skipped": 0, "failed": 0, "done_before": True,
                                      "seconds": None}
        assert server.count() == requests


def test_a_new_snapshot_with_the_same_list_is_walked_again(stratum: Path, keys_dir: Path, tmp_path: Path) -> None:
    with StratumServer(stratum) as server:
        first = Prefetcher(open_over_http(server.url, keys_dir, tmp_path / "cache"), "/" + PREFETCH_LIST)
        first.start()
        assert first.wait(timeout=60) and not first.done_before
        source = stratum.parent / "src"
        (source / "data" / "sub" / "deep" / "leaf").write_bytes(b"a new leaf\n")  # the list stays as it was
        publish(source, stratum / FQRN, keys_dir)
        again = Prefetcher(open_over_http(server.url, keys_dir, tmp_path / "cache"), "/" + PREFETCH_LIST)
        again.start()
        assert again.wait(timeout=60)
        assert not again.done_before and again.fetched > 0 and again.failed == 0
    assert offline(keys_dir, tmp_path / "cache").read("/data/sub/deep/leaf") == b"a new leaf\n"


def test_a_corrupted_object_is_skipped_not_cached(stratum: Path, keys_dir: Path, tmp_path: Path) -> None:
    repository_hash = None
    with FaultServer(stratum) as server:
        repository = open_over_http(server.url, keys_dir, tmp_path / "cache")
        repository_hash = repository.entry("/etc/hostname").content_hash
        server.inject(f"/data/{repository_hash.hex[:2]}/{repository_hash.hex[2:]}", Fault.corrupt())
        prefetcher = Prefetcher(repository, "/" + PREFETCH_LIST)
        prefetcher.start()
        assert prefetcher.wait(timeout=60)
        assert (prefetcher.skipped, prefetcher.failed) == (len(NOT_FILES), 1)
    assert not (tmp_path / "cache" / repository_hash.hex[:2] / repository_hash.hex[2:]).exists()
    assert not list((tmp_path / "cache").glob("prefetched-*"))  # walked again by the next mount
    cached = offline(keys_dir, tmp_path / "cache")
    with pytest.raises(UcernvmError):
        cached.read("/etc/hostname")
    assert cached.read("/data/sub/deep/leaf") == b"leaf\n" * 1000


def test_a_missing_or_unreadable_list_changes_nothing(stratum: Path, keys_dir: Path, tmp_path: Path) -> None:
    with StratumServer(stratum) as server:
        repository = open_over_http(server.url, keys_dir, tmp_path / "cache")
        for path in ("/no/list", "/etc", "/data/fifo"):
            prefetcher = Prefetcher(repository, path)
            prefetcher.start()
            assert prefetcher.wait(timeout=30)
            assert prefetcher.statistics() == {"listed": 0, "fetched": 0, "skipped": 0, "failed": 0,
                                               "done_before": False, "seconds": None}
        assert repository.read("/bin/hello") == b"#!/bin/sh\necho hello\n"


@pytest.mark.skipif(fuse_unusable() is not None, reason=str(fuse_unusable()))
def test_a_mount_prefetches_its_list_and_records_what_it_read(stratum: Path, keys_dir: Path, tmp_path: Path) -> None:
    point, cache = tmp_path / "mnt", tmp_path / "cache"
    point.mkdir()
    with StratumServer(stratum) as server:
        result = run_cli("mount", f"{server.url}/cvmfs/{FQRN}", point, "--name", FQRN, "--key", keys_dir, "--cache", cache,
                         "--prefetch", "/" + PREFETCH_LIST)
        assert result.returncode == 0, result.stderr.decode()
        try:
            leaf = offline(keys_dir, cache).entry("/data/sub/deep/leaf").content_hash.hex
            deadline = time.monotonic() + 30  # nothing read yet: the list's files come by themselves
            while not (cache / leaf[:2] / leaf[2:]).exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert (cache / leaf[:2] / leaf[2:]).exists()
            latin1 = os.fsdecode(b"data/latin-1 \xe9t\xe9")  # a name that is not UTF-8 goes into the list as is
            for path in ("bin/hello", "etc/hostname", "data/sub/file", "bin/hello", latin1):
                (point / path).read_bytes()
            pid = int(os.getxattr(point, "user.pid"))
            os.kill(pid, signal.SIGUSR1)
            order = cache / READ_ORDER_FILE
            deadline = time.monotonic() + 10
            while not order.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            paths = parse_prefetch_list(order.read_bytes())
            assert paths == ["/bin/hello", "/etc/hostname", "/data/sub/file", "/" + latin1]
            assert '"prefetch": {"listed": 7' in (cache / "mount.log").read_text()
            assert (point / "etc/hostname").read_bytes() == b"cernvm\n"  # the daemon serves on
        finally:
            run_cli("umount", point)


@pytest.mark.skipif(fuse_unusable() is not None, reason=str(fuse_unusable()))
def test_paths_not_in_the_snapshot_are_one_warning_per_list(stratum: Path, keys_dir: Path, tmp_path: Path,
                                                            mounts: Mounts) -> None:
    """In mount.log and user.logbuffer: how many, the first few; the mount serves on."""
    source = stratum.parent / "src"
    gone = [f"/gone/{number}" for number in range(7)]
    (source / "other.list").write_text("".join(f"{path}\n" for path in ("/etc/hostname", *gone)))
    publish(source, stratum / FQRN, keys_dir)
    cache = tmp_path / "cache"
    with StratumServer(stratum) as server:
        point, _ = mounts.mount(f"{server.url}/cvmfs/{FQRN}", keys_dir, cache, "--prefetch", "/other.list",
                                "--pin", "/no/pin/list")
        prefetch = ("prefetch list /other.list names 7 paths not in the snapshot: "
                    "/gone/0, /gone/1, /gone/2, /gone/3, /gone/4 and 2 more")
        pin = "pin list /no/pin/list is not in the snapshot"
        deadline = time.monotonic() + 30
        while (log := (cache / "mount.log").read_text()).count("warning:") < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert log.count(f"ucernvm mount: warning: {prefetch}\n") == log.count(f"ucernvm mount: warning: {pin}\n") == 1
        kept = os.getxattr(point, "user.logbuffer").decode()
        assert prefetch in kept and pin in kept
        assert (point / "etc/hostname").read_bytes() == b"cernvm\n"
