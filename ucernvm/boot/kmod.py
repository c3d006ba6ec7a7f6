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
from dataclasses import dataclass
from pathlib import Path

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


@dataclass(frozen=True)
class LoadModule:
    name: str
    path: str

    def describe(self) -> str:
        return f"load kernel module {self.name}"

    def apply(self) -> None:
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            number = _SYS_FINIT_MODULE[platform.machine()]
            if _libc.syscall(number, fd, b"", 0) != 0:
                code = ctypes.get_errno()
                if code != errno.EEXIST:
                    raise UcernvmError(f"cannot load kernel module {self.name}: {os.strerror(code)}")
        finally:
            os.close(fd)


def device_aliases(sysfs: Path = Path("/sys")) -> set[str]:
    """The modalias of every device the kernel knows."""
    aliases = set()
    for path in sysfs.glob("bus/*/devices/*/modalias"):
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text:
            aliases.add(text)
    return aliases


def modules_stage(state: BootState) -> None:
    release = Path("/lib/modules") / platform.release()
    if state.system.dry_run or not (release / "modules.dep").exists():
        state.log.info(f"no kernel modules for {platform.release()} here: nothing to load")
        state.facts["modules"] = {"loaded": [], "release": platform.release()}
        return
    index = ModuleIndex.load(release)
    loaded: set[str] = set()
    failed: list[str] = []
    wanted = {name for name in REQUIRED + OPTIONAL if index.resolve(name)}
    for _ in range(MAX_PASSES):
        for alias in device_aliases():
            wanted.update(index.resolve(alias))
        order = [name for name in index.load_order(sorted(wanted - loaded)) if name not in loaded]
        if not order:
            break
        for name in order:
            try:
                state.system.do(LoadModule(name, str(release / index.paths[name])))
            except UcernvmError as error:
                if name in REQUIRED:
                    raise
                failed.append(f"{name}: {error.message}")
            loaded.add(name)
    missing = [name for name in REQUIRED if name not in loaded and name not in index.builtin]
    if missing:
        raise UcernvmError(f"kernel modules {', '.join(missing)} are missing from the image", "rebuild the image")
    state.facts["modules"] = {"release": platform.release(), "loaded": sorted(loaded), "failed": failed}
    state.log.info(f"loaded {len(loaded)} kernel modules")
