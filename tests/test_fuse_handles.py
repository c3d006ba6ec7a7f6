"""The per-inode handle table used when the kernel sends no OPEN/RELEASE (zero-message open)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from ucernvm.client.fuse.handles import InodeHandles


class Files:
    """Handles are ``(ino, serial)``; records which are open."""

    def __init__(self) -> None:
        self.open_handles: set[tuple[int, int]] = set()
        self.opened = 0

    def open(self, ino: int) -> tuple[int, int]:
        self.opened += 1
        handle = (ino, self.opened)
        self.open_handles.add(handle)
        return handle

    def release(self, handle: tuple[int, int]) -> None:
        self.open_handles.remove(handle)  # KeyError on a double release


def test_reads_of_one_inode_share_its_handle() -> None:
    files = Files()
    table = InodeHandles(files.open, files.release)
    first = table.acquire(7)
    table.done(first)
    second = table.acquire(7)
    assert second.handle == first.handle and files.opened == 1
    table.done(second)
    assert files.open_handles == {first.handle}  # kept for the next read


def test_the_least_recently_used_idle_handle_is_released_when_full() -> None:
    files = Files()
    table = InodeHandles(files.open, files.release, capacity=2)
    for ino in (1, 2, 1, 3):  # 1 used again, so 2 is the oldest when 3 arrives
        table.done(table.acquire(ino))
    assert {ino for ino, _ in files.open_handles} == {1, 3} and len(table) == 2


def test_a_handle_in_use_is_released_only_after_its_read() -> None:
    files = Files()
    table = InodeHandles(files.open, files.release, capacity=1)
    busy = table.acquire(1)
    table.done(table.acquire(2))  # pushes 1 out of the table while it is being read
    assert busy.handle in files.open_handles  # its descriptor must stay valid for the read
    table.done(busy)
    assert busy.handle not in files.open_handles
    assert {ino for ino, _ in files.open_handles} == {2}


def test_forget_releases_and_the_next_read_opens_again() -> None:
    files = Files()
    table = InodeHandles(files.open, files.release)
    table.done(table.acquire(5))
    table.forget(5)
    table.forget(6)  # never opened: nothing to do
    assert files.open_handles == set()
    slot = table.acquire(5)
    assert files.opened == 2
    table.done(slot)
    table.clear()
    assert files.open_handles == set() and len(table) == 0


def test_a_failing_open_leaves_nothing_behind() -> None:
    def broken(ino: int) -> None:
        raise OSError(5, "download failed")

    table = InodeHandles(broken, lambda handle: None)
    with pytest.raises(OSError):
        table.acquire(1)
    assert len(table) == 0


def test_concurrent_first_reads_keep_one_handle_and_release_the_others() -> None:
    files = Files()
    gate = threading.Barrier(8)

    def slow_open(ino: int) -> tuple[int, int]:
        gate.wait()  # all eight threads open before any of them stores its handle
        return files.open(ino)

    table = InodeHandles(slow_open, files.release)
    with ThreadPoolExecutor(8) as pool:
        slots = list(pool.map(lambda _: table.acquire(9), range(8)))
    assert files.opened == 8 and len({slot.handle for slot in slots}) == 1
    assert files.open_handles == {slots[0].handle}  # the seven extra handles were released
    for slot in slots:
        table.done(slot)
    table.clear()
    assert files.open_handles == set()


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError):
        InodeHandles(lambda ino: ino, lambda handle: None, capacity=0)
