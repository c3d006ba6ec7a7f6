"""The object cache on a directory: hits and misses, the eviction order, pins, objects lost behind its back,
a full disk."""

from __future__ import annotations

import errno
import fcntl
import os
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ucernvm.client import logbuffer
from ucernvm.client.cache import ABANDONED_AFTER, CacheFull, ObjectCache
from ucernvm.client.sinks import Sink
from ucernvm.cvmfs.hashing import ContentHash


def _object(cache: ObjectCache, data: bytes) -> tuple[ContentHash, list[int]]:
    content_hash = ContentHash.of(data)
    calls: list[int] = []

    def fill(out: Sink) -> None:
        calls.append(1)
        out.write(data)

    os.close(cache.open(content_hash, fill))
    return content_hash, calls


def _path(cache: ObjectCache, content_hash: ContentHash) -> Path:
    return cache.root / content_hash.hex[:2] / content_hash.hex[2:]


def test_a_miss_is_produced_once_then_hits(tmp_path: Path) -> None:
    cache = ObjectCache(tmp_path / "cache")
    content_hash, calls = _object(cache, b"bytes")
    for _ in range(3):
        fd = cache.open(content_hash, lambda out: out.write(b"never asked"))
        assert os.pread(fd, 10, 0) == b"bytes"
        os.close(fd)
    assert (cache.hits, cache.misses, len(calls)) == (3, 1, 1)


@pytest.mark.parametrize("name", ["txn", "fan-out"])
def test_a_link_in_place_of_a_directory_of_the_cache_is_removed_not_written_through(tmp_path: Path, name: str) -> None:
    """The cache lies on the scratch disk, which the OS writes: a download does not go through a link it
    left in place of txn/ or of a fan-out directory."""
    outside = tmp_path / "outside"
    outside.mkdir()
    data = b"an object"
    top = "txn" if name == "txn" else ContentHash.of(data).hex[:2]
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / top).symlink_to(outside)
    cache = ObjectCache(tmp_path / "cache")
    assert f"cache {cache.root}: {top}/ was a symbolic link, no directory: removed, the directory made in its place" in logbuffer.recent()
    content_hash, _ = _object(cache, data)
    assert _path(cache, content_hash).read_bytes() == data
    assert not list(outside.iterdir()) and not (cache.root / top).is_symlink()


def test_eviction_removes_the_least_recently_used_and_spares_pins(tmp_path: Path) -> None:
    cache = ObjectCache(tmp_path / "cache")
    old, _ = _object(cache, b"o" * 1000)
    pinned, _ = _object(cache, b"p" * 1000)
    new, _ = _object(cache, b"n" * 1000)
    for age, content_hash in ((300, old), (200, pinned), (100, new)):
        os.utime(_path(cache, content_hash), (1e9 - age, 1e9 - age))
    cache.pin(pinned)
    assert cache.cleanup(2000) == 1  # the oldest unpinned one goes; the pinned one stays, however old
    assert cache.cleanups_since(time.time() - 60) == 1 and cache.cleanup(2000) == 0
    assert cache.cleanups_since(time.time() - 60) == 1  # a run that evicts nothing is no cleanup
    assert not _path(cache, old).exists() and _path(cache, pinned).exists() and _path(cache, new).exists()


def test_repeated_use_marks_an_object_once_per_interval(tmp_path: Path) -> None:
    cache = ObjectCache(tmp_path / "cache")
    content_hash, _ = _object(cache, b"library")
    os.utime(_path(cache, content_hash), (1e9, 1e9))
    other = ObjectCache(tmp_path / "cache")  # another process: it has not used the object yet
    os.close(other.open(content_hash, lambda out: out.write(b"never asked")))
    assert _path(cache, content_hash).stat().st_mtime > 1e9  # its first use moved it up
    os.utime(_path(cache, content_hash), (1e9, 1e9))
    os.close(other.open(content_hash, lambda out: out.write(b"never asked")))
    assert _path(cache, content_hash).stat().st_mtime == 1e9  # used again at once: no metadata write


