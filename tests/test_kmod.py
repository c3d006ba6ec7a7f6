"""The modules stage's scheduling (boot/kmod.py ModuleLoader) on a depmod index written by the test: each
module after the ones it needs, drivers of devices that a bus driver brings up loaded while a slow
probe elsewhere still runs, failures recorded without stopping the rest; module parameters read from the
kernel command line as modprobe reads them. The loads themselves are functions that sleep; finit_module
itself, and a parameter from the command line reaching a loaded module, run in the QEMU boot tests."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from ucernvm.boot.kmod import (DeviceScanner, LoadModule, ModuleLoader, cmdline_blacklist, cmdline_options,
                               load_media_modules, modules_stage)
from ucernvm.boot.log import BootLog
from ucernvm.boot.state import BootState
from ucernvm.boot.system import Action, RealSystem
from ucernvm.errors import UcernvmError
from ucernvm.image.kmods import ModuleIndex

DEP = """\
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/ata/libata.ko:
kernel/drivers/ata/ahci.ko: kernel/drivers/ata/libata.ko
kernel/fs/jbd2/jbd2.ko:
kernel/fs/ext4/ext4.ko: kernel/fs/jbd2/jbd2.ko
"""
ALIAS = """\
alias pci:v00001AF4d00001000sv*sd*bc*sc*i* virtio_pci
alias pci:v00008086d00002922sv*sd*bc01sc06i01* ahci
alias virtio:d00000001v* virtio_net
alias virtio:d00000002v* virtio_blk
"""
PCI_DEVICES = {"pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00", "pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01"}
VIRTIO_DEVICES = {"virtio:d00000001v00001AF4", "virtio:d00000002v00001AF4"}
DRIVERS = {"virtio_pci", "ahci", "virtio_net", "virtio_blk"}


@pytest.fixture
def index(tmp_path: Path) -> ModuleIndex:
    (tmp_path / "modules.dep").write_text(DEP)
    (tmp_path / "modules.alias").write_text(ALIAS)
    return ModuleIndex.load(tmp_path)


class FakeKernel:
    """Loads by sleeping; virtio_pci brings up the virtio devices, as the real bus driver does."""

    def __init__(self, seconds: dict[str, float], failing: set[str] = frozenset()) -> None:
        self.seconds, self.failing = seconds, failing
        self.devices = set(PCI_DEVICES)
        self.loaded: list[str] = []
        self.finished: dict[str, float] = {}
        self.started: dict[str, float] = {}
        self.lock = threading.Lock()

    def load(self, name: str) -> None:
        self.started[name] = time.monotonic()
        time.sleep(self.seconds.get(name, 0.01))
        if name in self.failing:
            raise UcernvmError(f"cannot load kernel module {name}: Exec format error")
        with self.lock:
            self.loaded.append(name)
            if name == "virtio_pci":
                self.devices |= VIRTIO_DEVICES
            self.finished[name] = time.monotonic()

    def scan(self) -> set[str]:
        with self.lock:
            return set(self.devices)


def loader_for(index: ModuleIndex, kernel: FakeKernel) -> ModuleLoader:
    return ModuleLoader(index, kernel.load, kernel.scan, lambda name: name in DRIVERS)


def test_each_module_after_what_it_needs_and_the_new_devices_drivers_too(index: ModuleIndex) -> None:
    kernel = FakeKernel({})
    loader = loader_for(index, kernel)
    loader.run(["ext4"])
    assert loader.loaded == {"virtio", "virtio_ring", "virtio_pci", "virtio_net", "virtio_blk", "libata", "ahci",
                             "jbd2", "ext4"} and not loader.failed
    for name, needs in index.deps.items():
        for need in needs:
            assert kernel.finished[need] <= kernel.started[name], f"{name} started before {need} was loaded"


def test_a_slow_probe_does_not_hold_up_the_drivers_of_other_new_devices(index: ModuleIndex) -> None:
    kernel = FakeKernel({"ahci": 0.8, "virtio_pci": 0.05})
    loader_for(index, kernel).run([])
    # virtio_pci's devices appeared while ahci was probing: their drivers loaded before ahci finished.
    assert kernel.finished["virtio_net"] < kernel.finished["ahci"]
    assert kernel.finished["virtio_blk"] < kernel.finished["ahci"]


def test_a_failed_module_and_what_needs_it_are_recorded_and_the_rest_loads(index: ModuleIndex) -> None:
    kernel = FakeKernel({}, failing={"jbd2"})
    loader = loader_for(index, kernel)
    loader.run(["ext4"])
    assert loader.failed == {"jbd2": "cannot load kernel module jbd2: Exec format error",
                             "ext4": "cannot load kernel module ext4: it needs jbd2, which failed"}
    assert "ext4" not in kernel.started  # never tried: it would only fail on unknown symbols
    assert {"virtio_net", "virtio_blk", "ahci"} <= loader.loaded


def test_a_bug_in_loading_is_not_swallowed(index: ModuleIndex) -> None:
    def load(name: str) -> None:
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError, match="bug"):
        ModuleLoader(index, load, lambda: set(PCI_DEVICES), lambda name: False).run([])


def test_the_scanner_reads_each_device_once(tmp_path: Path) -> None:
    def device(bus: str, name: str, alias: str) -> None:
        (tmp_path / "bus" / bus / "devices" / name).mkdir(parents=True)
        (tmp_path / "bus" / bus / "devices" / name / "modalias").write_text(alias + "\n")

    device("pci", "0000:00:01.0", "pci:v00001AF4d00001000")
    (tmp_path / "bus" / "pci" / "devices" / "0000:00:00.0").mkdir()  # no modalias: no driver to look for
    scanner = DeviceScanner(str(tmp_path))
    assert scanner.new_aliases() == {"pci:v00001AF4d00001000"}
    device("virtio", "virtio0", "virtio:d00000001v00001AF4")
    assert scanner.new_aliases() == {"virtio:d00000001v00001AF4"}
    assert scanner.new_aliases() == set()


def test_module_parameters_come_from_the_command_line_as_modprobe_reads_them() -> None:
    cmdline = ('console=ttyS0 root=/dev/vda1 libata.force=nodbdelay virtio-net.napi_tx=1 quiet '
               'libata.noacpi ucernvm.panic=poweroff dyndbg.x="file a b" libata.dma=0 .x=1 y.=2')
    assert cmdline_options(cmdline) == {
        "libata": "force=nodbdelay noacpi dma=0",  # in their order, a bare flag as given
        "virtio_net": "napi_tx=1",  # the module's name with underscores, as the kernel knows it
        "ucernvm": "panic=poweroff",  # the stage passes only those of modules it loads
        "dyndbg": 'x="file a b"',  # quoted again: the kernel splits the parameters at spaces
    }
    assert cmdline_options("") == {}


def test_a_blacklisted_module_drives_no_device_but_loads_when_asked_for(index: ModuleIndex) -> None:
    options = cmdline_options("quiet modprobe.blacklist=virtio-net,jbd2 libata.force=nodbdelay")
    blacklist = cmdline_blacklist(options)
    assert blacklist == {"virtio_net", "jbd2"}
    kernel = FakeKernel({})
    loader = ModuleLoader(index, kernel.load, kernel.scan, lambda name: name in DRIVERS, blacklist=blacklist)
    loader.run(["ext4"])
    assert "virtio_net" not in kernel.started  # its device is there, but it is nobody's driver now
    assert {"virtio_blk", "ahci", "jbd2", "ext4"} <= loader.loaded  # jbd2: ext4, asked for by name, needs it
    assert cmdline_blacklist(cmdline_options("modprobe.blacklist=")) == frozenset()


class FailingLoads(RealSystem):
    """finit_module as a kernel that refuses some modules (no module is loaded into the test's kernel)."""

    def __init__(self, refused: set[str]) -> None:
        super().__init__()
        self.refused = refused

    def do(self, action: Action) -> Any:
        if not isinstance(action, LoadModule):
            return super().do(action)
        self.actions.append(action.describe())
        if action.name in self.refused:
            raise UcernvmError(f"cannot load kernel module {action.name}: Exec format error")
        return 0.0


def test_a_driver_that_fails_to_load_is_a_warning_of_the_boot(tmp_path: Path) -> None:
    release = tmp_path / "modules" / os.uname().release
    release.mkdir(parents=True)
    (release / "modules.dep").write_text(DEP + "kernel/fs/overlayfs/overlay.ko:\nkernel/fs/fuse/fuse.ko:\n")
    (release / "modules.alias").write_text(ALIAS)
    sysfs = tmp_path / "sys"
    for number, alias in enumerate(sorted(VIRTIO_DEVICES)):  # a virtio NIC and disk, their bus driver built in
        (sysfs / "bus" / "virtio" / "devices" / f"virtio{number}").mkdir(parents=True)
        (sysfs / "bus" / "virtio" / "devices" / f"virtio{number}" / "modalias").write_text(alias + "\n")
    state = BootState(FailingLoads({"virtio_net"}), BootLog(io.StringIO()))
    modules_stage(state, modules=str(tmp_path / "modules"), sysfs=str(sysfs))
    assert "virtio_net" not in state.facts["modules"]["loaded"] and "virtio_blk" in state.facts["modules"]["loaded"]
    assert state.warnings == ["modules: cannot load kernel module virtio_net: Exec format error"]


MEDIA_DEP = DEP + """\
kernel/fs/isofs/isofs.ko:
kernel/fs/fat/fat.ko:
kernel/fs/fat/vfat.ko: kernel/fs/fat/fat.ko
kernel/fs/nls/nls_utf8.ko:
kernel/fs/nls/nls_cp437.ko:
kernel/fs/overlayfs/overlay.ko:
kernel/fs/fuse/fuse.ko:
"""


def media_release(tmp_path: Path) -> Path:
    """An image's modules: the context media's file systems among them, udf and nls_iso8859_1 built in."""
    release = tmp_path / "modules" / os.uname().release
    release.mkdir(parents=True)
    (release / "modules.dep").write_text(MEDIA_DEP)
    (release / "modules.alias").write_text(ALIAS)
    (release / "modules.builtin").write_text("kernel/fs/udf/udf.ko\nkernel/fs/nls/nls_iso8859-1.ko\n")
    return release


def test_the_stage_leaves_the_media_file_systems_to_the_first_medium(tmp_path: Path) -> None:
    media_release(tmp_path)
    (tmp_path / "sys" / "bus").mkdir(parents=True)  # no device needs a driver
    state = BootState(FailingLoads(set()), BootLog(io.StringIO()))
    modules_stage(state, modules=str(tmp_path / "modules"), sysfs=str(tmp_path / "sys"))
    assert state.facts["modules"]["loaded"] == ["ext4", "fuse", "jbd2", "overlay"]
    assert "media_modules" not in state.facts


def test_a_medium_s_file_system_is_loaded_before_its_mount_and_only_once(tmp_path: Path) -> None:
    media_release(tmp_path)
    sysfs = tmp_path / "sys"
    (sysfs / "module" / "nls_utf8").mkdir(parents=True)  # loaded already (by the network stage, say)
    system = FailingLoads(set())
    state = BootState(system, BootLog(io.StringIO()), cmdline="fat.debug=1")
    load_media_modules(state, "ext4", modules=str(tmp_path / "modules"), sysfs=str(sysfs))
    assert system.actions == []  # not a medium's file system: the modules stage loaded it
    load_media_modules(state, "iso9660", modules=str(tmp_path / "modules"), sysfs=str(sysfs))
    # udf and nls_iso8859_1 are built in; vfat after the fat it needs, with fat's parameter from the command line
    assert system.actions == ["load kernel module isofs", "load kernel module fat with debug=1",
                              "load kernel module vfat", "load kernel module nls_cp437"]
    assert state.facts["media_modules"] == ["isofs", "fat", "vfat", "nls_cp437"]


def test_a_media_module_that_fails_is_a_warning(tmp_path: Path) -> None:
    media_release(tmp_path)
    state = BootState(FailingLoads({"isofs"}), BootLog(io.StringIO()))
    load_media_modules(state, "vfat", modules=str(tmp_path / "modules"), sysfs=str(tmp_path / "sys"))
    assert state.warnings == ["modules: cannot load kernel module isofs: Exec format error"]
    assert state.facts["media_modules"] == ["fat", "vfat", "nls_utf8", "nls_cp437"]


def test_the_context_search_loads_a_medium_s_file_system_before_mounting_it(tmp_path: Path) -> None:
    from ucernvm.boot.contextualize import MediaMounter
    from ucernvm.context.found import BlockDevice

    media_release(tmp_path)
    system = FailingLoads(set())
    state = BootState(system, BootLog(io.StringIO()))

    class Recording:
        def mount(self, device: BlockDevice) -> Path:
            system.actions.append(f"mount {device.path}")
            return tmp_path

        def unmount(self, path: Path) -> None:
            system.actions.append(f"unmount {path}")

    mounter = MediaMounter(state, Recording(), modules=str(tmp_path / "modules"), sysfs=str(tmp_path / "sys"))
    mounter.mount(BlockDevice("/dev/vdb", "ext4", ""))
    mounter.mount(BlockDevice("/dev/sr0", "iso9660", "CONTEXT"))
    assert system.actions == ["mount /dev/vdb", "load kernel module isofs", "load kernel module fat",
                              "load kernel module vfat", "load kernel module nls_utf8", "load kernel module nls_cp437",
                              "mount /dev/sr0"]



def test_loading_modules_imports_neither_concurrent_futures_nor_logging(tmp_path: Path) -> None:
    """PID 1 loads the modules in plain threads: concurrent.futures imports logging, 0.06-0.09 s emulated."""
    (tmp_path / "modules.dep").write_text(DEP)
    code = ("import sys; from pathlib import Path; from ucernvm.boot.kmod import ModuleLoader; "
            "from ucernvm.image.kmods import ModuleIndex; loaded = []; "
            "ModuleLoader(ModuleIndex.load(Path(sys.argv[1])), loaded.append, set, lambda name: False).run(['ext4']); "
            "print(*sorted(loaded), 'concurrent.futures' in sys.modules, 'logging' in sys.modules)")
    result = subprocess.run([sys.executable, "-S", "-c", code, str(tmp_path)], capture_output=True, text=True,
                            check=False, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ext4", "jbd2", "False", "False"]
