"""What a later mount makes of a cache that someone changed between mounts: the scratch disk that holds it is
writable by the OS it booted (root in the guest) and by anyone with the disk image. A damaged or planted file
is passed over, removed or refused with a clear error; it never gets past the signature chain or the refusal
of an older revision."""

from __future__ import annotations

import os
import signal
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from test_publish import FQRN, publish
from ucernvm.client import logbuffer
from ucernvm.client.cache import ObjectCache
from ucernvm.client.repository import Repository
from ucernvm.client.sources import DirectorySource
from ucernvm.cvmfs.hashing import ContentHash
from ucernvm.cvmfs.trust import load_master_keys
from ucernvm.errors import ConfigError, FetchError, StorageError, VerificationError


@pytest.fixture
def repo(tmp_path: Path, keys_dir: Path) -> Path:
    tree = tmp_path / "os"
    (tree / "sbin").mkdir(parents=True)
    (tree / "sbin" / "init").write_text("#!/bin/sh\n")
    publish(tree, tmp_path / "repo", keys_dir)
    return tmp_path / "repo"


def mount(repo: Path, keys_dir: Path, cache: Path) -> Repository:
    repository = Repository(DirectorySource(repo), FQRN, load_master_keys(keys_dir / f"{FQRN}.pub"),
                            cache=ObjectCache(cache))
    assert repository.read("/sbin/init") == b"#!/bin/sh\n"
    for catalog in repository.loaded_catalogs():
        catalog.close()
    return repository


