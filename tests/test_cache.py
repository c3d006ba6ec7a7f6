"""The object cache on a directory: hits and misses, the eviction order, pins, objects lost behind its back."""

from __future__ import annotations

import os
from pathlib import Path

from ucernvm.client.cache import ObjectCache
from ucernvm.cvmfs.hashing import ContentHash


def _object(cache: ObjectCache, data: bytes) -> tuple[ContentHash, list[int]]:
    content_hash = ContentHash.of(data)
    calls: list[int] = []

    def produce() -> bytes:
        calls.append(1)
        return data

    os.close(cache.open(content_hash, produce))
    return content_hash, calls


def _path(cache: ObjectCache, content_hash: ContentHash) -> Path:
    return cache.root / content_hash.hex[:2] / content_hash.hex[2:]


def test_a_miss_is_produced_once_then_hits(tmp_path: Path) -> None:
    cache = ObjectCache(tmp_path / "cache")
    content_hash, calls = _object(cache, b"bytes")
    for _ in range(3):
        fd = cache.open(content_hash, lambda: b"never asked")
        assert os.pread(fd, 10, 0) == b"bytes"
        os.close(fd)
    assert (cache.hits, cache.misses, len(calls)) == (3, 1, 1)


def test_eviction_removes_the_least_recently_used_and_spares_pins(tmp_path: Path) -> None:
    cache = ObjectCache(tmp_path / "cache")
    old, _ = _object(cache, b"o" * 1000)
    pinned, _ = _object(cache, b"p" * 1000)
    new, _ = _object(cache, b"n" * 1000)
    for age, content_hash in ((300, old), (200, pinned), (100, new)):
        os.utime(_path(cache, content_hash), (1e9 - age, 1e9 - age))
    cache.pin(pinned)
    assert cache.cleanup(2000) == 1  # the oldest unpinned one goes; the pinned one stays, however old
    assert not _path(cache, old).exists() and _path(cache, pinned).exists() and _path(cache, new).exists()


def test_repeated_use_marks_an_object_once_per_interval(tmp_path: Path) -> None:
    cache = ObjectCache(tmp_path / "cache")
    content_hash, _ = _object(cache, b"library")
    os.utime(_path(cache, content_hash), (1e9, 1e9))
    other = ObjectCache(tmp_path / "cache")  # another process: it has not used the object yet
    os.close(other.open(content_hash, lambda: b"never asked"))
    assert _path(cache, content_hash).stat().st_mtime > 1e9  # its first use moved it up
    os.utime(_path(cache, content_hash), (1e9, 1e9))
    os.close(other.open(content_hash, lambda: b"never asked"))
    assert _path(cache, content_hash).stat().st_mtime == 1e9  # used again at once: no metadata write


def test_an_object_removed_behind_the_cache_is_produced_again(tmp_path: Path) -> None:
    cache = ObjectCache(tmp_path / "cache")
    content_hash, calls = _object(cache, b"evicted elsewhere")
    _path(cache, content_hash).unlink()  # as another process's eviction would
    fd = cache.open(content_hash, lambda: calls.append(1) or b"evicted elsewhere")
    assert os.pread(fd, 100, 0) == b"evicted elsewhere" and len(calls) == 2
    os.close(fd)
