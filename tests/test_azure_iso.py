"""context/azure.iso: the first boot on Azure copies the provisioning medium to the scratch disk (Azure ejects
it later; the OS's amiconfig mounts the copy), from a real block device where loop devices can be made."""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from media_images import udf_bridge_image
from ucernvm.boot.contextualize import AZURE_ISO_LIMIT, settle_context
from ucernvm.boot.log import BootLog
from ucernvm.boot.state import BootState
from ucernvm.boot.system import DryRunSystem, System
from ucernvm.context.found import AZURE, CONFIG_DRIVE, FoundContext

AZURE_FILES = {"E6DA6616-8EC4-48E0-BE93-58CE6ACE3CFB.tag": b"", "CustomData.bin": b"#cloud-config\n{}\n",
               "ovf-env.xml": b"<Environment/>\n"}


@pytest.fixture
def medium(tmp_path: Path) -> Iterator[str]:
    """Azure's medium: a UDF ISO on a read-only loop device, or (where none can be made) the image itself."""
    image = udf_bridge_image(tmp_path / "provisioning.iso", AZURE_FILES)
    if os.geteuid() != 0 or not os.path.exists("/dev/loop-control") or not shutil.which("losetup"):
        yield str(image)
        return
    attached = subprocess.run(["losetup", "--find", "--show", "--read-only", str(image)], capture_output=True, text=True)
    if attached.returncode != 0:
        yield str(image)
        return
    device = attached.stdout.strip()
    try:
        yield device
    finally:
        subprocess.run(["losetup", "-d", device], capture_output=True)


def settle(machine: Path, found: FoundContext | None, fresh: bool = True, system: System | None = None) -> BootState:
    state = BootState(system or System(str(machine)), BootLog(io.StringIO()))
    state.scratch_fresh = fresh
    if found is not None:
        state.found_context = found
        state.user_data, state.context_source = found.user_data, found.source_name
    settle_context(state)
    return state


def test_the_first_boot_copies_the_provisioning_medium_byte_for_byte(tmp_path: Path, medium: str) -> None:
    state = settle(tmp_path, FoundContext(AZURE, b"#cloud-config\n{}\n", device=medium))
    copy = state.scratch / "context" / "azure.iso"
    assert copy.read_bytes() == (tmp_path / "provisioning.iso").read_bytes()
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600  # the ISO holds the user's CustomData
    assert not state.warnings and sorted(os.listdir(copy.parent)) == ["azure.iso", "source", "ucontext", "user-data"]
    later = settle(tmp_path, None, fresh=False)  # the medium is gone: the copy stays as it was
    assert copy.read_bytes() == (tmp_path / "provisioning.iso").read_bytes() and not later.warnings
    assert not any("azure.iso" in action for action in later.system.actions)


def test_only_azure_s_medium_is_copied(tmp_path: Path, medium: str) -> None:
    state = settle(tmp_path, FoundContext(CONFIG_DRIVE, b"#cloud-config\n{}\n", device=medium))
    assert not (state.scratch / "context" / "azure.iso").exists()


def test_a_medium_larger_than_azure_s_is_a_warning_and_leaves_no_file(tmp_path: Path) -> None:
    """A file standing for a device (sparse: nothing of it is read)."""
    large = tmp_path / "large.iso"
    with large.open("wb") as handle:
        handle.truncate(AZURE_ISO_LIMIT + 1)
    state = settle(tmp_path, FoundContext(AZURE, b"", device=str(large)))
    context = state.scratch / "context"
    assert sorted(os.listdir(context)) == ["source", "ucontext", "user-data"]  # no copy, no temporary file
    assert state.warnings == [f"context/azure.iso (the copy of Azure's provisioning medium {large}) not written: "
                              f"{large} holds {AZURE_ISO_LIMIT + 1} bytes, more than {AZURE_ISO_LIMIT}"]


def test_a_link_the_os_left_at_the_copy_s_name_is_replaced_not_written_through(tmp_path: Path, medium: str) -> None:
    outside = tmp_path / "outside"
    outside.write_bytes(b"not the scratch disk's\n")
    context = tmp_path / "root.rw" / "context"
    context.mkdir(parents=True)
    (context / "azure.iso").symlink_to(outside)
    state = settle(tmp_path, FoundContext(AZURE, b"", device=medium))
    assert outside.read_bytes() == b"not the scratch disk's\n"
    copy = state.scratch / "context" / "azure.iso"
    assert not copy.is_symlink() and copy.read_bytes() == (tmp_path / "provisioning.iso").read_bytes()


def test_a_dry_run_records_the_copy_and_makes_none(tmp_path: Path, medium: str) -> None:
    system = DryRunSystem()
    state = settle(tmp_path, FoundContext(AZURE, b"", device=medium), system=system)
    path = state.scratch / "context" / "azure.iso"
    assert f"copy {medium} to {path} (at most {AZURE_ISO_LIMIT} bytes)" in system.actions, medium
    assert not path.exists()
