"""Handles per inode, for kernels that send no OPEN and RELEASE at all ("zero-message open").

Every open(2) of a FUSE file normally costs two requests, OPEN and RELEASE, even when the data is
already in the page cache. A booting system opens the same libraries for every process it starts,
so these round trips to a Python daemon are most of its work. When the server answers OPEN with
ENOSYS (and OPENDIR likewise), the kernel stops sending them and reads arrive with only the inode.

This table opens a handle on an inode's first read and keeps the most recently used ones, so that
the reads of one file share its descriptors and readahead. A handle leaves the table when the
kernel forgets the inode or the table is full; it is released only once no read is using it, so a
descriptor is never closed (and its number reused) under a concurrent read.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any


class _Slot:
    __slots__ = ("handle", "readers", "dropped")

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.readers = 0
        self.dropped = False  # out of the table: released when the last reader is done


class InodeHandles:
    """``open(ino)`` on first use, ``release(handle)`` once dropped and idle; at most ``capacity`` kept."""

    def __init__(self, open_handle: Callable[[int], Any], release_handle: Callable[[Any], None],
                 capacity: int = 512) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self._open = open_handle
        self._release = release_handle
        self._capacity = capacity
        self._slots: OrderedDict[int, _Slot] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._slots)

    def acquire(self, ino: int) -> _Slot:
        """The slot of ``ino``'s handle, counted as in use until ``done(slot)``."""
        with self._lock:
            slot = self._slots.get(ino)
            if slot is not None:
                self._slots.move_to_end(ino)
                slot.readers += 1
                return slot
        handle = self._open(ino)  # outside the lock: it may download
        with self._lock:
            slot = self._slots.get(ino)
            duplicate = slot is not None  # another thread opened it meanwhile
            if slot is None:
                slot = self._slots[ino] = _Slot(handle)
            slot.readers += 1
            idle = self._drop_oldest()
        if duplicate:
            idle.append(handle)
        self._release_all(idle)
        return slot

    def done(self, slot: _Slot) -> None:
        with self._lock:
            slot.readers -= 1
            idle = slot.dropped and slot.readers == 0
        if idle:
            self._release(slot.handle)

    def forget(self, ino: int) -> None:
        """The kernel dropped the inode: no read will name it again until a new lookup."""
        with self._lock:
            slot = self._slots.pop(ino, None)
            idle = slot is not None and self._drop(slot)
        if idle:
            self._release(slot.handle)  # type: ignore[union-attr]

    def clear(self) -> None:
        with self._lock:
            slots, self._slots = list(self._slots.values()), OrderedDict()
            idle = [slot.handle for slot in slots if self._drop(slot)]
        self._release_all(idle)

    def _drop_oldest(self) -> list[Any]:
        idle = []
        while len(self._slots) > self._capacity:
            _, slot = self._slots.popitem(last=False)
            if self._drop(slot):
                idle.append(slot.handle)
        return idle

    @staticmethod
    def _drop(slot: _Slot) -> bool:
        """Mark ``slot`` dropped; True when nobody reads it, so it can be released now."""
        slot.dropped = True
        return slot.readers == 0

    def _release_all(self, handles: list[Any]) -> None:
        for handle in handles:
            self._release(handle)
