"""Directory listings made ahead of a tree walk, by one background thread.

A program that walks a tree (find, du, ls -R, rsync, an indexer) lists a directory, stats its
entries, then lists the next directory: the daemon waits for the walker and the walker for the
daemon, and neither uses the second core. The file system asks for the listings of a directory's
subdirectories ahead once it sees a walk (``SnapshotFilesystem``: a directory listed after its
parent); this thread makes them while the walker works through the one it has, the most recently
asked first, as a walk goes depth first. The thread holds Python's lock while it works, but what
it makes is what the walker asks for next, so the daemon's time is not spent twice.
"""

from __future__ import annotations

import threading
from collections import deque

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Any


class ListingsAhead:
    """``make(key)`` for keys asked for ahead; ``take(key)`` hands over a made value once."""

    def __init__(self, make: Callable[[Any], Any], capacity: int = 512) -> None:
        self._make = make
        self._capacity = capacity
        self._wanted: deque[Any] = deque()  # newest on the right
        self._ready: dict[Any, Any] = {}
        self._making: Any = None
        self._condition = threading.Condition()
        self._stopped = False

    def start(self) -> None:
        threading.Thread(target=self._run, name="listing-ahead", daemon=True).start()

    def stop(self) -> None:
        with self._condition:
            self._stopped = True
            self._wanted.clear()
            self._ready.clear()
            self._condition.notify_all()

    def want(self, keys: Iterable[Any]) -> None:
        """Make these next (in reverse order: the first one is made first); the oldest wishes beyond
        the capacity are forgotten."""
        with self._condition:
            self._wanted.extend(reversed(list(keys)))
            while len(self._wanted) > self._capacity:
                self._wanted.popleft()
            self._condition.notify()

    def take(self, key: Any) -> Any:
        """The value made ahead for ``key`` (waiting if it is being made now), or None."""
        with self._condition:
            while self._making is key:
                self._condition.wait()
            return self._ready.pop(key, None)

    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._wanted and not self._stopped:
                    self._condition.wait()
                if self._stopped:
                    return
                key = self._making = self._wanted.pop()
            value = None
            try:
                value = self._make(key)
            except Exception:  # the request that needs it makes it again and reports the error
                pass
            with self._condition:
                self._making = None
                if value is not None and not self._stopped:
                    self._ready[key] = value
                    while len(self._ready) > self._capacity:
                        del self._ready[next(iter(self._ready))]
                self._condition.notify_all()
