"""The ``modules`` stage: load the drivers of the devices present, and the file systems the boot needs.

No modprobe and no udev: device modaliases are read from sysfs, resolved through the image's
modules.alias, and each module is loaded with finit_module(2) as soon as its dependencies
(modules.dep) are loaded. Loading a bus driver (virtio_pci) makes new devices appear (virtio disks and
NICs), so the devices are scanned again after each module that registered a driver, as a udev coldplug
would. The kernel command line is read as modprobe reads it: a module gets the parameters set for it
there (``libata.force=...``; the kernel applies those itself only to built-in code), and no device gets
a module that ``modprobe.blacklist=`` names as its driver.

The file systems of context media (ISO 9660, UDF, FAT) are loaded only when the context search or the
network stage is about to mount such a medium (``load_media_modules``): most boots have none, and under
emulation each module costs the stage 0.03-0.5 s.
"""

from __future__ import annotations

import ctypes
import errno
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from ucernvm.boot.state import BootState
from ucernvm.config import split_cmdline
from ucernvm.errors import UcernvmError
from ucernvm.image.kmods import ModuleIndex
from ucernvm.records import NamedTuple

_SYS_FINIT_MODULE = {"x86_64": 313, "aarch64": 273}
# Always needed: the scratch disk, the writable layer, the repository mount, and the entropy source
# (Python and TLS ask for random numbers; virtio-rng makes the kernel's pool ready early).
REQUIRED = ("ext4", "overlay", "fuse")
OPTIONAL = ("virtio_rng",)
# The file systems of context media and their character sets, loaded before the first such medium is mounted.
MEDIA_TYPES = ("iso9660", "udf", "vfat")
MEDIA_MODULES = ("isofs", "udf", "vfat", "nls_utf8", "nls_cp437", "nls_iso8859_1")
MAX_PASSES = 4

_libc = ctypes.CDLL(None, use_errno=True)


class LoadModule(NamedTuple):
    name: str
    path: str
    options: str = ""  # "param=value ..." as finit_module(2) takes them

    def describe(self) -> str:
        return f"load kernel module {self.name}" + (f" with {self.options}" if self.options else "")

    def apply(self) -> float:
        """Load the module; returns the seconds its initialisation took."""
        started = time.monotonic()
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            number = _SYS_FINIT_MODULE[os.uname().machine]
            if _libc.syscall(number, fd, self.options.encode(), 0) != 0:
                code = ctypes.get_errno()
                if code != errno.EEXIST:
                    raise UcernvmError(f"cannot load kernel module {self.name}: {os.strerror(code)}")
        finally:
            os.close(fd)
        return time.monotonic() - started


class DeviceScanner:
    """The modalias of every device the kernel knows, each device read once: later scans read only the
    devices that appeared since (os.scandir: pathlib's glob is slow under emulation)."""

    def __init__(self, sysfs: str = "/sys") -> None:
        self.buses = f"{sysfs}/bus"
        self.seen: set[str] = set()

    def new_aliases(self) -> set[str]:
        aliases = set()
        for bus in os.listdir(self.buses):
            try:
                devices = os.listdir(f"{self.buses}/{bus}/devices")
            except OSError:
                continue
            for device in devices:
                path = f"{self.buses}/{bus}/devices/{device}"
                if path in self.seen:
                    continue
                self.seen.add(path)
                try:
                    with open(f"{path}/modalias", "rb") as handle:
                        text = handle.read().strip().decode("ascii", "replace")
                except OSError:
                    continue
                if text:
                    aliases.add(text)
        return aliases


