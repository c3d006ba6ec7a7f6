"""Build the image with the smoke init, boot it under QEMU, and check what the init found."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ucernvm.image.builder import BuildResult
from ucernvm.launch import LaunchOptions, Vm
from ucernvm.launch.media import create_sparse_disk

CONTEXT_TEXT = "context from the host\n"


def make_context_iso(path: Path, text: str) -> Path:
    pycdlib = pytest.importorskip("pycdlib")
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, rock_ridge="1.09", vol_ident="CONTEXT")
    data = text.encode()
    iso.add_fp(io.BytesIO(data), len(data), "/HELLO.TXT;1", rr_name="hello.txt")
    iso.write(str(path))
    iso.close()
    return path


def smoke_boot(image: Path, work: Path, cpu: str | None = None) -> tuple[Vm, int, dict[str, Any]]:
    """Boot the smoke image; the VM, its exit code and the init's report."""
    options = LaunchOptions(
        image=image,
        disks=(create_sparse_disk(work / "scratch.raw", 64 << 20),),
        context=make_context_iso(work / "context.iso", CONTEXT_TEXT),
        memory=512,
        serial_log=work / "serial.log",
        cpu=cpu,
    )
    with Vm(options) as vm:
        match = vm.wait_for(r"UCERNVM-SMOKE (\{.*\})$", timeout=300)
        code = vm.wait(timeout=60)
    return vm, code, json.loads(match.group(1))


@pytest.mark.vm
def test_smoke_image_boots_and_powers_off(smoke_image: BuildResult, qemu: str, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    vm, code, report = smoke_boot(smoke_image.output, tmp_path)
    assert vm.choice is not None

    with capsys.disabled():
        run_init = report["run_init"]
        print(f"\nsmoke boot: accel {vm.accel} ({vm.choice.reason})")
        print(f"  kernel start -> Run /init   {run_init:6.2f} s guest")
        print(f"  Run /init -> Python start   {report['python_start'] - run_init:6.2f} s "
              f"(random generator ready at {report['crng_ready']} s)")
        print(f"  {len(report['loaded'])} modules loaded in      {report['modules_seconds']:6.2f} s")
        print(f"  Run /init -> marker         {report['marker'] - run_init:6.2f} s")
        print(f"  host: QEMU start -> marker  {vm.line_time('UCERNVM-SMOKE'):6.2f} s, -> exit {vm.exited_after:.2f} s")
        print(f"  initrd {smoke_image.initrd.stat().st_size / 1e6:.2f} MB, "
              f"vmlinuz + initrd {smoke_image.manifest['boot_bytes'] / 1e6:.2f} MB")

    assert report["ok"], report.get("error")
    assert code == 0, vm.stderr
    assert report["kmsg_logged"]
    assert run_init is not None and 0 < run_init < report["python_start"] < report["marker"]
    # The kernel's random generator was ready before the init ran, so the interpreter, which reads
    # /dev/urandom to seed its hashes, did not wait for entropy (the launcher's CPU has RDRAND).
    assert report["crng_ready"] is not None and report["crng_ready"] < run_init
    assert "rdrand" in report["cpu_flags"]
    if vm.accel == "tcg":
        assert "sse4_2" not in report["cpu_flags"], "the default TCG CPU is x86-64-v1 (qemu64)"
    assert set(report["loaded"]) <= set(report["proc_modules"])
    assert {"virtio_net", "virtio_blk", "ext4", "overlay", "fuse", "loop", "isofs", "sr_mod"} <= set(report["loaded"])
    assert report["eth0"]
    assert {"vda", "sr0"} <= set(report["block"])
    assert report["context_text"] == CONTEXT_TEXT
    assert report["tools"] == {"/usr/bin/sh": True, "/usr/sbin/mke2fs": True}
    assert "UCERNVM-SMOKE" in (tmp_path / "serial.log").read_text()


@pytest.mark.vm
def test_a_chosen_cpu_model_is_the_guests(smoke_image: BuildResult, qemu: str, tmp_path: Path) -> None:
    """`ucernvm launch --cpu`: an x86-64-v2 model, as the EL9 family needs, under any accelerator."""
    vm, code, report = smoke_boot(smoke_image.output, tmp_path, cpu="Nehalem,+rdrand")
    assert report["ok"], report.get("error")
    assert vm.argv[vm.argv.index("-cpu") + 1] == "Nehalem,+rdrand"
    assert {"sse4_2", "popcnt", "ssse3", "cx16", "rdrand"} <= set(report["cpu_flags"]), report["cpu_flags"]
    assert code == 0, vm.stderr


@pytest.mark.slow
def test_build_is_reproducible(smoke_image: BuildResult, build_smoke: Callable[..., BuildResult],
                               tmp_path: Path) -> None:
    """A second build, compressing everything again, gives the same initrd bytes."""
    again = build_smoke(tmp_path / "again", use_cache=False)
    first, second = smoke_image.manifest["initrd"], again.manifest["initrd"]
    assert [s["cpio_sha256"] for s in second["segments"]] == [s["cpio_sha256"] for s in first["segments"]]
    assert not any(s["from_cache"] for s in second["segments"])
    assert again.initrd.read_bytes() == smoke_image.initrd.read_bytes()
    assert again.manifest["components"] == smoke_image.manifest["components"]


def _stat(pid: int | str) -> tuple[str, list[str]] | None:
    """A process's command name and the fields of /proc/<pid>/stat after it; None once it is gone."""
    try:
        command, _, rest = Path(f"/proc/{pid}/stat").read_text().partition("(")[2].rpartition(")")
    except FileNotFoundError:
        return None
    return command, rest.split()


def _qemu_child(pid: int) -> int | None:
    """The QEMU process among *pid*'s children, if it has started (found by parent in /proc/*/stat,
    which every kernel has, unlike /proc/*/task/*/children)."""
    for entry in Path("/proc").iterdir():
        stat = _stat(entry.name) if entry.name.isdigit() else None
        if stat is not None and int(stat[1][1]) == pid and stat[0].startswith("qemu-system"):
            return int(entry.name)
    return None


def _running(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[1][0] not in ("Z", "X")


@pytest.mark.vm
def test_a_killed_launcher_leaves_no_vm_behind(smoke_image: BuildResult, qemu: str, tmp_path: Path) -> None:
    # A guest that never ends by itself: no init in the initramfs, and the kernel waits for a root disk.
    never_ends = "rdinit=/none root=/dev/nonexistent rootwait"
    launcher = subprocess.Popen([sys.executable, "-m", "ucernvm", "launch", "--image", str(smoke_image.output),
                                 "--accel", "tcg", "--memory", "256", "--cmdline", never_ends, "-q"],
                                stdout=subprocess.DEVNULL)
    vm = None
    try:
        deadline = time.monotonic() + 60
        while (vm := _qemu_child(launcher.pid)) is None:
            assert launcher.poll() is None and time.monotonic() < deadline, "the launcher started no QEMU"
            time.sleep(0.05)
        launcher.kill()  # SIGKILL: the launcher cleans nothing up
        launcher.wait()
        deadline = time.monotonic() + 10
        while _running(vm) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _running(vm), f"QEMU (pid {vm}) still runs after its launcher was killed"
    finally:
        launcher.kill()
        if vm is not None and _running(vm):
            os.kill(vm, signal.SIGKILL)
