"""The builder's caches keep their most recently used entries only (image/cache.py): a kernel update
or a rebuilt library leaves its predecessor behind, and ~/.cache must not grow without end."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from ucernvm.image.cache import keep_recent
from ucernvm.image.compress import compress
from ucernvm.image.kernel import KERNEL_SLOTS_KEPT, kernel_slot_used

DAY = 86400.0


def aged(path: Path, days: float) -> Path:
    when = 1.7e9 - days * DAY
    os.utime(path, (when, when))
    return path


def test_only_the_most_recently_used_entries_are_kept(tmp_path: Path) -> None:
    for age in range(5):
        (tmp_path / f"file{age}").write_bytes(b"x")
        aged(tmp_path / f"file{age}", age)
    slot = tmp_path / "slot"
    (slot / "root").mkdir(parents=True)
    aged(slot, 2.5)
    being_made = [tmp_path / "new.partial", tmp_path / "build-123-abc"]
    being_made[0].write_bytes(b"half")
    being_made[1].mkdir()
    for entry in being_made:
        aged(entry, 100)

    keep_recent(tmp_path.iterdir(), 3)
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(["file0", "file1", "file2", *(p.name for p in being_made)])
    keep_recent(tmp_path.iterdir(), 0)
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(p.name for p in being_made)


def test_a_used_kernel_slot_stays_and_the_oldest_others_go(tmp_path: Path) -> None:
    kernels = tmp_path / "kernels"
    slots = []
    for age in range(KERNEL_SLOTS_KEPT + 2):
        slot = kernels / f"linux-image-6.1.0-{age}-amd64_6.1.{age}-1"
        (slot / "root" / "lib" / "modules").mkdir(parents=True)
        (slot / ".complete").write_text("done\n")
        slots.append(aged(slot, 10 + age))  # slots[-1] is the least recently used
    work = kernels / "build-99999-xyz"  # a kernel build in progress
    work.mkdir()
    aged(work, 1000)
    memo = kernels / "resolved-abc-def.json"  # a file beside the slots is not a slot
    memo.write_text("[]")
    aged(memo, 1000)

    kernel_slot_used(slots[-1])  # the oldest one is booted again
    kept = {path.name for path in kernels.iterdir()}
    expected = {slot.name for slot in slots[: KERNEL_SLOTS_KEPT - 1]} | {slots[-1].name, work.name, memo.name}
    assert kept == expected


@pytest.mark.skipif(shutil.which("zstd") is None, reason="zstd is not installed (apt-get install zstd)")
def test_a_segment_taken_from_the_cache_counts_as_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UCERNVM_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "segment.cpio"
    source.write_bytes(b"cpio bytes " * 100)
    cached, from_cache = compress(source, "digest-1", "zstd")
    assert not from_cache
    aged(cached, 30)
    again, from_cache = compress(source, "digest-1", "zstd")
    assert again == cached and from_cache and cached.stat().st_mtime > 1.7e9
