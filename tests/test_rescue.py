"""What a failed boot leaves on the scratch disk for the next boot or the user (boot/rescue.py)."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

from test_cache_trust import no_hang  # noqa: F401 (a fixture)
from ucernvm.boot.log import BootLog
from ucernvm.boot.rescue import save_logs
from ucernvm.boot.state import BootState
from ucernvm.boot.system import RealSystem


def test_a_fifo_or_a_link_the_os_left_in_place_of_the_status_is_replaced(tmp_path: Path, no_hang: None) -> None:
    """The scratch disk is the OS's to write: a FIFO there must not block PID 1 on its way to the rescue
    shell, nor a link take the status to a file of the loader's."""
    state = BootState(RealSystem(str(tmp_path / "root")), BootLog(io.StringIO()))
    state.scratch_device = "/dev/vdb1"
    ulogs = state.scratch / "ulogs"
    ulogs.mkdir(parents=True)
    outside = tmp_path / "loader-file"
    outside.write_text("the loader's\n")
    os.mkfifo(ulogs / "status.json")
    assert save_logs(state, "failed in snapshot") == str(ulogs)
    assert json.loads((ulogs / "status.json").read_text())["outcome"] == "failed in snapshot"
    (ulogs / "status.json").unlink()
    (ulogs / "status.json").symlink_to(outside)
    save_logs(state, "failed in mount")
    assert outside.read_text() == "the loader's\n"
    assert json.loads((ulogs / "status.json").read_text())["outcome"] == "failed in mount"
