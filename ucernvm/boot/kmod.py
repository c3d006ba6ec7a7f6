"""The ``modules`` stage: load the drivers of the devices present, and the file systems the boot needs.

No modprobe and no udev: device modaliases are read from sysfs, resolved through the image's
modules.alias, and each module is loaded with finit_module(2) after its dependencies (modules.dep).
Loading a bus driver (virtio_pci) makes new devices appear (virtio disks and NICs), so the scan repeats
until nothing new is found, as a udev coldplug would.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

from ucernvm.boot.state import BootState
from ucernvm.errors import UcernvmError
from ucernvm.image.kmods import ModuleIndex

_SYS_FINIT_MODULE = {"x86_64": 313, "aarch64": 273}
# Always needed: the scratch disk, the writable layer, the repository mount, and the entropy source
# (Python and TLS ask for random numbers; virtio-rng makes the kernel's pool ready early).
REQUIRED = ("ext4", "overlay", "fuse")
OPTIONAL = ("virtio_rng", "isofs", "vfat", "udf", "nls_utf8", "nls_cp437", "nls_iso8859_1")
MAX_PASSES = 4

_libc = ctypes.CDLL(None, use_errno=True)


class LoadModule(NamedTuple):
    name: str
    path: str

    def describe(self) -> str:
        return f"load kernel module {self.name}"

    def apply(self) -> float:
        """Load the module; returns the seconds its initialisation took."""
        started = time.monotonic()
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            number = _SYS_FINIT_MODULE[platform.machine()]
            if _libc.syscall(number, fd, b"", 0) != 0:
                code = ctypes.get_errno()
                if code != errno.EEXIST:
                    raise UcernvmError(f"cannot load kernel module {self.name}: {os.strerror(code)}")
        finally:
            os.close(fd)
        return time.monotonic() - started


def device_aliases(sysfs: str = "/sys") -> set[str]:
    """The modalias of every device the kernel knows (os.scandir: pathlib's glob is slow under emulation)."""
    aliases = set()
    buses = f"{sysfs}/bus"
    for bus in os.listdir(buses):
        try:
            devices = os.listdir(f"{buses}/{bus}/devices")
        except OSError:
            continue
        for device in devices:
            try:
                with open(f"{buses}/{bus}/devices/{device}/modalias", "rb") as handle:
                    text = handle.read().strip().decode("ascii", "replace")
            except OSError:
                continue
            if text:
                aliases.add(text)
    return aliases


def waves(order: list[str], index: ModuleIndex) -> list[list[str]]:
    """Split a load order into groups whose members only need modules of earlier groups."""
    level: dict[str, int] = {}
    for name in order:
        needs = [dep for dep in index.deps.get(name, []) + index.soft_targets(name) if dep in level]
        level[name] = 1 + max((level[dep] for dep in needs), default=-1)
    groups: list[list[str]] = [[] for _ in range(max(level.values(), default=-1) + 1)]
    for name in order:
        groups[level[name]].append(name)
    return groups


def modules_stage(state: BootState) -> None:
    release = Path("/lib/modules") / platform.release()
    if state.system.dry_run or not (release / "modules.dep").exists():
        state.log.info(f"no kernel modules for {platform.release()} here: nothing to load")
        state.facts["modules"] = {"loaded": [], "release": platform.release()}
        return
    clock = time.monotonic()
    phases: list[tuple[str, float]] = []

    def phase(name: str) -> None:
        nonlocal clock
        now = time.monotonic()
        phases.append((name, round(now - clock, 3)))
        clock = now

    index = ModuleIndex.load(release)
    phase("index")
    loaded: set[str] = set()
    failed: list[str] = []
    seconds: dict[str, float] = {}
    resolved: set[str] = set()
    wanted = {name for name in REQUIRED + OPTIONAL if index.resolve(name)}

    def load(name: str) -> None:
        try:
            seconds[name] = state.system.do(LoadModule(name, str(release / index.paths[name])))
        except UcernvmError as error:
            if name in REQUIRED:
                raise
            failed.append(f"{name}: {error.message}")

    for _ in range(MAX_PASSES):
        for alias in device_aliases() - resolved:
            resolved.add(alias)
            wanted.update(index.resolve(alias))
        order = [name for name in index.load_order(sorted(wanted - loaded)) if name not in loaded]
        phase("scan")
        if not order:
            break
        # Modules of one wave load in parallel: a driver's probe (a disk, a NIC) waits on its device.
        with ThreadPoolExecutor(max_workers=8) as pool:
            for wave in waves(order, index):
                list(pool.map(load, wave))
                loaded.update(wave)
        phase(f"load {len(order)}")
    missing = [name for name in REQUIRED if name not in loaded and name not in index.builtin]
    if missing:
        raise UcernvmError(f"kernel modules {', '.join(missing)} are missing from the image", "rebuild the image")
    slowest = sorted(seconds.items(), key=lambda item: -item[1])[:5]
    state.facts["modules"] = {
        "release": platform.release(),
        "loaded": sorted(loaded),
        "failed": failed,
        "slowest": {name: round(value, 3) for name, value in slowest},
        "phases": phases,
    }
    state.log.info(f"loaded {len(loaded)} kernel modules; slowest: " + ", ".join(f"{n} {v:.2f} s" for n, v in slowest))
