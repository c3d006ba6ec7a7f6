"""Where the builder and the launcher keep what is worth reusing between runs, and how much of it.

Every cache is keyed by its inputs (a kernel package's version, a file's hash), so entries for inputs
no longer used would pile up: a Debian kernel update leaves ~400 MB behind. Each use refreshes an
entry's mtime (``used``); a cache that adds an entry keeps only its most recently used ones.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

FILES_KEPT = 500  # in the per-file caches (stripped ELF files, uncompressed modules): several images' worth


def cache_dir(*parts: str) -> Path:
    """``$UCERNVM_CACHE`` (else ``$XDG_CACHE_HOME/ucernvm``, else ``~/.cache/ucernvm``) / parts, created."""
    base = os.environ.get("UCERNVM_CACHE")
    if not base:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        base = str(Path(xdg) / "ucernvm")
    path = Path(base).joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def used(entry: Path) -> Path:
    """Record a use of a cache entry (a file or a slot directory): its mtime orders the pruning."""
    os.utime(entry)
    return entry


def cached_file(target: Path, make: Callable[[Path], object], keep: int, reuse: bool = True) -> tuple[Path, bool]:
    """``target`` and whether it was there already; else ``make(partial)`` writes it under a name of
    this process's own, renamed into place when whole (a crash leaves no truncated entry), and only the
    ``keep`` most recently used entries of its cache stay."""
    if reuse and target.exists():
        return used(target), True
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    try:
        make(partial)
        partial.replace(target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    keep_recent(target.parent.iterdir(), keep)
    return target, False


def keep_recent(entries: Iterable[Path], keep: int) -> None:
    """Remove all but the ``keep`` most recently used of ``entries`` (files or slot directories).

    Entries being made (``*.partial``, a kernel's ``build-*`` work tree) are not counted or removed."""
    kept = [entry for entry in entries if not entry.name.endswith(".partial") and not entry.name.startswith("build-")]
    kept.sort(key=_mtime, reverse=True)
    for old in kept[keep:]:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


def _mtime(entry: Path) -> float:
    try:
        return entry.lstat().st_mtime
    except FileNotFoundError:  # removed by a concurrent run
        return 0.0