def test_a_damaged_breadcrumb_is_passed_over_with_a_warning_and_replaced(repo: Path, keys_dir: Path,
                                                                         tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    mount(repo, keys_dir, cache)
    breadcrumb = cache / f"cvmfschecksum.{FQRN}"
    recorded = breadcrumb.read_bytes()
    breadcrumb.write_bytes(b"\xff garbage" * 1000)
    again = mount(repo, keys_dir, cache)
    assert any("malformed cache breadcrumb" in warning for warning in again.warnings)
    assert max(len(warning) for warning in again.warnings) < 200
    assert breadcrumb.read_bytes() == recorded


def _directory(path: Path) -> None:
    path.mkdir()


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _endless(path: Path) -> None:
    path.symlink_to("/dev/zero")


def _huge(path: Path) -> None:
    with path.open("wb") as sparse:
        sparse.truncate(1 << 40)


@pytest.mark.parametrize("plant", [_directory, _fifo, _endless, _huge])
def test_something_else_in_the_place_of_the_kept_manifest_counts_as_none(repo: Path, keys_dir: Path,
                                                                          tmp_path: Path, plant) -> None:
    cache = tmp_path / "cache"
    mount(repo, keys_dir, cache)
    kept = cache / f".cvmfspublished.{FQRN}"
    kept.unlink()
    plant(kept)
    whitelist = (repo / ".cvmfswhitelist").read_bytes()
    (repo / ".cvmfswhitelist").unlink()  # the server down: the cache has no manifest to mount offline
    with pytest.raises(FetchError) as refused:
        mount(repo, keys_dir, cache)
    assert refused.value.hint == "no server answered and the cache holds no earlier revision"
    (repo / ".cvmfswhitelist").write_bytes(whitelist)
    online = mount(repo, keys_dir, cache)
    if kept.is_dir():  # left there: no copy is kept, and the mount says so
        assert any("no copy of this revision is kept" in warning for warning in online.warnings)
    else:
        assert not online.warnings and kept.read_bytes() == (repo / ".cvmfspublished").read_bytes()


def _object(cache: Path, content_hash: ContentHash) -> Path:
    return cache / content_hash.hex[:2] / content_hash.hex[2:]


class Blocked(Exception):
    """Not an OSError, which the code under test may take for a failing disk."""


@pytest.fixture
def no_hang() -> Iterator[None]:
    """A read that would block forever (a FIFO) fails the test instead."""
    def expire(signum: int, frame: object) -> None:
        raise Blocked("blocked for 20 s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("plant", [_directory, _fifo, _endless])
@pytest.mark.parametrize("which", ["root catalog", "file"])
def test_an_object_that_is_no_regular_file_is_removed_and_fetched_again(repo: Path, keys_dir: Path, tmp_path: Path,
                                                                        no_hang: None, plant, which: str) -> None:
    cache = tmp_path / "cache"
    first = mount(repo, keys_dir, cache)
    uncached = Repository(DirectorySource(repo), FQRN, first.master_keys)
    content_hash = first.root_hash if which == "root catalog" else uncached.entry("/sbin/init").content_hash
    stored = _object(cache, content_hash)
    stored.unlink()
    plant(stored)
    mount(repo, keys_dir, cache)  # reads the file back
    assert stat.S_ISREG(stored.lstat().st_mode)
    fd = ObjectCache(cache).open_cached(content_hash)
    assert fd is not None
    os.close(fd)


def _garbage(path: Path, keys_dir: Path) -> bytes:
    return b"garbage\n" * 1000


def _truncated(path: Path, keys_dir: Path) -> bytes:
    return path.read_bytes()[:3000]


def _other_certificate(path: Path, keys_dir: Path) -> bytes:
    return (keys_dir / "other.cern.ch.crt").read_bytes()  # valid, but not on the repository's whitelist


@pytest.mark.parametrize(("which", "change"), [
    ("root catalog", _garbage), ("root catalog", _truncated), ("certificate", _garbage),
    ("certificate", _other_certificate), ("history", _garbage),
])
def test_a_cached_object_that_is_not_what_it_was_is_fetched_again(repo: Path, keys_dir: Path, tmp_path: Path,
                                                                  which: str, change) -> None:
    cache = tmp_path / "cache"
    first = mount(repo, keys_dir, cache)
    tags = [tag.name for tag in first.tags()]  # the history, cached
    content_hash = {"root catalog": first.root_hash, "certificate": first.manifest.certificate,
                    "history": first.manifest.history}[which]
    stored = _object(cache, content_hash)
    verified = stored.read_bytes()
    stored.write_bytes(change(stored, keys_dir))
    again = mount(repo, keys_dir, cache)
    assert [tag.name for tag in again.tags()] == tags
    assert stored.read_bytes() == verified
    assert f"{content_hash.hex} was found bad (" in logbuffer.recent()


def test_older_signed_copies_planted_in_the_cache_do_not_roll_an_offline_mount_back(tmp_path: Path,
                                                                                    keys_dir: Path) -> None:
    tree, repo, cache = tmp_path / "os", tmp_path / "repo", tmp_path / "cache"
    (tree / "sbin").mkdir(parents=True)
    (tree / "sbin" / "init").write_text("#!/bin/sh\n")
    publish(tree, repo, keys_dir)
    first = mount(repo, keys_dir, cache).manifest
    kept = {name: (cache / f"{name}.{FQRN}").read_bytes() for name in (".cvmfspublished", ".cvmfswhitelist")}
    publish(tree, repo, keys_dir)
    second = mount(repo, keys_dir, cache).manifest
    assert second.revision == 2
    for name, data in kept.items():  # revision 1's copies, validly signed, back in the cache
        (cache / f"{name}.{FQRN}").write_bytes(data)
    (repo / ".cvmfswhitelist").unlink()  # the server down
    with pytest.raises(VerificationError) as refused:
        mount(repo, keys_dir, cache)
    assert refused.value.message.startswith("the cache's copy is revision 1 ")
    published = [time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(m.timestamp)) for m in (first, second)]
    assert f"(published {published[0]}), older than revision 2 (published {published[1]})" in refused.value.message


def test_a_fifo_or_a_link_in_the_downloads_directory_is_removed(tmp_path: Path, no_hang: None) -> None:
    """Counting the cache (and so its quota) starts by removing abandoned downloads, each of which it opens."""
    cache = ObjectCache(tmp_path / "cache")
    for name in ("ab12.4242.140000", "cd34.4243.140001"):
        os.mkfifo(cache.root / "txn" / name)
        os.utime(cache.root / "txn" / name, (1e9, 1e9), follow_symlinks=False)
    (cache.root / "txn" / "ef56.4244.140002").symlink_to(tmp_path / "elsewhere")  # a download would write there
    assert cache.remove_abandoned_downloads() == 3
    assert os.listdir(cache.root / "txn") == []
    assert f"cache {cache.root}: txn/ef56.4244.140002 was a symbolic link, no download: removed" in logbuffer.recent()


def test_a_download_is_never_written_through_a_link_in_the_downloads_directory(tmp_path: Path) -> None:
    cache = ObjectCache(tmp_path / "cache")
    data = b"an object"
    content_hash = ContentHash.of(data)
    target = tmp_path / "a file of the OS"
    target.write_bytes(b"kept")
    (cache.root / "txn" / f"{content_hash.hex}.{os.getpid()}.{threading.get_ident()}").symlink_to(target)
    with pytest.raises(StorageError):
        cache.open(content_hash, lambda out: out.write(data))
    assert target.read_bytes() == b"kept"


@pytest.mark.parametrize("fqrn", ["../escape", "a/b", ".hidden", ""])
def test_a_repository_name_that_is_a_path_is_refused_before_anything_is_read(repo: Path, keys_dir: Path,
                                                                             tmp_path: Path, fqrn: str) -> None:
    """It names the cache's copies (``.cvmfspublished.<fqrn>``): a path would put them anywhere."""
    with pytest.raises(ConfigError, match="is not a repository name"):
        Repository(DirectorySource(repo), fqrn, load_master_keys(keys_dir / f"{FQRN}.pub"), cache=ObjectCache(tmp_path))


@pytest.mark.parametrize("change", [lambda data: data[:3], lambda data: data + b"appended by hand\n"])
def test_a_cached_file_cut_short_or_added_to_is_fetched_again(repo: Path, keys_dir: Path, tmp_path: Path,
                                                              change) -> None:
    cache = tmp_path / "cache"
    first = mount(repo, keys_dir, cache)
    entry = Repository(DirectorySource(repo), FQRN, first.master_keys).entry("/sbin/init")
    stored = _object(cache, entry.content_hash)
    stored.write_bytes(change(stored.read_bytes()))
    again = mount(repo, keys_dir, cache)
    fd = again.open_chunk(entry, again.chunks("/sbin/init", entry)[0])
    try:
        assert os.pread(fd, 100, 0) == b"#!/bin/sh\n"
    finally:
        os.close(fd)
    assert stored.read_bytes() == b"#!/bin/sh\n"
    held = len(change(b"#!/bin/sh\n"))
    assert (f"{entry.content_hash.hex} held {held} bytes, its catalog entry gives 10: removed, the object is fetched "
            "again") in logbuffer.recent()


def _socket(path: Path) -> None:
    cwd = os.getcwd()
    os.chdir(path.parent)  # bound by its name there: its whole path is longer than a socket address may be
    try:
        with socket.socket(socket.AF_UNIX) as listening:
            listening.bind(path.name)
    finally:
        os.chdir(cwd)


_KINDS = {_directory: "a directory", _fifo: "a FIFO", _endless: "a symbolic link", _socket: "a socket"}


@pytest.mark.parametrize("plant", [_directory, _fifo, _endless, _socket])
def test_what_takes_an_objects_place_right_after_its_use_is_removed_and_the_object_fetched_again(
        tmp_path: Path, no_hang: None, plant) -> None:
    """The open that follows a use within the minute its mark lasts looks at what it opened, too."""
    cache = ObjectCache(tmp_path / "cache")
    data = b"an object"
    content_hash = ContentHash.of(data)
    os.close(cache.open(content_hash, lambda out: out.write(data)))
    stored = _object(cache.root, content_hash)
    stored.unlink()
    plant(stored)
    fd = cache.open(content_hash, lambda out: out.write(data))
    try:
        assert os.pread(fd, 100, 0) == data
    finally:
        os.close(fd)
    assert stat.S_ISREG(stored.lstat().st_mode) and (cache.hits, cache.misses) == (0, 2)
    assert (f"cache {cache.root}: {content_hash.hex} was {_KINDS[plant]}, no object: removed, the object is fetched "
            "again") in logbuffer.recent()


@pytest.mark.parametrize("plant", [_directory, _fifo, _endless])
def test_what_is_no_regular_file_is_not_cached_to_a_look_that_fetches_nothing(tmp_path: Path, no_hang: None,
                                                                             plant) -> None:
    """user.lhash looks into the cache without fetching: it neither blocks on a FIFO nor follows a link."""
    cache = ObjectCache(tmp_path / "cache")
    content_hash = ContentHash.of(b"an object")
    _object(cache.root, content_hash).parent.mkdir()
    plant(_object(cache.root, content_hash))
    assert cache.open_cached(content_hash) is None
