"""The pieces every boot test needs: a published test OS, a stratum server, the image, a VM."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ucernvm.cvmfs.publisher import Publisher, PublishOptions
from ucernvm.cvmfs.signing import generate_repository_keys
from ucernvm.image.builder import BuildOptions, BuildResult, build_image
from ucernvm.image.demo_os import console_marker, console_report, make_demo_os
from ucernvm.launch import LaunchOptions, Vm
from ucernvm.launch.media import create_sparse_disk
from ucernvm.launch.qemu import console_hint
from ucernvm.launch.usernet import HOST_ADDRESS, loopback_forwards
from ucernvm.server import StratumServer

FQRN = "test.cern.ch"
GUEST_HOST = HOST_ADDRESS  # where the isolated guest finds the forwarded host services
# The isolated guest reaches no NTP server (its forwards are TCP): asking one would only cost the clock
# stage its timeout and a warning. tests/test_clock.py asks a real one.
NO_NTP = "ucernvm.ntp=off"
# What the image promises for the busybox demo OS under TCG emulation (10-20x slower than a real VM):
# guest seconds from the kernel's start to the OS's init, on an empty scratch disk and on the second boot.
BOOT_TIME_GOAL = {"cold": 5.0, "warm": 4.0}


@dataclass
class BootRepository:
    keys: Path
    stratum: Path
    os_tree: Path
    server: StratumServer

    @property
    def ports(self) -> tuple[int, ...]:
        """The host ports a boot against this repository must be able to reach."""
        return (self.server.port,)

    def url(self, host: str = GUEST_HOST) -> str:
        return f"http://{host}:{self.server.port}/cvmfs/{FQRN}"

    def publish(self, tag: str) -> None:
        Publisher(str(self.stratum / FQRN), FQRN, str(self.keys), PublishOptions(tag=tag)).publish(str(self.os_tree))

    def cmdline(self, extra: str = "") -> str:
        return (f"quiet cvmfs_repos={FQRN} cvmfs_url={self.url()} cvmfs_proxy=DIRECT ucernvm.panic=poweroff {NO_NTP} "
                f"{extra}").strip()


def make_repository(base: Path) -> BootRepository:
    keys = base / "keys"
    generate_repository_keys(FQRN, keys)
    os_tree = make_demo_os(base / "os")
    (base / "stratum").mkdir()
    server = StratumServer(base / "stratum").start()
    repository = BootRepository(keys, base / "stratum", os_tree, server)
    repository.publish("v1")
    return repository


def build_boot_image(output: Path, keys: Path, *, kernel: Path | None = None,
                     kernel_source: str | None = None, compression: str = BuildOptions.compression) -> BuildResult:
    """The image with *keys*; the kernel is Debian's package unless *kernel* or *kernel_source* is given."""
    public = output.parent / f"{output.name}-keys"
    public.mkdir(parents=True, exist_ok=True)
    for pub in keys.glob("*.pub"):
        (public / pub.name).write_bytes(pub.read_bytes())
    return build_image(BuildOptions(output=output, keys=public, kernel=kernel, kernel_source=kernel_source,
                                    compression=compression))


@dataclass
class BootResult:
    vm: Vm
    code: int
    serial: str

    def marker(self, name: str) -> str | None:
        return console_marker(self.serial, name)

    @property
    def tail(self) -> str:
        """What a failed check shows of the console: the guest kernel's report of trouble, if any, then the end."""
        return console_hint(self.serial, lines=50)

    @property
    def report(self) -> dict:
        report = console_report(self.serial)
        assert report is not None, f"no boot report on the console:\n{self.tail}"
        return report


def boot(image: Path, disk: Path, cmdline: str, log: Path, *, ports: Sequence[int], timeout: float = 300,
         context: Path | None = None, accel: str = "auto", memory: int = 1024,
         machine: str = LaunchOptions.machine, clock_base: str | None = None) -> BootResult:
    """Boot isolated: the guest reaches the host's 127.0.0.1:PORT at 10.0.2.2:PORT for *ports*, and nothing else."""
    options = isolated(image, disk, cmdline, log, ports, context=context, memory=memory, machine=machine, accel=accel,
                       clock_base=clock_base)
    with Vm(options) as vm:
        code = vm.wait(timeout=timeout)
    return BootResult(vm, code, vm.serial)


def power_cut(image: Path, disk: Path, cmdline: str, log: Path, *, ports: Sequence[int], at: str,
              timeout: float = 300) -> re.Match[str]:
    """Boot as ``boot`` does and switch the machine off (QEMU ends, no shutdown in the guest) as soon as the
    console shows the pattern ``at``; returns its match."""
    with Vm(isolated(image, disk, cmdline, log, ports)) as vm:
        match = vm.wait_for(at, timeout=timeout)
        vm.stop()
    return match


def isolated(image: Path, disk: Path, cmdline: str, log: Path, ports: Sequence[int], **options: Any) -> LaunchOptions:
    """The options of a boot whose guest reaches only the host's 127.0.0.1 ports *ports* (at 10.0.2.2)."""
    return LaunchOptions(image=image, disks=(disk,), cmdline=cmdline, serial_log=log, isolated=True,
                         guest_forwards=loopback_forwards(*ports), **options)


def new_disk(path: Path, size: int = 4 << 30) -> Path:
    return create_sparse_disk(path, size)
