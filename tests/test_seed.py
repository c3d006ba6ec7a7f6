"""What the OS gets from the context (boot/seed.py): ``cernvm_inject`` and pickup tarballs, real
archives extracted into a directory that stands for the new root (hostile ones are refused and write
nothing outside it), and the OS's bootstrap hook with glideinWMS user-data."""

from __future__ import annotations

import base64
import io
import shutil
import stat
from pathlib import Path

import pytest

from ucernvm.boot.contextualize import apply_user_data
from ucernvm.boot.log import BootLog
from ucernvm.boot.seed import BOOTSTRAP, BUSYBOX, GLIDEINWMS_USER_DATA, ExtractTarball, hand_over_context
from ucernvm.boot.state import BootState
from ucernvm.boot.system import System
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


GLIDEIN_USER_DATA = base64.b64encode(
    b"[glidein_startup]\nargs=-v std -param_CERNVM_CMS_PROXY http.colon,//squid.dot,example.colon,3128\n"
) + b"####-cluster 1234 -subcluster 0####\n"


def _booted(machine: Path, user_data: bytes, first_boot: bool) -> BootState:
    """A boot's context applied on ``machine`` (the loader's root), the image's busybox linked in."""
    busybox = machine / BUSYBOX.lstrip("/")
    if not busybox.exists():
        busybox.parent.mkdir(parents=True)
        busybox.symlink_to(shutil.which("busybox") or "/bin/busybox")
    state = BootState(System(str(machine)), BootLog(io.StringIO()))
    state.scratch_fresh = first_boot
    apply_user_data(state, user_data, "EC2")
    state.new_root.mkdir(parents=True, exist_ok=True)
    return state


@pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox is not installed (apt install busybox)")
def test_the_os_hook_runs_with_the_new_root_and_finds_glideinwms_user_data_on_the_first_boot(tmp_path: Path) -> None:
    """µCernVM sourced the OS's /.ucernvm_bootstrap with the new root, UCONTEXT_SRC and its logging
    functions, and left glideinWMS user-data at /glideinwms-user-data, its own root, for the hook to
    start the pilot with; later boots leave it out, as the pilot is set up in the OS by then."""
    state = _booted(tmp_path, GLIDEIN_USER_DATA, first_boot=True)
    (state.new_root / BOOTSTRAP).write_text('log_info "from $UCONTEXT_SRC"\necho "$UCONTEXT_SRC" > "$1/hook-ran"\n')
    hand_over_context(state)
    assert (tmp_path / GLIDEINWMS_USER_DATA.lstrip("/")).read_bytes() == GLIDEIN_USER_DATA
    assert (state.new_root / "hook-ran").read_text() == "EC2\n"
    assert "[INF] from EC2" in state.log.text()
    assert not state.warnings

    (tmp_path / GLIDEINWMS_USER_DATA.lstrip("/")).unlink()
    hand_over_context(_booted(tmp_path, GLIDEIN_USER_DATA, first_boot=False))
    assert not (tmp_path / GLIDEINWMS_USER_DATA.lstrip("/")).exists()


def test_other_user_data_is_not_left_for_the_glideinwms_pilot(tmp_path: Path) -> None:
    hand_over_context(_booted(tmp_path, b"#cloud-config\nruncmd: [true]\n", first_boot=True))
    assert not (tmp_path / GLIDEINWMS_USER_DATA.lstrip("/")).exists()
