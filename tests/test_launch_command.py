"""``ucernvm launch`` as a user runs it, with a stand-in QEMU on PATH: bad input is one clear line, and a
launcher that is told to stop takes its VM and its temporary files with it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import PROJECT

# Writes its pid, then waits like a running VM until it is signalled.
FAKE_QEMU = """#!/bin/sh
echo $$ > "$FAKE_QEMU_PID"
exec sleep 300
"""


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """PATH with the stand-in QEMU first, and TMPDIR private to the test."""
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "qemu-system-x86_64").write_text(FAKE_QEMU)
    (tools / "qemu-system-x86_64").chmod(0o755)
    (tmp_path / "tmp").mkdir()
    return {**os.environ, "PATH": f"{tools}:{os.environ['PATH']}", "TMPDIR": str(tmp_path / "tmp"),
            "FAKE_QEMU_PID": str(tmp_path / "qemu.pid")}


@pytest.fixture
def image(tmp_path: Path) -> Path:
    image = tmp_path / "image"
    image.mkdir()
    for name in ("vmlinuz", "initrd.img"):
        (image / name).write_bytes(b"x")
    return image


def launch(env: dict[str, str], *args: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "ucernvm", "launch", "--accel", "tcg", "-q", *map(str, args)],
                            cwd=PROJECT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.parametrize("args,message", [
    (["--disk-size", "99999999T"], "invalid size"),
    (["--disk", "{file}/scratch.raw", "--disk-size", "1G"], "cannot create disk"),
    (["--disk", "{tmp}"], "is not a disk image"),
    (["--context", "{tmp}"], "is not a file"),
    (["--serial-log", "{tmp}/missing/console.log"], "cannot write the serial log"),
])  # fmt: skip
def test_bad_input_is_one_clear_line(env: dict[str, str], image: Path, tmp_path: Path, args: list[str],
                                     message: str) -> None:
    (tmp_path / "file").write_bytes(b"")
    process = launch(env, "--image", image, *[arg.format(file=tmp_path / "file", tmp=tmp_path) for arg in args])
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 2, stderr
    assert stderr.startswith(b"ucernvm: error: ") and message.encode() in stderr
    assert b"Traceback" not in stderr
    assert not (tmp_path / "qemu.pid").exists()  # refused before QEMU started


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_stopped_launcher_stops_qemu_and_removes_its_temporary_files(env: dict[str, str], image: Path,
                                                                       tmp_path: Path, signum: int) -> None:
    (tmp_path / "user-data").write_bytes(b"#cloud-config\n")
    process = launch(env, "--image", image, "--disk-size", "1G", "--context", tmp_path / "user-data")
    deadline = time.monotonic() + 60
    while not (tmp_path / "qemu.pid").exists() or not (tmp_path / "qemu.pid").read_text().strip():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    qemu = int((tmp_path / "qemu.pid").read_text())
    assert len(list((tmp_path / "tmp").glob("*/scratch.raw"))) == 1
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 128 + signum, stderr
    assert b"Traceback" not in stderr
    with pytest.raises(ProcessLookupError):
        os.kill(qemu, 0)
    assert list((tmp_path / "tmp").iterdir()) == []  # the scratch disk and the context ISO are gone


@pytest.mark.parametrize("args,message", [
    (["--image", "{tmp}/missing"], "does not exist"),
    (["--context", "{tmp}/missing.iso"], "does not exist"),
    (["--net-forward", "tcp:22"], "invalid port forward"),
    (["--disk", "{tmp}/new.qcow2"], "cannot create a qcow2 disk"),
    (["--disk", "{tmp}/missing/other.raw"], "cannot create disk"),
    (["--serial-log", "{tmp}/missing/console.log"], "cannot write the serial log"),
])  # fmt: skip
def test_a_refused_launch_creates_no_disk(env: dict[str, str], image: Path, tmp_path: Path, args: list[str],
                                          message: str) -> None:
    (tmp_path / "missing").write_bytes(b"")  # a file where a directory is wanted
    process = launch(env, "--image", image, "--disk", tmp_path / "new.raw", "--disk-size", "1G",
                     *[arg.format(tmp=tmp_path) for arg in args])
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 2 and message.encode() in stderr, stderr
    assert not list(tmp_path.glob("new.*")) and not list(tmp_path.glob("*/*.raw"))


def test_a_refused_launch_leaves_no_directory_it_made_for_a_disk(env: dict[str, str], image: Path,
                                                                tmp_path: Path) -> None:
    (tmp_path / "missing").write_bytes(b"")  # a file where a directory is wanted
    process = launch(env, "--image", image, "--disk", tmp_path / "made" / "deeper" / "new.raw",
                     "--disk", tmp_path / "missing" / "other.raw", "--disk-size", "1G")
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 2 and b"cannot create disk" in stderr, stderr
    assert not (tmp_path / "made").exists()