class ModuleLoader:
    """Loads what the devices and the boot need, each module as soon as the ones it needs are in.

    A bus or controller driver (one that registers a driver: virtio_pci, ahci) makes new devices appear
    (virtio disks and NICs, SCSI CD-ROMs); the devices are scanned again as soon as it is loaded, so their
    drivers load while slow probes elsewhere (ahci resets its SATA links) still run, as a udev coldplug
    would, instead of waiting for every module of a pass. ``load`` raises UcernvmError when a module fails.
    """

    def __init__(self, index: ModuleIndex, load: Callable[[str], None], scan: Callable[[], set[str]],
                 registers_driver: Callable[[str], bool], workers: int = 8,
                 blacklist: frozenset[str] = frozenset()) -> None:
        self.index, self._load, self._scan, self._registers_driver = index, load, scan, registers_driver
        self.workers = workers
        self.blacklist = blacklist  # never loaded for a device; a module asked for by name still is
        self.loaded: set[str] = set()
        self.failed: dict[str, str] = {}  # name -> what went wrong
        self._wanted: set[str] = set()

    def run(self, wanted: Iterable[str]) -> None:
        self._wanted.update(wanted)
        self._scan_devices()
        if not self.index.load_order(sorted(self._wanted - self.loaded - self.failed.keys())):
            return  # every driver is built into the kernel: no threads
        # Plain threads, not concurrent.futures: it imports logging (7 ms natively, 8-13 times that emulated).
        done: queue.SimpleQueue[tuple[str, BaseException | None]] = queue.SimpleQueue()
        busy: set[str] = set()
        for scan in range(MAX_PASSES):  # a last scan may find devices a late probe added
            if scan:
                self._scan_devices()
            self._start_ready(busy, done)
            if not busy:
                return
            while busy:
                finished = [done.get()]
                while not done.empty():
                    finished.append(done.get())
                rescan = False
                for name, error in finished:
                    busy.discard(name)
                    if error is None:
                        self.loaded.add(name)
                        rescan = rescan or self._registers_driver(name)
                    elif isinstance(error, UcernvmError):
                        self.failed[name] = error.message
                    else:
                        raise error
                if rescan:
                    self._scan_devices()
                self._start_ready(busy, done)

    def _scan_devices(self) -> None:
        for alias in self._scan():
            self._wanted.update(name for name in self.index.resolve(alias) if name not in self.blacklist)

    def _start_ready(self, busy: set[str], done: queue.SimpleQueue[tuple[str, BaseException | None]]) -> None:
        """A thread for each module whose needs are loaded, up to ``workers`` at a time."""
        order = self.index.load_order(sorted(self._wanted - self.loaded - self.failed.keys()))
        planned = set(order)
        for name in order:
            if len(busy) >= self.workers:
                return
            if name in self.loaded or name in busy or name in self.failed:
                continue
            needs = [dep for dep in self.index.deps.get(name, []) + self.index.soft_targets(name) if dep in planned]
            broken = [dep for dep in needs if dep in self.failed]
            if broken:
                self.failed[name] = f"cannot load kernel module {name}: it needs {', '.join(broken)}, which failed"
            elif all(dep in self.loaded for dep in needs):
                busy.add(name)
                threading.Thread(target=self._load_reporting, args=(name, done), daemon=True).start()

    def _load_reporting(self, name: str, done: queue.SimpleQueue[tuple[str, BaseException | None]]) -> None:
        try:
            self._load(name)
        except BaseException as error:  # the caller records a failure or raises a bug
            done.put((name, error))
        else:
            done.put((name, None))


def cmdline_options(cmdline: str) -> dict[str, str]:
    """The module parameters a kernel command line sets (``module.param[=value]``), by module name, as
    modprobe reads them from /proc/cmdline: a module's dashes are underscores, a value with spaces is
    quoted again for the kernel's parser, and a module's parameters keep their order."""
    options: dict[str, list[str]] = {}
    for word in split_cmdline(cmdline):
        key, equals, value = word.partition("=")
        module, dot, param = key.partition(".")
        if not (dot and module and param):
            continue
        if " " in value:
            value = f'"{value}"'
        options.setdefault(module.replace("-", "_"), []).append(f"{param}={value}" if equals else param)
    return {module: " ".join(params) for module, params in options.items()}


def cmdline_blacklist(options: dict[str, str]) -> frozenset[str]:
    """The modules ``modprobe.blacklist=a,b`` names (in *options*, from cmdline_options): as modprobe
    does, no device gets them as its driver, and a module asked for by name still loads."""
    names: set[str] = set()
    for option in split_cmdline(options.get("modprobe", "")):
        key, _, value = option.partition("=")
        if key == "blacklist":
            names.update(name.replace("-", "_") for name in value.split(",") if name)
    return frozenset(names)