def test_an_object_removed_behind_the_cache_is_produced_again(tmp_path: Path) -> None:
    cache = ObjectCache(tmp_path / "cache")
    content_hash, calls = _object(cache, b"evicted elsewhere")
    _path(cache, content_hash).unlink()  # by hand, or by the OS whose scratch disk holds the cache
    fd = cache.open(content_hash, lambda out: calls.append(1) or out.write(b"evicted elsewhere"))
    assert os.pread(fd, 100, 0) == b"evicted elsewhere" and len(calls) == 2
    os.close(fd)


def test_a_cache_emptied_while_in_use_takes_new_objects(tmp_path: Path) -> None:
    """Everything removed from the cache directory (txn/ too) by hand while it is in use: what is fetched
    next is kept again, as on a new cache, instead of every download failing until the next mount."""
    cache = ObjectCache(tmp_path / "cache")
    content_hash, calls = _object(cache, b"before")
    for entry in cache.root.iterdir():
        subprocess.run(["rm", "-rf", str(entry)], check=True)
    fresh, _ = _object(cache, b"after")
    assert _path(cache, fresh).read_bytes() == b"after"
    fd = cache.open(content_hash, lambda out: calls.append(1) or out.write(b"before"))
    assert os.pread(fd, 100, 0) == b"before" and len(calls) == 2
    os.close(fd)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB file system of its own, to fill."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], check=True)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)


def fill(disk: Path) -> None:
    """Take every free byte, as a user's files in the writable layer would."""
    with open(disk / "user-files", "ab", buffering=0) as handle:
        try:
            while True:
                handle.write(b"u" * 4096)
        except OSError as error:
            assert error.errno == errno.ENOSPC


def test_a_full_disk_makes_room_by_evicting_what_is_not_in_use(small_disk: Path) -> None:
    cache = ObjectCache(small_disk / "cache")
    unused, _ = _object(cache, os.urandom(1 << 20))
    in_use, _ = _object(cache, os.urandom(1 << 20))
    fill(small_disk)
    cache.pin(in_use)
    data = os.urandom(1 << 20)
    new, calls = _object(cache, data)
    assert _path(cache, new).read_bytes() == data and len(calls) == 1
    assert not _path(cache, unused).exists() and _path(cache, in_use).exists()
    assert cache.evictions == 1 and not os.listdir(small_disk / "cache" / "txn")


def test_a_full_disk_with_nothing_to_evict_is_cache_full_and_keeps_nothing(small_disk: Path) -> None:
    cache = ObjectCache(small_disk / "cache")
    in_use, _ = _object(cache, os.urandom(1 << 20))
    cache.pin(in_use)
    fill(small_disk)
    data = os.urandom(1 << 20)
    with pytest.raises(CacheFull) as raised:
        cache.open(ContentHash.of(data), lambda out: out.write(data))
    assert "is full" in raised.value.message and "persistent/" in raised.value.hint
    assert _path(cache, in_use).exists() and not os.listdir(small_disk / "cache" / "txn")
    assert not _path(cache, ContentHash.of(data)).exists()
    (small_disk / "user-files").unlink()  # room again: the same object is cached as usual
    fd = cache.open(ContentHash.of(data), lambda out: out.write(data))
    assert os.pread(fd, len(data) + 1, 0) == data
    os.close(fd)


def test_an_object_arriving_in_pieces_makes_room_while_it_arrives(small_disk: Path) -> None:
    cache = ObjectCache(small_disk / "cache")
    old = [_object(cache, os.urandom(1 << 20))[0] for _ in range(3)]
    for age, content_hash in enumerate(old):
        os.utime(_path(cache, content_hash), (1e9 + age, 1e9 + age))
    data = os.urandom(3 << 20)  # more than the disk has left: the old objects go when its pieces meet a full disk

    def in_pieces(out: Sink) -> None:
        for start in range(0, len(data), 256 << 10):
            out.write(data[start:start + (256 << 10)])

    fd = cache.open(ContentHash.of(data), in_pieces)
    assert os.pread(fd, len(data) + 1, 0) == data
    os.close(fd)
    assert cache.evictions == 3 and not any(_path(cache, content_hash).exists() for content_hash in old)


