"""The boot floor: the Debian appliance root booted from a local virtio disk, as a stock VM would.

Same kernel as the image (the root's distribution kernel is the image's package version; under TCG it
is booted as the PVH vmlinux, like the image), Debian's own small initramfs, the root on an ext4
disk made with ``mke2fs -d``, and a NoCloud ``cidata`` ISO on a second virtio disk carrying the same
user-data as the streamed boot: the floor a streamed boot of the same root is measured against.
"""

from __future__ import annotations

import io
import json
import os
import resource
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import pycdlib
from debian_guest import GUEST_KERNEL_OPTIONS, GUEST_MEMORY, GuestContext, GuestReport, guest_context, read_report
from debian_os import DebianRoot

from ucernvm.image import tools
from ucernvm.image.kernel import extract_vmlinux, has_pvh_entry
from ucernvm.launch import LaunchOptions, Vm

# The guest is isolated (it may reach nothing, not even the host), as the streamed boots: that network
# has no router, so systemd's wait for a routable link would only add its timeout, on both sides.
FLOOR_CMDLINE = ("root=/dev/vda rw rootfstype=ext4 quiet systemd.mask=systemd-networkd-wait-online.service "
                 f"{GUEST_KERNEL_OPTIONS}")
BOOT_TIMEOUT = 300.0  # cold boots took 75-135 s here under TCG, depending on the host's load


@dataclass(frozen=True)
class FloorMedia:
    kernel_dir: Path  # vmlinuz, vmlinux, initrd.img, manifest.json: the layout LaunchOptions.image expects
    disk: Path  # the pristine ext4 image of the root; boot a copy (fresh_disk)


@dataclass(frozen=True)
class FloorRun:
    report: GuestReport
    returncode: int
    accel: str
    host_seconds: float  # QEMU start to exit
    qemu_cpu_seconds: float  # host CPU time QEMU used: the boot's cost, nearly independent of the host's load
    others_cpu_seconds: float  # host CPU time used meanwhile by other processes: TCG figures depend on it
    console: str


@dataclass(frozen=True)
class FloorBoots:
    """One instance of the floor: its first boot and its second."""

    cold: FloorRun
    warm: FloorRun


def floor_media(root: DebianRoot) -> FloorMedia:
    """Kernel files and root disk for *root*, made once and kept next to it in the cache."""
    slot = root.cache_slot / "floor"
    kernel_dir, disk = slot / "kernel", slot / "root.ext4"
    if not (kernel_dir / "manifest.json").exists():
        shutil.rmtree(kernel_dir, ignore_errors=True)
        kernel_dir.mkdir(parents=True)
        shutil.copyfile(root.vmlinuz, kernel_dir / "vmlinuz")
        shutil.copyfile(root.initrd, kernel_dir / "initrd.img")
        (kernel_dir / "vmlinux").write_bytes(extract_vmlinux(root.vmlinuz.read_bytes()))
        manifest = {"kernel": {"release": root.kernel_release, "pvh": has_pvh_entry(kernel_dir / "vmlinux")}}
        (kernel_dir / "manifest.json").write_text(json.dumps(manifest) + "\n")
    if not disk.exists():
        partial = disk.with_name(disk.name + ".partial")
        partial.unlink(missing_ok=True)
        # Room for the journal, inode tables and what the first boots write, beyond the files.
        size_mib = int(root.info.bytes * 1.25) // (1 << 20) + 512
        tools.run(["mke2fs", "-q", "-F", "-t", "ext4", "-L", "ucernvm-root", "-d", root.path, partial,
                   f"{size_mib}M"], what="mke2fs -d", hint="apt-get install e2fsprogs")
        partial.replace(disk)
    return FloorMedia(kernel_dir, disk)


def fresh_disk(media: FloorMedia, target: Path) -> Path:
    """A copy of the pristine root disk, as sparse as the original, for one instance."""
    tools.run(["cp", "--sparse=always", media.disk, target], what="cp root disk")
    return target


def seed_iso(path: Path, context: GuestContext) -> Path:
    """A NoCloud seed: ISO 9660 volume CIDATA with user-data and meta-data (Rock Ridge names)."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, rock_ridge="1.09", vol_ident="CIDATA")
    for name, data in (("user-data", context.user_data), ("meta-data", context.meta_data)):
        iso.add_fp(io.BytesIO(data), len(data), f"/{name.replace('-', '').upper()}.;1", rr_name=name)
    iso.write(str(path))
    iso.close()
    return path


def boot_floor(media: FloorMedia, disk: Path, seed: Path, *, serial_log: Path | None = None,
               echo: TextIO | None = None, timeout: float = BOOT_TIMEOUT) -> FloorRun:
    """Boot *disk* with *seed* until the guest powers itself off (the test hook does), or *timeout*."""
    options = LaunchOptions(image=media.kernel_dir, disks=(disk, seed), cmdline=FLOOR_CMDLINE, isolated=True,
                            memory=GUEST_MEMORY, serial_log=serial_log)
    cpu = HostCpu()
    with Vm(options, echo=echo) as vm:
        code = vm.wait(timeout)
    return FloorRun(read_report(vm.serial), code, vm.accel, vm.exited_after or 0.0, *cpu.used(), vm.serial)


def boot_floor_twice(root: DebianRoot, work: Path) -> FloorBoots:
    """A cold boot of a fresh copy of the root disk, then a warm one of the same disk (logs in *work*)."""
    media = floor_media(root)
    disk = fresh_disk(media, work / "root.ext4")
    seed = seed_iso(work / "seed.iso", guest_context())
    cold = boot_floor(media, disk, seed, serial_log=work / "cold.log")
    warm = boot_floor(media, disk, seed, serial_log=work / "warm.log")
    return FloorBoots(cold, warm)


class HostCpu:
    """Host CPU seconds from now on: used by QEMU (this process's reaped children) and by every other
    process. Under TCG the guest's pace depends on the second; the first is the boot's own cost.
    """

    def __init__(self) -> None:
        self._busy, self._self, self._children = self._sample()

    def used(self) -> tuple[float, float]:
        """(QEMU, other processes) seconds since creation; call after QEMU was waited for."""
        busy, own, children = self._sample()
        qemu = children - self._children
        others = busy - self._busy - qemu - (own - self._self)
        return round(qemu, 1), round(max(0.0, others), 1)

    @staticmethod
    def _sample() -> tuple[float, float, float]:
        ticks = [int(field) for field in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
        own, children = (resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
        return busy, own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime
