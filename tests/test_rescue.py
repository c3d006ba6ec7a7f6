"""What a failed boot leaves on the scratch disk for the next boot or the user, and the rescue shell's
commands and console (boot/rescue.py)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from test_cache_trust import no_hang  # noqa: F401 (a fixture)
from ucernvm.boot.log import BootLog
from ucernvm.boot.rescue import (RESET_ROOT_PASSWORD, console_answers, install_rescue_commands, offer_rescue_shell,
                                 save_logs)
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


BUSYBOX = "/usr/bin/busybox"
needs_busybox = pytest.mark.skipif(not os.path.exists(BUSYBOX), reason="busybox-static is not installed")


def reset_root_password(tmp_path: Path, shadow: bytes | None) -> tuple[BootState, subprocess.CompletedProcess[str]]:
    """The rescue shell's command, as its shell runs it, on an OS root whose /etc/shadow is ``shadow``."""
    state = BootState(RealSystem(str(tmp_path / "initramfs")), BootLog(io.StringIO()))
    state.system.path("/usr/bin").mkdir(parents=True)
    state.new_root.mkdir(parents=True)
    if shadow is not None:
        (state.new_root / "etc").mkdir()
        (state.new_root / "etc" / "shadow").write_bytes(shadow)
        (state.new_root / "etc" / "shadow").chmod(0o640)
    install_rescue_commands(state)
    command = state.system.path(RESET_ROOT_PASSWORD)
    return state, subprocess.run([str(command)], capture_output=True, text=True, timeout=30)


@needs_busybox
def test_reset_root_password_sets_the_os_root_password_to_password(tmp_path: Path) -> None:
    """µCernVM's command, which the CernVM docs tell users to type in the cvmdebug shell."""
    state, result = reset_root_password(tmp_path, b"root:*:19000:0:99999:7:::\nalice:$6$hers:19000::::::\n")
    assert result.returncode == 0 and "root password is 'password'" in result.stdout
    shadow = state.new_root / "etc" / "shadow"
    root, alice = shadow.read_text().splitlines()
    hashed = root.split(":")[1]
    salt = hashed.split("$")[2]
    again = subprocess.run([BUSYBOX, "mkpasswd", "-m", "sha512", "password", salt], capture_output=True, text=True)
    assert hashed.startswith("$6$") and hashed == again.stdout.strip()
    assert root.endswith(":19000:0:99999:7:::") and alice == "alice:$6$hers:19000::::::"
    assert shadow.stat().st_mode & 0o777 == 0o640


@needs_busybox
def test_reset_root_password_without_an_os_root_changes_nothing(tmp_path: Path) -> None:
    _, result = reset_root_password(tmp_path, None)
    assert result.returncode == 1 and "is it assembled yet?" in result.stderr


@needs_busybox
def test_reset_root_password_does_not_write_through_a_link_in_the_os_root(tmp_path: Path) -> None:
    outside = tmp_path / "loader-shadow"
    outside.write_text("root:*:1::::::\n")
    state = BootState(RealSystem(str(tmp_path / "initramfs")), BootLog(io.StringIO()))
    (state.new_root / "etc").mkdir(parents=True)
    (state.new_root / "etc" / "shadow").symlink_to(outside)
    state.system.path("/usr/bin").mkdir(parents=True)
    install_rescue_commands(state)
    result = subprocess.run([str(state.system.path(RESET_ROOT_PASSWORD))], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and "symbolic link" in result.stderr
    assert outside.read_text() == "root:*:1::::::\n"


def test_the_console_answers_with_a_line_only() -> None:
    reading, writing = os.pipe()
    try:
        os.write(writing, b"\n")
        assert console_answers(reading, 5)
        os.write(writing, b"x")  # a key, but no Enter
        started = time.monotonic()
        assert not console_answers(reading, 0.3)
        assert time.monotonic() - started >= 0.3
    finally:
        os.close(writing)
    assert not console_answers(reading, 5)  # the console's end: nobody will answer
    os.close(reading)


def test_cvmssh_on_a_console_nobody_watches_lets_the_boot_go_on_with_a_warning(tmp_path: Path) -> None:
    """µCernVM's cvmssh held the boot with an SSH server in the foreground; a shell on a cloud's console, where
    nobody types, would hold it for ever."""
    state = BootState(RealSystem(str(tmp_path / "root")), BootLog(io.StringIO()))
    reading, writing = os.pipe()
    try:
        started = time.monotonic()
        offer_rescue_shell(state, "cvmssh", 0.5, console=reading)
        assert 0.5 <= time.monotonic() - started < 5
    finally:
        os.close(reading)
        os.close(writing)
    assert state.warnings == ["cvmssh: nobody pressed Enter at the console within 0.5 s; the boot goes on without the "
                              "rescue shell"]
