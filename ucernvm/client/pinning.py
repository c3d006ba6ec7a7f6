"""Pinned files: what an OS needs to recover from a broken network stays in the cache (µCernVM's 95pinfiles).

A snapshot's OS may list at its root, in ``.ucernvm_pinfiles``, files that must never leave the cache:
shells, coreutils, network scripts, libc (cernvm-config's list), one absolute path of the OS per line,
``#`` comments. The mount downloads them in the background, one after the other (they are not what the
boot waits for), following symlinks inside the OS tree as the OS would (variant symlinks expanded as the
mount expands them), and pins their objects for its
whole life: the cache's quota evicts every other object first. Pinned bytes stop at half the quota, so
a list larger than the cache cannot leave the OS's own reads without room; what is left out is counted.
Paths the snapshot does not hold are one warning once the list was worked through, as a prefetch list's.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Mapping

from ucernvm.client.prefetch import BackgroundWalk, parse_prefetch_list
from ucernvm.client.repository import Repository, normalize_path
from ucernvm.client.variant_symlinks import expand_variant_symlink
from ucernvm.errors import UcernvmError

PIN_LIST = ".ucernvm_pinfiles"
MAX_SYMLINKS = 40  # followed in one path, as the kernel's limit


class Pinner(BackgroundWalk):
    """Fetch and pin the files of a pin list, in a background thread, until stopped."""

    thread_name = "pin"
    kind = "pin list"

    def __init__(self, repository: Repository, list_path: str, environment: Mapping[str, str],
                 os_root: str = "") -> None:
        super().__init__(list_path)
        self.repository = repository
        self.environment = environment  # what the mount expands variant symlinks from
        self.os_root = os_root  # the repository directory the list's absolute paths are in
        self.listed = 0
        self.pinned = 0  # files whose every object is cached and pinned
        self.pinned_bytes = 0
        self.skipped = 0  # missing, not regular files, or failing to download
        self.over_limit = 0  # left out: they would take the pinned bytes over half the quota

    def statistics(self) -> dict[str, int]:
        return {"listed": self.listed, "pinned": self.pinned, "bytes": self.pinned_bytes, "skipped": self.skipped,
                "over_limit": self.over_limit}

    def _run(self) -> None:
        cache = self.repository.cache
        if cache is None:
            return
        try:
            if self.repository.lookup(self.list_path) is None:
                self._list_missing()
                return
            paths = parse_prefetch_list(self.repository.read(self.list_path))
        except (UcernvmError, OSError):
            return  # a broken list: nothing is pinned, the mount works as without
        self.listed = len(paths)
        limit = cache.quota // 2 if cache.quota else None
        for path in paths:
            if self._stop.is_set():
                return
            try:
                self._pin(path, limit)
            except (UcernvmError, OSError):
                self.skipped += 1

    def _pin(self, os_path: str, limit: int | None) -> None:
        path = self.resolve(os_path)
        entry = self.repository.lookup(path) if path is not None else None
        if entry is None:
            self._missing.append(os_path)
        if entry is None or not entry.is_regular or entry.is_external:
            self.skipped += 1
            return
        if limit is not None and self.pinned_bytes + entry.size > limit:
            self.over_limit += 1
            return
        cache = self.repository.cache
        assert cache is not None
        for chunk in self.repository.chunks(path, entry):  # type: ignore[arg-type]
            cache.pin(chunk.content_hash)  # first: the object cannot go between its download and its pin
            os.close(self.repository.open_chunk(entry, chunk))
        self.pinned += 1
        self.pinned_bytes += entry.size

    def resolve(self, os_path: str) -> str | None:
        """The repository path of the file the OS path names, its symlinks followed inside the OS tree
        (an absolute target starts again at the OS root); None when a part is missing or links loop."""
        parts = deque(part for part in os_path.split("/") if part)
        resolved: list[str] = []
        links = 0
        while parts:
            part = parts.popleft()
            if part == ".":
                continue
            if part == "..":
                if resolved:
                    resolved.pop()
                continue
            entry = self.repository.lookup(self._in_tree(resolved + [part]))
            if entry is None:
                return None
            if entry.is_symlink:
                links += 1
                if links > MAX_SYMLINKS:
                    return None
                target = expand_variant_symlink(entry.symlink, self.environment)
                if target.startswith("/"):
                    resolved = []
                parts.extendleft(reversed([piece for piece in target.split("/") if piece]))
                continue
            resolved.append(part)
        return self._in_tree(resolved)

    def _in_tree(self, parts: list[str]) -> str:
        return normalize_path("/".join([self.os_root, *parts]))