def registers_driver(name: str, sysfs: str = "/sys") -> bool:
    """Whether a loaded module registered a device driver (so new devices may have appeared)."""
    return os.path.isdir(f"{sysfs}/module/{name}/drivers")


def _release(state: BootState, modules: str) -> Path | None:
    """The image's modules of the running kernel; None in a dry run or where the image has none."""
    release = Path(modules) / os.uname().release
    if state.system.dry_run or not (release / "modules.dep").exists():
        return None
    return release


def modules_stage(state: BootState, modules: str = "/lib/modules", sysfs: str = "/sys") -> None:
    release_name = os.uname().release
    release = _release(state, modules)
    if release is None:
        state.log.info(f"no kernel modules for {release_name} here: nothing to load")
        state.facts["modules"] = {"loaded": [], "release": release_name}
        return
    clock = time.monotonic()
    phases: list[tuple[str, float]] = []

    def phase(name: str) -> None:
        nonlocal clock
        now = time.monotonic()
        phases.append((name, round(now - clock, 3)))
        clock = now

    index = ModuleIndex.load(release)
    all_options = cmdline_options(state.cmdline)
    options = {name: value for name, value in all_options.items() if name in index.paths}
    blacklist = cmdline_blacklist(all_options)
    phase("index")
    seconds: dict[str, float] = {}

    def load(name: str) -> None:
        seconds[name] = state.system.do(LoadModule(name, str(release / index.paths[name]), options.get(name, "")))

    loader = ModuleLoader(index, load, DeviceScanner(sysfs).new_aliases, lambda name: registers_driver(name, sysfs),
                          blacklist=blacklist)
    loader.run(name for name in REQUIRED + OPTIONAL if index.resolve(name))
    phase(f"load {len(loader.loaded)}")
    loaded = loader.loaded
    broken = [loader.failed[name] for name in REQUIRED if name in loader.failed]
    if broken:
        raise UcernvmError("; ".join(broken), "rebuild the image")
    missing = [name for name in REQUIRED if name not in loaded and name not in index.builtin]
    if missing:
        raise UcernvmError(f"kernel modules {', '.join(missing)} are missing from the image", "rebuild the image")
    for name in sorted(loader.failed):  # a device's driver: its disk or NIC is missing, which later stages meet
        state.warn(f"modules: {loader.failed[name]}")
    slowest = sorted(seconds.items(), key=lambda item: -item[1])[:5]
    state.facts["modules"] = {
        "release": release_name,
        "loaded": sorted(loaded),
        "failed": sorted(loader.failed.values()),
        "slowest": {name: round(value, 3) for name, value in slowest},
        "options": {name: value for name, value in options.items() if name in loaded},
        "blacklisted": sorted(blacklist),
        "phases": phases,
    }
    state.log.info(f"loaded {len(loaded)} kernel modules; slowest: " + ", ".join(f"{n} {v:.2f} s" for n, v in slowest))


def load_media_modules(state: BootState, fstype: str, modules: str = "/lib/modules", sysfs: str = "/sys") -> None:
    """Before a medium of *fstype* is mounted: the context media's file systems and character sets
    (MEDIA_MODULES), those not loaded yet, in dependency order. One that fails is a warning; the mount
    then fails with the kernel's reason."""
    release = _release(state, modules) if fstype in MEDIA_TYPES else None
    if release is None:
        return
    index = ModuleIndex.load(release)
    wanted = [name for name in MEDIA_MODULES if index.resolve(name)]
    missing = [name for name in index.load_order(wanted) if not os.path.isdir(f"{sysfs}/module/{name}")]
    if not missing:
        return
    options = cmdline_options(state.cmdline)
    loaded = []
    for name in missing:
        try:
            state.system.do(LoadModule(name, str(release / index.paths[name]), options.get(name, "")))
        except UcernvmError as error:
            state.warn(f"modules: {error.message}")
            continue
        loaded.append(name)
    state.facts["media_modules"] = loaded
    state.log.info(f"loaded {len(loaded)} kernel modules for {fstype} media: {', '.join(loaded)}")
