"""``cernvm_inject`` and pickup tarballs (boot/seed.py ExtractTarball): real archives, extracted into a
directory that stands for the new root; hostile ones are refused and write nothing outside it."""

from __future__ import annotations

import io
import stat
from pathlib import Path

import pytest

from ucernvm.boot.seed import ExtractTarball
from ucernvm.errors import UcernvmError
from ucernvm.tarfiles import tarfile


def _tarball(*members: tuple[str, str, bytes | str, int]) -> bytes:
    """(name, kind 'file'|'dir'|'symlink', data or link target, mode) as a .tar.gz."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, kind, payload, mode in members:
            info = tarfile.TarInfo(name)
            info.mode = mode
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                archive.addfile(info)
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, str(payload)
                archive.addfile(info)
            else:
                data = payload if isinstance(payload, bytes) else payload.encode()
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path]:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    return root, outside


def test_an_archive_is_extracted_into_the_root(layout: tuple[Path, Path]) -> None:
    root, _ = layout
    data = _tarball(("etc", "dir", "", 0o755), ("etc/motd", "file", "hello\n", 0o644),
                    ("etc/motd.link", "symlink", "motd", 0o777), ("usr/bin/tool", "file", b"#!/bin/sh\n", 0o4755))
    names = ExtractTarball(data, str(root), "cernvm_inject").apply()
    assert names == ["etc", "etc/motd", "etc/motd.link", "usr/bin/tool"]
    assert (root / "etc" / "motd").read_text() == "hello\n"
    assert (root / "etc" / "motd.link").read_text() == "hello\n"
    # The set-user-ID bit of an injected program is dropped; the execute bits stay.
    assert stat.S_IMODE((root / "usr" / "bin" / "tool").stat().st_mode) == 0o755


def test_an_absolute_name_lands_under_the_root(layout: tuple[Path, Path]) -> None:
    root, outside = layout
    ExtractTarball(_tarball((f"{outside}/planted", "file", "x", 0o644)), str(root), "cernvm_inject").apply()
    assert not (outside / "planted").exists()
    assert (root / str(outside).lstrip("/") / "planted").read_text() == "x"


@pytest.mark.parametrize("members", [
    [("../outside/planted", "file", "x", 0o644)],
    [("escape", "symlink", "../outside", 0o777), ("escape/planted", "file", "x", 0o644)],
    [("escape", "symlink", "/", 0o777), ("escape/tmp/planted", "file", "x", 0o644)],
], ids=["dot-dot", "through a relative link", "through an absolute link"])
def test_a_path_out_of_the_root_is_refused(layout: tuple[Path, Path], members: list) -> None:
    root, outside = layout
    with pytest.raises(UcernvmError, match="cernvm_inject cannot be extracted"):
        ExtractTarball(_tarball(*members), str(root), "cernvm_inject").apply()
    assert list(outside.iterdir()) == []
    assert not Path("/tmp/planted").exists()


@pytest.mark.parametrize("data", [b"", b"\x1f\x8b garbage", b"not a tarball at all\n",
                                  _tarball(("big", "file", bytes(range(256)) * 400, 0o644))[:300]],
                         ids=["empty", "broken gzip", "text", "truncated"])
def test_garbage_is_a_clear_error(layout: tuple[Path, Path], data: bytes) -> None:
    root, _ = layout
    with pytest.raises(UcernvmError, match="pickup.tar.gz cannot be extracted"):
        ExtractTarball(data, str(root), "pickup.tar.gz").apply()
