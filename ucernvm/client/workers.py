"""A pool of worker threads for the FUSE daemon's background work (readahead of chunks, catalogs ahead).

Plain threads and a queue rather than concurrent.futures: that imports logging, and the boot's daemon,
which serves from the freed initramfs after the switch of root, can import nothing then; a pool made on
its first task imported it there, and every read that waited for the pool failed.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable


class WorkerPool:
    """Up to ``workers`` threads, each started when a task finds no idle one, running tasks in turn.
    What a task raises is dropped, as an executor keeps it in a future nobody asks: the caller that needs
    the work done reports the failure itself."""

    def __init__(self, workers: int, name: str) -> None:
        self._workers, self._name = workers, name
        self._tasks: queue.SimpleQueue[tuple[Callable[..., object], tuple[object, ...]] | None] = queue.SimpleQueue()
        self._started = self._idle = 0
        self._closed = False
        self._lock = threading.Lock()

    def submit(self, function: Callable[..., object], *args: object) -> None:
        with self._lock:
            if self._closed:
                return
            self._tasks.put((function, args))
            if self._idle == 0 and self._started < self._workers:
                self._started += 1
                threading.Thread(target=self._work, name=f"{self._name}_{self._started}", daemon=True).start()

    def shutdown(self) -> None:
        """Drop the tasks not started; each worker ends after its current one."""
        with self._lock:
            self._closed = True
            try:
                while True:
                    self._tasks.get_nowait()
            except queue.Empty:
                pass
            for _ in range(self._started):
                self._tasks.put(None)

    def _work(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            task = self._tasks.get()
            with self._lock:
                self._idle -= 1
            if task is None:
                return
            function, args = task
            try:
                function(*args)
            except Exception:  # dropped: see the class's description
                pass
