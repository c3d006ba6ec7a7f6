"""Directory listings made ahead of a tree walk: the background maker, and the file system that asks
for them once it sees a walk (and not before)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from test_catalog_prefetch import wait_until
from test_publish import FQRN, make_tree, publish
from ucernvm.client.filesystem import DOTS, SnapshotFilesystem
from ucernvm.client.fuse.operations import ROOT_INO
from ucernvm.client.listing_ahead import ListingsAhead
from ucernvm.client.repository import Repository
from ucernvm.client.sources import DirectorySource
from ucernvm.cvmfs.trust import load_master_keys


class Recorder:
    """A ``make`` that records what it made, in which thread; ``gate`` holds it back when cleared."""

    def __init__(self) -> None:
        self.made: list[str] = []
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, key: str) -> str:
        self.gate.wait(10)
        if key == "bad":
            raise ValueError("a listing that fails")
        self.made.append(key)
        return key.upper()


def test_the_most_recent_wish_is_made_first_and_each_value_is_taken_once() -> None:
    make = Recorder()
    ahead = ListingsAhead(make)
    ahead.want(["a", "b"])
    ahead.want(["c", "d"])  # not started yet: both wishes wait
    ahead.start()
    try:
        assert wait_until(lambda: len(make.made) == 4)
        assert make.made == ["c", "d", "a", "b"]  # newest wish first, each in its own order
        assert ahead.take("c") == "C"
        assert ahead.take("c") is None
        assert ahead.take("never wanted") is None
    finally:
        ahead.stop()


def test_take_waits_for_the_value_being_made_and_a_failure_is_none() -> None:
    make = Recorder()
    ahead = ListingsAhead(make)
    ahead.start()
    try:
        make.gate.clear()
        ahead.want(["slow"])
        assert wait_until(lambda: ahead._making == "slow")
        threading.Timer(0.2, make.gate.set).start()
        assert ahead.take("slow") == "SLOW"  # not None: it waited rather than made it twice
        ahead.want(["bad"])
        assert wait_until(lambda: ahead._making is None and "bad" not in ahead._wanted)
        assert ahead.take("bad") is None
    finally:
        ahead.stop()


def test_wishes_beyond_the_capacity_forget_the_oldest() -> None:
    make = Recorder()
    ahead = ListingsAhead(make, capacity=2)
    ahead.want(["a", "b", "c", "d"])  # not started: nothing is made yet
    ahead.start()
    try:
        assert wait_until(lambda: len(make.made) == 2)
        time.sleep(0.1)
        assert make.made == ["a", "b"]
    finally:
        ahead.stop()


class ListingLog:
    """Wraps Repository.listdir: which paths were listed, by which thread."""

    def __init__(self, repository: Repository) -> None:
        self.calls: list[tuple[str, str]] = []
        listdir = repository.listdir

        def logged(path: str, **options):  # type: ignore[no-untyped-def]
            self.calls.append((path, threading.current_thread().name))
            return listdir(path, **options)

        repository.listdir = logged  # type: ignore[method-assign]

    def ahead(self) -> list[str]:
        return [path for path, thread in self.calls if thread == "listing-ahead"]


def filesystem_of_tree(tmp_path: Path, keys_dir: Path) -> tuple[SnapshotFilesystem, ListingLog]:
    make_tree(tmp_path / "src")
    (tmp_path / "src" / "data" / "sub" / "more").mkdir()
    (tmp_path / "src" / "data" / "sub" / "more" / "file").write_text("three levels down\n")
    publish(tmp_path / "src", tmp_path / "stratum" / FQRN, keys_dir)
    repository = Repository(DirectorySource(tmp_path / "stratum" / FQRN), FQRN, load_master_keys(keys_dir / f"{FQRN}.pub"))
    log = ListingLog(repository)
    filesystem = SnapshotFilesystem(repository)
    filesystem.init()
    return filesystem, log


def names(filesystem: SnapshotFilesystem, ino: int) -> list[bytes]:
    """The names a listing holds after "." and ".."."""
    listing = filesystem.readdir(filesystem.opendir(ino), 0)
    assert [entry.name for entry in listing[:DOTS]] == [b".", b".."]
    return [entry.name for entry in listing[DOTS:]]


def test_a_walk_has_its_subdirectories_listed_ahead(tmp_path: Path, keys_dir: Path) -> None:
    filesystem, log = filesystem_of_tree(tmp_path, keys_dir)
    cwd = os.getcwd()
    try:
        names(filesystem, ROOT_INO)
        data = filesystem.lookup(ROOT_INO, b"data").ino
        names(filesystem, data)  # a directory listed after its parent: a walk
        assert wait_until(lambda: log.ahead() == ["/data/sub"])
        sub = filesystem.lookup(data, b"sub").ino
        listed_before = len(log.calls)
        assert names(filesystem, sub) == [b".cvmfscatalog", b"deep", b"file", b"more"]
        # Handed over, not listed again; and the walk goes on one level further down.
        assert wait_until(lambda: sorted(log.ahead()) == ["/data/sub", "/data/sub/deep", "/data/sub/more"])
        assert all(thread == "listing-ahead" for _, thread in log.calls[listed_before:])
        more = filesystem.lookup(sub, b"more").ino
        assert names(filesystem, more) == [b"file"]
    finally:
        filesystem.destroy()
        os.chdir(cwd)


def test_listing_directories_that_are_no_walk_lists_nothing_ahead(tmp_path: Path, keys_dir: Path) -> None:
    filesystem, log = filesystem_of_tree(tmp_path, keys_dir)
    try:
        data = filesystem.lookup(ROOT_INO, b"data").ino
        etc = filesystem.lookup(ROOT_INO, b"etc").ino
        assert b"sub" in names(filesystem, data)  # its parent was never listed: a program looking in one place
        assert b"hostname" in names(filesystem, etc)
        time.sleep(0.3)
        assert log.ahead() == []
    finally:
        filesystem.destroy()
