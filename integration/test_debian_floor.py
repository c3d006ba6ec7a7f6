"""The Debian appliance root and its boot floor: the root booted from a local disk, cold and warm.

The root is built with mmdebstrap on the first run (about two minutes) and reused from the cache
afterwards; each boot takes 65-135 s under TCG here, depending on the host's load.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from debian_os import ENABLE, MASK, DebianRoot
from floor import FloorBoots, FloorRun

from ucernvm.image.kernel import debian_kernel

pytestmark = pytest.mark.slow


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_root_is_an_appliance(debian_root: DebianRoot, capsys: pytest.CaptureFixture[str]) -> None:
    root, info = debian_root.path, debian_root.info
    with capsys.disabled():
        print(f"\nDebian root {info.key}: built in {info.seconds} s, {info.packages} packages, "
              f"{info.entries} entries, {info.bytes / 1e6:.0f} MB in {info.files} files "
              f"(initrd {debian_root.initrd.stat().st_size / 1e6:.1f} MB)")
    # The image's kernel, byte for byte: the floor boots what the image boots.
    assert _sha256(debian_root.vmlinuz) == _sha256(debian_kernel().bzimage)
    assert (root / "usr/lib/modules" / debian_root.kernel_release / "modules.dep").is_file()
    assert debian_root.initrd.stat().st_size < 12e6  # the small initramfs, not MODULES=most (~36 MB)
    assert not list((root / "etc/ssh").glob("ssh_host_*"))  # made by each instance on its first boot
    for unit in MASK:
        assert (root / "etc/systemd/system" / unit).resolve() == Path("/dev/null"), unit
    wants = {p.name for p in (root / "etc/systemd/system").glob("*.wants/*")}
    assert set(ENABLE) <= wants
    assert (root / "etc/hostname").read_text() == "ucernvm\n"
    assert (root / "etc/resolv.conf").read_text() == ""
    assert not list((root / "var/cache/apt/archives").glob("*.deb"))


def _check_boot(run: FloorRun, which: str) -> None:
    assert run.returncode == 0, f"{which} boot: QEMU exited {run.returncode}"  # the guest powered off
    assert run.report.problems() == [], f"{which} boot"


@pytest.mark.vm
def test_floor_boot_cold_and_warm(debian_floor: FloorBoots, capsys: pytest.CaptureFixture[str]) -> None:
    cold, warm = debian_floor.cold, debian_floor.warm
    _check_boot(cold, "cold")
    _check_boot(warm, "warm")
    assert cold.report.host_key and warm.report.host_key == cold.report.host_key  # one instance, one host key

    with capsys.disabled():
        print(f"\nfloor boot, accel {cold.accel}, guest uptime in s      cold     warm")
        for mark, label in (("systemd-start", "kernel -> systemd (initramfs done)"),
                            ("multi-user.target", "kernel -> multi-user.target"),
                            ("cloud-final", "kernel -> cloud-init done")):
            print(f"  {label:36} {cold.report.marks[mark]:7.2f}  {warm.report.marks[mark]:7.2f}")
        print(f"  {'host: QEMU start -> exit':36} {cold.host_seconds:7.2f}  {warm.host_seconds:7.2f}")
        print(f"  {'host: CPU s of QEMU':36} {cold.qemu_cpu_seconds:7.1f}  {warm.qemu_cpu_seconds:7.1f}")
        print(f"  {'host: CPU s of other processes':36} {cold.others_cpu_seconds:7.1f}  "
              f"{warm.others_cpu_seconds:7.1f}")
