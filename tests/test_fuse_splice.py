"""Read replies spliced from files: the splicer on its own, then through a real FUSE mount."""

from __future__ import annotations

import errno
import mmap
import os
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import fuse_unusable
from ucernvm.client.fuse.kernel import SPLICE_MIN_BYTES, MountOptions, mount
from ucernvm.client.fuse.memory import MemoryTree
from ucernvm.client.fuse.operations import ROOT_INO
from ucernvm.client.fuse.splice import PAGE, ReplySplicer

HEADER = b"H" * 16
DATA = random.Random(7).randbytes(3 * 1024 * 1024 + 4099)  # several 1 MiB requests, odd tail


@pytest.fixture
def splicer() -> Iterator[ReplySplicer]:
    made = ReplySplicer.create()
    if made is None:
        pytest.skip("this platform has no splice(2)")
    yield made
    made.close()


def _file(path: Path, data: bytes) -> int:
    path.write_bytes(data)
    return os.open(path, os.O_RDONLY)


def test_header_and_spans_of_two_files_arrive_as_one_message(tmp_path: Path, splicer: ReplySplicer) -> None:
    first, second = _file(tmp_path / "a", DATA), _file(tmp_path / "b", DATA[::-1])
    out = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT)
    try:
        spans = [(first, 1_000_003, 70_001), (second, 5, 3)]  # offsets off page boundaries
        assert splicer.send(out, HEADER, spans)
        assert splicer.send(out, HEADER, [(first, 0, 10)])  # the pipe is empty again after a message
    finally:
        for fd in (first, second, out):
            os.close(fd)
    expected = HEADER + DATA[1_000_003:1_070_004] + DATA[::-1][5:8] + HEADER + DATA[:10]
    assert (tmp_path / "out").read_bytes() == expected


def test_a_file_shorter_than_its_span_is_eio_and_the_next_message_is_clean(tmp_path: Path, splicer: ReplySplicer) -> None:
    short = _file(tmp_path / "short", DATA[:5000])
    out = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT)
    try:
        with pytest.raises(OSError) as raised:
            splicer.send(out, HEADER, [(short, 0, 8192)])
        assert raised.value.errno == errno.EIO
        assert (tmp_path / "out").read_bytes() == b""  # nothing of the broken message went out
        assert splicer.send(out, HEADER, [(short, 100, 20)])
    finally:
        os.close(short)
        os.close(out)
    assert (tmp_path / "out").read_bytes() == HEADER + DATA[100:120]


def test_a_reply_larger_than_the_pipe_is_left_to_the_caller(tmp_path: Path, splicer: ReplySplicer) -> None:
    big = _file(tmp_path / "big", DATA)
    out = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT)
    try:
        assert not splicer.send(out, HEADER, [(big, 0, len(DATA))])  # 3 MiB: more pages than the pipe
        assert splicer.send(out, HEADER, [(big, 0, PAGE)])
    finally:
        os.close(big)
        os.close(out)
    assert (tmp_path / "out").read_bytes() == HEADER + DATA[:PAGE]


def test_a_read_of_data_pages_fits_the_pipe_however_it_is_aligned(tmp_path: Path, splicer: ReplySplicer) -> None:
    """The largest READ the mount asks for, unaligned and across two chunks' files, is one message."""
    first, second = _file(tmp_path / "first", DATA[:PAGE * 300]), _file(tmp_path / "second", DATA[PAGE * 300:])
    out = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT)
    length = splicer.data_pages * PAGE
    start = PAGE * 300 - length // 2 - 7  # the read starts mid-page in the first file, ends mid-page in the second
    try:
        assert splicer.send(out, HEADER, [(first, start, PAGE * 300 - start), (second, 0, length - (PAGE * 300 - start))])
    finally:
        for fd in (first, second, out):
            os.close(fd)
    assert (tmp_path / "out").read_bytes() == HEADER + DATA[start:start + length]


# --- through a FUSE mount ---------------------------------------------------------------------------

class CountingTree(MemoryTree):
    def __init__(self) -> None:
        super().__init__()
        self.calls = {"read": 0, "read_spans": 0, "not spliced": 0}

    def read(self, handle, offset: int, size: int):  # type: ignore[no-untyped-def]
        self.calls["read"] += 1
        if size >= SPLICE_MIN_BYTES and super().read_spans(handle, offset, size):
            self.calls["not spliced"] += 1  # a read of a local file large enough to splice that was not
        return super().read(handle, offset, size)

    def read_spans(self, handle, offset: int, size: int):  # type: ignore[no-untyped-def]
        self.calls["read_spans"] += 1
        return super().read_spans(handle, offset, size)


@pytest.fixture
def mounted(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Path, CountingTree, Path, bool]]:
    if fuse_unusable() is not None:
        pytest.skip(str(fuse_unusable()))
    backing = tmp_path / "backing"
    backing.mkdir()
    (backing / "big").write_bytes(DATA)
    (backing / "small").write_bytes(DATA[:3000])
    (backing / "shrinks").write_bytes(DATA[: 2 * SPLICE_MIN_BYTES])
    tree = CountingTree()
    for name in ("big", "small", "shrinks"):
        tree.add_local_file(ROOT_INO, name.encode(), str(backing / name))
    tree.add_file(ROOT_INO, b"in-memory", DATA[:200_000])
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    fuse = mount(tree, str(mountpoint), MountOptions(threads=2, splice_reads=request.param))
    fuse.start()
    try:
        yield mountpoint, tree, backing, request.param
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)
        assert fuse.join(10), "workers did not stop after the unmount"
        tree.close()


@pytest.mark.parametrize("mounted", [True, False], ids=["spliced", "pread"], indirect=True)
def test_reads_through_the_mount_return_the_files_bytes(mounted: tuple[Path, CountingTree, Path, bool]) -> None:
    mnt, tree, _, spliced = mounted
    assert (mnt / "big").read_bytes() == DATA
    assert (mnt / "small").read_bytes() == DATA[:3000]
    assert (mnt / "in-memory").read_bytes() == DATA[:200_000]
    with open(mnt / "big", "rb", buffering=0) as handle:
        assert os.pread(handle.fileno(), 300_000, 2_000_001) == DATA[2_000_001:2_300_001]
        assert os.pread(handle.fileno(), 100, len(DATA) - 10) == DATA[-10:]
    if spliced:  # the large requests of big went out spliced (all of them); read() served the small ones
        assert tree.calls["read_spans"] >= len(DATA) >> 20 and tree.calls["not spliced"] == 0
    else:
        assert tree.calls["read_spans"] == 0
        assert tree.calls["read"] >= len(DATA) >> 20


@pytest.mark.parametrize("mounted", [True], ids=["spliced"], indirect=True)
def test_a_backing_file_cut_short_is_eio_and_other_files_still_read(mounted: tuple[Path, CountingTree, Path, bool]) -> None:
    mnt, tree, backing, _ = mounted
    os.truncate(backing / "shrinks", SPLICE_MIN_BYTES // 2)  # the tree still says 2 x SPLICE_MIN_BYTES
    # O_DIRECT: one READ request of exactly this size, answered to this call (no page cache, no retry).
    fd = os.open(mnt / "shrinks", os.O_RDONLY | os.O_DIRECT)
    buffer = mmap.mmap(-1, 2 * SPLICE_MIN_BYTES)  # page-aligned, as O_DIRECT wants
    try:
        with pytest.raises(OSError) as raised:
            os.preadv(fd, [buffer], 0)
    finally:
        os.close(fd)
        buffer.close()
    assert raised.value.errno == errno.EIO
    assert tree.calls == {"read": 0, "read_spans": 1, "not spliced": 0}
    assert (mnt / "big").read_bytes() == DATA