def test_a_download_that_fails_half_way_leaves_nothing(tmp_path: Path) -> None:
    cache = ObjectCache(tmp_path / "cache")
    data = b"x" * 1000

    def broken(out: Sink) -> None:
        out.write(data[:500])
        raise OSError("the connection dropped")

    with pytest.raises(OSError, match="dropped"):
        cache.open(ContentHash.of(data), broken)
    assert not os.listdir(cache.root / "txn") and not _path(cache, ContentHash.of(data)).exists()

    def restarted(out: Sink) -> None:  # a first attempt cut short, then a whole one
        out.write(b"half of a bad copy")
        out.restart()
        out.write(data)

    fd = cache.open(ContentHash.of(data), restarted)
    assert os.pread(fd, 2000, 0) == data
    os.close(fd)


def test_downloads_no_process_holds_are_removed(tmp_path: Path) -> None:
    cache = ObjectCache(tmp_path / "cache")
    txn = cache.root / "txn"
    old = time.time() - 2 * ABANDONED_AFTER
    kept_copies = (".cvmfspublished.test.cern.ch.4245.140003", "cvmfschecksum.test.cern.ch.4246.140004")  # save_named's
    for name in ("ab12.4242.140000", "cd34.4243.140001", "ef56.4244.140002", "publish.lock", *kept_copies):
        (txn / name).write_bytes(b"some pieces of an object")
        if name != "ef56.4244.140002":
            os.utime(txn / name, (old, old))
    in_progress = os.open(txn / "cd34.4243.140001", os.O_RDONLY)  # as a download under way holds its file
    fcntl.flock(in_progress, fcntl.LOCK_EX)
    try:
        assert cache.remove_abandoned_downloads() == 1 + len(kept_copies)
    finally:
        os.close(in_progress)
    # Gone: those no one holds, kept copies' too. Kept: the one held, the one too young to tell, what is no download.
    assert sorted(os.listdir(txn)) == ["cd34.4243.140001", "ef56.4244.140002", "publish.lock"]
    assert cache.remove_abandoned_downloads() == 1  # released by its download's end


def test_fan_out_directories_appear_with_their_first_objects_even_under_contention(tmp_path: Path) -> None:
    cache = ObjectCache(tmp_path / "cache")
    assert sorted(os.listdir(cache.root)) == ["txn"]  # nothing made ahead of use
    blobs = [f"object {index}".encode() for index in range(400)]  # several per fan-out directory
    caches = [cache, ObjectCache(tmp_path / "cache")]  # a second process's view of the same directory
    with ThreadPoolExecutor(max_workers=16) as pool:
        hashes = list(pool.map(lambda item: _object(caches[item[0] % 2], item[1])[0], enumerate(blobs)))
    for content_hash, data in zip(hashes, blobs):
        assert _path(cache, content_hash).read_bytes() == data
    assert set(os.listdir(cache.root)) == {"txn"} | {content_hash.hex[:2] for content_hash in hashes}
    assert os.listdir(cache.root / "txn") == []


def test_a_signed_file_is_rewritten_only_when_it_changed(tmp_path: Path) -> None:
    cache = ObjectCache(tmp_path / "cache")
    cache.save_named("test.cern.ch", ".cvmfspublished", b"revision 1")
    kept = (tmp_path / "cache" / ".cvmfspublished.test.cern.ch").stat().st_ino
    cache.save_named("test.cern.ch", ".cvmfspublished", b"revision 1")  # every later mount finds the same
    assert (tmp_path / "cache" / ".cvmfspublished.test.cern.ch").stat().st_ino == kept
    cache.save_named("test.cern.ch", ".cvmfspublished", b"revision 2")
    assert cache.load_named("test.cern.ch", ".cvmfspublished") == b"revision 2"
