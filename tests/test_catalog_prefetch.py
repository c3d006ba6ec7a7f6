"""The mount's file system downloads nested catalogs two levels ahead, a bounded number of them, over
real HTTP, and loads catalogs from several threads without waiting on each other."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from test_publish import FQRN, make_tree, publish
from ucernvm.client.cache import ObjectCache
from ucernvm.client.catalogs_ahead import CatalogsAhead
from ucernvm.client.fetcher import HttpSource
from ucernvm.client.filesystem import DOTS, SnapshotFilesystem
from ucernvm.client.fuse.operations import ROOT_INO
from ucernvm.client.repository import Repository
from ucernvm.client.sources import DirectorySource
from ucernvm.cvmfs.catalog import Catalog
from ucernvm.cvmfs.trust import load_master_keys
from ucernvm.server import StratumServer


def cached(cache: Path, reference) -> bool:  # type: ignore[no-untyped-def]
    text = reference.content_hash.hex
    return (cache / text[:2] / text[2:]).exists()


def wait_until(condition, seconds: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@contextmanager
def served(tmp_path: Path, keys_dir: Path) -> Iterator[tuple[HttpSource, Repository, Path]]:
    """The test tree published, served over HTTP and opened with an empty cache (its directory too)."""
    make_tree(tmp_path / "src")
    publish(tmp_path / "src", tmp_path / "stratum" / FQRN, keys_dir)
    cache_dir = tmp_path / "cache"
    with StratumServer(tmp_path / "stratum") as server:
        source = HttpSource([f"{server.url}/cvmfs/{FQRN}"])
        yield source, Repository(source, FQRN, load_master_keys(keys_dir / f"{FQRN}.pub"), cache=ObjectCache(cache_dir)), cache_dir


def test_nested_catalogs_are_downloaded_two_levels_ahead(tmp_path: Path, keys_dir: Path) -> None:
    with served(tmp_path, keys_dir) as (source, repository, cache_dir):
        filesystem = SnapshotFilesystem(repository)
        (sub,) = repository.root_catalog.nested_catalogs()
        (deep,) = Repository(DirectorySource(tmp_path / "stratum" / FQRN), FQRN,
                             load_master_keys(keys_dir / f"{FQRN}.pub")).catalog_for("/data/sub").nested_catalogs()
        assert sub.path == "/data/sub" and not cached(cache_dir, sub) and not cached(cache_dir, deep)
        cwd = os.getcwd()
        filesystem.init()  # makes the cache the working directory, as in the daemon
        try:
            # Nothing below /data was asked for: the root's nested catalog and its own come in by themselves,
            assert wait_until(lambda: cached(cache_dir, sub) and cached(cache_dir, deep))
            # downloaded, not loaded.
            assert [catalog.content_hash for catalog in repository.loaded_catalogs()] == [repository.root_hash]
            requests = source.counters.requests
            data = filesystem.lookup(ROOT_INO, b"data").ino
            sub_ino = filesystem.lookup(data, b"sub").ino
            deep_ino = filesystem.lookup(sub_ino, b"deep").ino
            listing = filesystem.readdir(filesystem.opendir(deep_ino), 0)
            assert [entry.name for entry in listing[DOTS:]] == [b".cvmfscatalog", b"leaf"]
            assert source.counters.requests == requests  # every catalog came from the cache
        finally:
            filesystem.destroy()
            os.chdir(cwd)


def test_threads_loading_one_catalog_share_it(tmp_path: Path, keys_dir: Path) -> None:
    make_tree(tmp_path / "src")
    publish(tmp_path / "src", tmp_path / "stratum" / FQRN, keys_dir)
    with StratumServer(tmp_path / "stratum", latency=0.05) as server:
        source = HttpSource([f"{server.url}/cvmfs/{FQRN}"])
        cache = ObjectCache(tmp_path / "cache")
        repository = Repository(source, FQRN, load_master_keys(keys_dir / f"{FQRN}.pub"), cache=cache)
        repository.root_catalog  # noqa: B018 - loaded before the race
        requests = source.counters.requests
        found: list[object] = []
        start = threading.Barrier(8)

        def load() -> None:
            start.wait()
            found.append(repository.catalog_for("/data/sub/deep"))

        threads = [threading.Thread(target=load) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len({id(catalog) for catalog in found}) == 1
        assert source.counters.requests - requests == 2  # /data/sub and /data/sub/deep, once each
        assert repository.lookup("/data/sub/deep/leaf") is not None


def test_no_more_than_the_budget_waits_ahead_of_use(tmp_path: Path, keys_dir: Path) -> None:
    """With room for one catalog ahead, /data/sub's nested catalog waits until /data/sub is loaded."""
    with served(tmp_path, keys_dir) as (_, repository, cache_dir):
        ahead = CatalogsAhead(repository, lambda function, *args: function(*args), budget=1)  # at once, in turn
        (sub,) = repository.root_catalog.nested_catalogs()
        ahead.loaded(repository.root_catalog)
        assert cached(cache_dir, sub)
        (deep,) = Catalog.open(cache_dir / sub.content_hash.hex[:2] / sub.content_hash.hex[2:]).nested_catalogs()
        assert not cached(cache_dir, deep)  # the budget is spent on /data/sub
        repository.catalog_loaded = ahead.loaded
        repository.catalog_for("/data/sub")  # used now: its place ahead goes to the next one
        assert cached(cache_dir, deep)
