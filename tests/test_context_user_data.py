"""User-data as the boot reads it (context/userdata.py, context/section.py, boot/contextualize.py): gzip
as ``gzip -d`` and cloud-init unpack it, the ucernvm section wherever users put it, and damaged input
met with a warning and a boot that goes on."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

from ucernvm.boot.contextualize import apply_user_data
from ucernvm.boot.log import BootLog
from ucernvm.boot.state import BootState
from ucernvm.boot.system import System
from ucernvm.config import BootConfig

SECTION = b"[ucernvm-begin]\ncvmfs_tag=cernvm-system-4.7.1\n[ucernvm-end]\n"


def boot_with(tmp_path: Path, user_data: bytes) -> BootState:
    state = BootState(System(str(tmp_path)), BootLog(io.StringIO()))
    apply_user_data(state, user_data, "test")
    return state


def test_gzip_of_several_members_is_unpacked_whole(tmp_path: Path) -> None:
    """``cat a.gz b.gz`` is one gzip file to gzip -d and to cloud-init: all of it is the user-data."""
    data = gzip.compress(b"#cloud-config\n") + gzip.compress(SECTION)
    state = boot_with(tmp_path, data)
    assert state.user_data == b"#cloud-config\n" + SECTION
    assert state.config.tag == "cernvm-system-4.7.1" and state.warnings == []


def test_truncated_gzip_is_reported_not_half_read(tmp_path: Path) -> None:
    """A cut-off upload is not taken for shorter user-data: the settings in what survived are not
    applied, the user-data stays as it came, and the report says why."""
    whole = gzip.compress(SECTION + b"#cloud-config\n" + bytes(range(256)) * 64)
    state = boot_with(tmp_path, whole[: len(whole) - 40])
    assert state.user_data == whole[: len(whole) - 40]
    assert state.config.tag == BootConfig().tag
    assert len(state.warnings) == 1 and "gzip" in state.warnings[0]
