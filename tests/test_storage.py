"""The storage stage on real loop devices: first boot, later boots, growing, refusals, dry run."""

from __future__ import annotations

import errno
import functools
import hashlib
import io
import itertools
import json
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from ucernvm.boot import storage
from ucernvm.boot.blockdev import FileSystem, probe_path
from ucernvm.boot.log import BootLog
from ucernvm.boot.partition import read_table
from ucernvm.boot.pipeline import BootFailure, Stage, run_stages
from ucernvm.boot.state import BootState
from ucernvm.boot.storage import BOOT_LABEL, LAYOUT, storage_stage
from ucernvm.boot.system import DryRunSystem, RealSystem, System
from ucernvm.config import BootConfig

MIB = 1 << 20
GIB = 1 << 30


def _unusable() -> str:
    if os.geteuid() != 0:
        return "loop devices, mounts and mknod need root"
    if not Path("/dev/loop-control").exists():
        return "no /dev/loop-control (the loop driver is not available)"
    missing = [tool for tool in ("losetup", "sfdisk", "mke2fs", "e2fsck", "tune2fs", "resize2fs") if not shutil.which(tool)]
    return f"missing tools: {', '.join(missing)}" if missing else ""


pytestmark = pytest.mark.skipif(bool(_unusable()), reason=_unusable() or "usable")


class Rig:
    """Backing files on loop devices, and boots of the storage stage into a root under tmp_path."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.root = tmp_path / "root"
        self.root.mkdir()
        self.backing: dict[str, Path] = {}  # device -> file
        self.dry_roots: list[Path] = []

    def disk(self, name: str, size: int, script: str = "") -> Path:
        path = self.tmp / name
        with path.open("wb") as handle:
            handle.truncate(size)
        if script:
            subprocess.run(["sfdisk", "-q", str(path)], input=script, text=True, check=True, capture_output=True)
        return path

    def attach(self, backing: Path, read_only: bool = False) -> str:
        argv = ["losetup", "-f", "--show", "--partscan", *(["-r"] if read_only else []), str(backing)]
        result = subprocess.run(argv, capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"no free loop device: {result.stderr.strip()}")
        device = result.stdout.strip()
        self.backing[device] = backing
        return device

    def boot(self, devices: list[str], system: System | None = None, **settings: object) -> BootState:
        state = BootState(system or RealSystem(str(self.root)), BootLog(io.StringIO()), config=BootConfig(**settings))
        stage = functools.partial(storage_stage, devices=[Path(device).name for device in devices])
        run_stages(state, [Stage("storage", (stage,))])
        return state

    def dry_system(self) -> DryRunSystem:
        system = DryRunSystem()
        self.dry_roots.append(system.root)
        return system

    def unmount(self) -> None:
        with open("/proc/self/mounts") as mounts:
            targets = [line.split()[1] for line in mounts if line.split()[1].startswith(str(self.root))]
        for target in reversed(targets):
            subprocess.run(["umount", target], check=False, capture_output=True)

    def detach(self, device: str) -> None:
        subprocess.run(["losetup", "-d", device], check=False, capture_output=True)
        self.backing.pop(device, None)

    def reboot(self, devices: list[str]) -> list[str]:
        """Unmount and detach, then attach the same files again: the kernel forgets the partitions."""
        self.unmount()
        files = [self.backing[device] for device in devices]
        for device in devices:
            self.detach(device)
        return [self.attach(path) for path in files]

    def close(self) -> None:
        self.unmount()
        for device in list(self.backing):
            self.detach(device)
        for root in self.dry_roots:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def rig(tmp_path: Path):
    rig = Rig(tmp_path)
    try:
        yield rig
    finally:
        rig.close()


def sfdisk_json(device: str) -> dict:
    return json.loads(subprocess.run(["sfdisk", "-J", device], capture_output=True, check=True).stdout)["partitiontable"]


def digest(device: str) -> str:
    with open(device, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def assert_scratch(state: BootState) -> None:
    assert os.path.ismount(state.scratch)
    assert all((state.scratch / name).is_dir() for name in LAYOUT)
    assert probe_path(state.scratch_device) == FileSystem("ext4", "UROOT")


def test_empty_disk_becomes_the_scratch_disk(rig: Rig) -> None:
    device = rig.attach(rig.disk("empty", 256 * MIB))
    state = rig.boot([device])
    assert state.scratch_fresh and state.scratch_device == f"{device}p1"
    assert_scratch(state)
    [part] = sfdisk_json(device)["partitions"]
    assert (part["start"], part["size"], part["type"]) == (2048, 256 * 2048 - 2048, "83")
    facts = state.facts["storage"]
    assert facts["fresh"] and facts["device"] == state.scratch_device and facts["free"] > 200 * MIB
    assert "empty disk" in facts["created"]
    assert not (state.scratch / "aux" / "safety").exists()  # no reserve of 50 MiB on a disk under 1000 MiB
    header = subprocess.run(["dumpe2fs", "-h", state.scratch_device], capture_output=True, text=True, check=True).stdout
    assert re.search(r"^Maximum mount count:\s+-1$", header, re.M), header  # never checked for its mount count
    assert re.search(r"^Check interval:\s+0 ", header, re.M), header  # nor for its age


def test_second_boot_reuses_the_scratch_disk(rig: Rig) -> None:
    device = rig.attach(rig.disk("empty", 128 * MIB))
    first = rig.boot([device])
    (first.scratch / "persistent" / "kept").write_text("from the first boot")
    [device] = rig.reboot([device])
    second = rig.boot([device])
    assert not second.scratch_fresh and not second.facts["storage"]["fresh"]
    assert second.facts["storage"]["fsck"] == "clean"
    assert_scratch(second)
    assert (second.scratch / "persistent" / "kept").read_text() == "from the first boot"
    actions = second.system.actions
    assert not any("e2fsck" in action for action in actions)  # unmounted cleanly: e2fsck has nothing to do
    assert not any("mke2fs" in action or "partition table" in action for action in actions)


def test_a_link_the_os_left_in_place_of_a_directory_is_replaced_not_followed(rig: Rig) -> None:
    """The OS writes the scratch disk: a later boot makes its directories there, never through a link to
    the loader's own tree or another mount, nor over a file."""
    device = rig.attach(rig.disk("empty", 128 * MIB))
    first = rig.boot([device])
    outside = rig.tmp / "outside"
    outside.mkdir()
    (outside / "kept").write_text("not the scratch disk's")
    for name in LAYOUT:
        os.rmdir(first.scratch / name)
        if name == "ulogs":
            (first.scratch / name).write_text("a file")
        else:
            (first.scratch / name).symlink_to(outside)
    [device] = rig.reboot([device])
    second = rig.boot([device])
    assert_scratch(second)
    assert not any((second.scratch / name).is_symlink() for name in LAYOUT)
    assert [path.name for path in outside.iterdir()] == ["kept"]
    assert second.warnings == [f"{name} on the scratch disk is {'not a directory' if name == 'ulogs' else 'a symbolic link'}"
                               ": removed, not followed, and made a directory" for name in LAYOUT]


@pytest.mark.parametrize("requests, reason", [
    (["ssv state 0"], "it was not cleanly unmounted"),
    (["feature needs_recovery"], "its journal has transactions to replay"),
    (["feature orphan_present"], "it has orphan inodes to release"),
    (["ssv last_orphan 11"], "it has orphan inodes to release"),
    (["ssv max_mnt_count 3", "ssv mnt_count 5"], "it was mounted 5 times since its last check"),
    (["ssv checkinterval 86400", "ssv lastcheck 20200101"], "its check interval has passed"),
])  # fmt: skip
def test_the_scratch_disk_is_checked_when_its_superblock_asks_for_it(rig: Rig, requests: list[str], reason: str) -> None:
    if shutil.which("debugfs") is None:
        pytest.skip("debugfs (e2fsprogs) is not installed")
    device = rig.attach(rig.disk("empty", 64 * MIB))
    rig.boot([device])
    rig.unmount()
    for request in requests:  # what a crash, a long life or a file system made elsewhere leave
        subprocess.run(["debugfs", "-w", "-R", request, f"{device}p1"], check=True, capture_output=True)
    state = rig.boot([device])
    assert f"check file system {device}p1 (e2fsck -p)" in state.system.actions
    assert state.facts["storage"]["fsck"] in (f"checked, clean ({reason})", f"repaired (e2fsck exit code 1; {reason})")
    assert_scratch(state)


def test_resize_rootfs_off_takes_the_first_20_gib(rig: Rig) -> None:
    device = rig.attach(rig.disk("big", 30 * GIB))
    state = rig.boot([device], resize_rootfs=False)
    assert_scratch(state)
    scratch, spare = sfdisk_json(device)["partitions"]
    assert (scratch["start"], scratch["size"]) == (2048, 20 * GIB // 512)
    assert (spare["start"], spare["start"] + spare["size"]) == (2048 + 20 * GIB // 512, 30 * GIB // 512)
    assert probe_path(f"{device}p2") is None  # left unformatted, but the kernel knows it
    stats = os.statvfs(state.scratch)
    assert 19 * GIB < stats.f_blocks * stats.f_frsize <= 20 * GIB
    assert state.facts["storage"]["spare"] == f"{device}p2"


def boot_disk(rig: Rig, kind: str, size: int, grow_to: int = 0) -> Path:
    """A disk with a 100 MiB boot partition holding a file system labelled as the boot medium."""
    part_type = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B" if kind == "gpt" else "c"
    path = rig.disk(f"boot-{kind}", size, f"label: {kind}\nstart=2048, size=100M, type={part_type}\n")
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext2", "-L", BOOT_LABEL, "-E", f"offset={MIB}", str(path), "100M"],
                   check=True)  # fmt: skip
    if grow_to:
        os.truncate(path, grow_to)  # an image written onto a larger disk: its backup GPT is not at the end
    return path


@pytest.mark.parametrize("kind, use_boothd", [("dos", False), ("gpt", True)])
def test_free_space_on_the_boot_disk(rig: Rig, kind: str, use_boothd: bool) -> None:
    device = rig.attach(boot_disk(rig, kind, 256 * MIB if kind == "gpt" else GIB, grow_to=GIB if kind == "gpt" else 0))
    empty = rig.attach(rig.disk("empty", 256 * MIB))
    untouched = digest(empty)
    devices = [empty, device] if use_boothd else [device]
    state = rig.boot(devices, use_boothd=use_boothd)
    assert_scratch(state)
    assert state.scratch_device == f"{device}p2" and "boot disk" in state.facts["storage"]["created"]
    dump = sfdisk_json(device)
    boot, scratch = dump["partitions"]
    assert (boot["start"], boot["size"]) == (2048, 100 * 2048)
    assert scratch["start"] == 2048 + 100 * 2048
    assert scratch["start"] + scratch["size"] == (GIB // 512 - 33 if kind == "gpt" else GIB // 512)
    if kind == "gpt":
        assert dump["lastlba"] == GIB // 512 - 34
    verify = subprocess.run(["sfdisk", "--verify", device], capture_output=True, text=True)
    assert verify.returncode == 0 and "No errors detected" in verify.stdout
    assert digest(empty) == untouched  # use_boothd: the empty disk is not used
    assert probe_path(device, MIB) == FileSystem("ext2", BOOT_LABEL)


def _grown_after_a_resize_request(rig: Rig, backing: Path, device: str, size: int) -> int:
    """A first boot that leaves a file and asks for a resize (aux/resize), then the disk grown to ``size``
    under the unmounted file system; the file system's blocks before."""
    first = rig.boot([device])
    (first.scratch / "persistent" / "kept").write_text("data")
    (first.scratch / "aux" / "resize").touch()
    before = os.statvfs(first.scratch).f_blocks
    rig.unmount()
    os.truncate(backing, size)
    subprocess.run(["losetup", "-c", device], check=True)
    return before


@pytest.mark.parametrize("layout", ["empty-mbr", "boot-gpt"])
def test_aux_resize_grows_partition_and_file_system(rig: Rig, layout: str) -> None:
    backing = rig.disk("empty", 256 * MIB) if layout == "empty-mbr" else boot_disk(rig, "gpt", GIB)
    device = rig.attach(backing)
    size = 512 * MIB if layout == "empty-mbr" else 1536 * MIB
    before = _grown_after_a_resize_request(rig, backing, device, size)

    state = rig.boot([device])
    assert_scratch(state)
    assert not (state.scratch / "aux" / "resize").exists()
    assert (state.scratch / "persistent" / "kept").read_text() == "data"
    after = os.statvfs(state.scratch).f_blocks
    assert after > before * 1.5
    resized = state.facts["storage"]["resized"]
    assert resized["partition_gained"] == size - (256 * MIB if layout == "empty-mbr" else GIB)
    assert resized["after"] > resized["before"]
    last = sfdisk_json(device)["partitions"][-1]
    assert last["start"] + last["size"] == size // 512 - (33 if layout == "boot-gpt" else 0)
    verify = subprocess.run(["sfdisk", "--verify", device], capture_output=True, text=True)
    assert "No errors detected" in verify.stdout

    [device] = rig.reboot([device])  # the grown table is what the next boot finds
    again = rig.boot([device])
    assert os.statvfs(again.scratch).f_blocks == after and again.facts["storage"]["resized"] is None


def test_amazon_ephemeral_disk_counts_as_empty(rig: Rig) -> None:
    backing = rig.disk("ephemeral", 128 * MIB)
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext3", str(backing)], check=True)
    device = rig.attach(backing)
    state = rig.boot([device])
    assert_scratch(state)
    assert "Amazon" in state.facts["storage"]["created"]
    assert probe_path(device) is None  # the old superblock was wiped


def test_disks_with_contents_are_not_touched(rig: Rig) -> None:
    unknown = rig.disk("unknown", 64 * MIB)
    with unknown.open("r+b") as handle:
        handle.seek(512)
        handle.write(b"LABELONE\x01\x00\x00\x00 LVM2 001")  # a physical volume: not ours to format
    used = rig.disk("used", 64 * MIB)
    content = rig.tmp / "content"
    content.mkdir()
    (content / "data.txt").write_text("keep me")
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext3", "-d", str(content), str(used)], check=True)
    devices = [rig.attach(unknown), rig.attach(used), rig.attach(rig.disk("readonly", 64 * MIB), read_only=True)]
    before = [digest(device) for device in devices]
    with pytest.raises(BootFailure) as failure:
        rig.boot(devices)
    assert failure.value.message.startswith("no empty disk and no free space for the scratch file system (")
    assert "empty but read-only or removable" in failure.value.message
    assert "attach an empty disk of at least 20 GB" in failure.value.hint
    assert [digest(device) for device in devices] == before
    assert not os.path.ismount(rig.root / "root.rw")


def test_unrepairable_scratch_file_system_stops_the_boot(rig: Rig) -> None:
    if shutil.which("debugfs") is None:
        pytest.skip("debugfs (e2fsprogs) is not installed")
    device = rig.attach(rig.disk("empty", 64 * MIB))
    rig.boot([device])
    rig.unmount()
    for request in ("clri <2>", "ssv state 2"):  # no root directory, and the file system marked as having errors
        subprocess.run(["debugfs", "-w", "-R", request, f"{device}p1"], check=True, capture_output=True)
    with pytest.raises(BootFailure) as failure:
        rig.boot([device])
    assert f"e2fsck cannot repair {device}p1 by itself (exit code 4): " in failure.value.message
    assert "Root inode is not a directory" in failure.value.message
    assert f"e2fsck -f {device}p1" in failure.value.hint


@pytest.mark.parametrize("whole", [False, True])
def test_a_scratch_disk_attached_read_only_stops_the_boot_with_why(rig: Rig, whole: bool) -> None:
    """Not the hint for a mount that fails for want of the ext4 module: the disk is fine, only read-only."""
    backing = rig.disk("scratch", 64 * MIB)
    if whole:
        subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-L", "UROOT", str(backing)], check=True)
    else:
        device = rig.attach(backing)
        rig.boot([device])
        rig.unmount()
        rig.detach(device)
    device = rig.attach(backing, read_only=True)
    node = device if whole else f"{device}p1"
    with pytest.raises(BootFailure) as failure:
        rig.boot([device])
    assert failure.value.message == f"the scratch file system UROOT is on {node}, a read-only device"
    assert failure.value.hint == "attach its disk read-write: the scratch disk is written at every boot"
    assert not os.path.ismount(rig.root / "root.rw")


def test_dry_run_writes_nothing(rig: Rig) -> None:
    device = rig.attach(rig.disk("empty", 64 * MIB))
    before = digest(device)
    system = rig.dry_system()
    state = rig.boot([device], system=system)
    assert digest(device) == before
    plan = "\n".join(system.actions)
    assert f"write partition table MBR [1: 1.0 MiB+63.0 MiB] on {device} after wiping its first and last MiB" in plan
    assert f"add kernel partition 1 of {device}" in plan
    assert f"run mke2fs -q -F -t ext4 -L UROOT -E lazy_itable_init=1,lazy_journal_init=1 {device}p1" in plan
    assert f"mount ext4 {device}p1 on {state.scratch}" in plan
    assert "in reserve" not in plan  # a disk under 1000 MiB keeps none
    assert all((state.scratch / name).is_dir() for name in LAYOUT)  # later stages can use the directory
    assert str(state.scratch).startswith(str(system.root)) and not os.path.ismount(state.scratch)
    assert not os.path.exists(f"{device}p1")


def test_the_reserve_a_first_boot_keeps_is_in_its_dry_run_plan(rig: Rig) -> None:
    """A disk of 1 GiB, whose new file system has less than 1000 MiB: the dry run plans what the boot does."""
    device = rig.attach(rig.disk("empty", GIB))
    system = rig.dry_system()
    dry = rig.boot([device], system=system)
    assert system.actions[-1] == f"keep 50.0 MiB and 129 inodes in reserve in {dry.scratch}/aux/safety"
    state = rig.boot([device])
    assert (state.scratch / "aux" / "safety" / "50m").is_file() and not state.warnings


def test_dry_run_of_a_later_boot_and_of_a_failing_one(rig: Rig) -> None:
    device = rig.attach(rig.disk("empty", 64 * MIB))
    rig.boot([device])
    rig.unmount()
    before = digest(device)
    system = rig.dry_system()
    rig.boot([device], system=system)
    assert system.actions[0] == f"create directory {system.root}/root.rw"  # unmounted cleanly: no check
    assert digest(device) == before

    readonly = rig.attach(rig.disk("readonly", 64 * MIB), read_only=True)
    system = rig.dry_system()
    state = rig.boot([readonly], system=system)
    assert state.warnings and state.warnings[0].startswith("storage: a real boot would stop here: no empty disk")
    assert all((state.scratch / name).is_dir() for name in LAYOUT)


def test_uroot_on_a_whole_disk_is_used_and_grown(rig: Rig) -> None:
    backing = rig.disk("whole", 64 * MIB)
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-L", "UROOT", str(backing)], check=True)
    device = rig.attach(backing)
    first = rig.boot([device])
    assert first.scratch_device == device and not first.scratch_fresh
    assert_scratch(first)  # the layout is completed on a disk made elsewhere
    (first.scratch / "aux" / "resize").touch()
    rig.unmount()
    os.truncate(backing, 128 * MIB)
    subprocess.run(["losetup", "-c", device], check=True)
    state = rig.boot([device])
    resized = state.facts["storage"]["resized"]
    assert resized["partition_gained"] == 0 and resized["after"] > 1.8 * resized["before"]
    assert_scratch(state)


def test_an_empty_partition_becomes_the_scratch_file_system(rig: Rig) -> None:
    """As µCernVM: a disk partitioned but never formatted (a cloud's ephemeral disk, or one partitioned by
    hand) gets the scratch file system in its partition; its table is kept as it is."""
    device = rig.attach(rig.disk("partitioned", GIB, "label: dos\nstart=2048, type=83\n"))
    table = sfdisk_json(device)
    state = rig.boot([device])
    assert_scratch(state)
    assert state.scratch_fresh and state.scratch_device == f"{device}p1"
    assert "empty partition 1" in state.facts["storage"]["created"]
    assert sfdisk_json(device) == table
    [device] = rig.reboot([device])
    again = rig.boot([device])
    assert not again.scratch_fresh and again.scratch_device == f"{device}p1"


def test_a_partition_that_is_not_empty_or_not_for_data_is_not_formatted(rig: Rig) -> None:
    swap = rig.disk("swap", 64 * MIB, "label: dos\nstart=2048, type=82\n")  # blank, but made for swap
    small = rig.disk("small", 64 * MIB, "label: dos\nstart=2048, type=83\n")  # blank, but too small
    used = rig.disk("used", 64 * MIB, "label: dos\nstart=2048, type=83\n")
    with used.open("r+b") as handle:
        handle.seek(MIB + 512)
        handle.write(b"LABELONE\x01\x00\x00\x00 LVM2 001")  # a physical volume
    devices = [rig.attach(path) for path in (swap, small, used)]
    before = [digest(device) for device in devices]
    with pytest.raises(BootFailure) as failure:
        rig.boot(devices)
    assert "no empty disk and no free space" in failure.value.message
    assert [digest(device) for device in devices] == before


def test_a_full_scratch_disk_is_named_in_the_report(rig: Rig) -> None:
    device = rig.attach(rig.disk("empty", 64 * MIB))
    first = rig.boot([device])
    assert not first.warnings
    with open(first.scratch / "persistent" / "filler", "wb") as handle:  # what a user's program left
        try:
            while True:
                handle.write(bytes(1 << 20))
                handle.flush()
        except OSError:
            pass
    [device] = rig.reboot([device])
    state = rig.boot([device])
    assert_scratch(state)
    [warning] = state.warnings
    assert warning.startswith(f"the scratch disk {device}p1 is full: ") and "/mnt/.rw/persistent" in warning


def test_a_scratch_disk_keeps_a_reserve_that_a_full_disk_gets_back(rig: Rig) -> None:
    """As µCernVM: aux/safety/ holds 50 MiB and 127 inodes; found full, the disk gets them back so that the boot
    can write its state, and a later boot with room keeps them in reserve again."""
    device = rig.attach(rig.disk("large", 2 * GIB))
    first = rig.boot([device])
    safety = first.scratch / "aux" / "safety"
    spacers = [f"inode_spacer{number}" for number in range(1, 128)]
    assert sorted(path.name for path in safety.iterdir()) == sorted(["50m", *spacers])
    assert (safety / "50m").stat().st_blocks * 512 >= 50 * MIB  # allocated, not written
    assert not first.warnings and first.facts["storage"]["free"] > GIB
    stats = os.statvfs(first.scratch)
    with open(first.scratch / "persistent" / "filler", "wb") as filler:  # what a user's program left
        os.posix_fallocate(filler.fileno(), 0, stats.f_bavail * stats.f_frsize - 8 * MIB)

    [device] = rig.reboot([device])
    full = rig.boot([device])
    assert not (full.scratch / "aux" / "safety").exists() and full.facts["storage"]["free"] > 50 * MIB
    [warning] = full.warnings
    assert warning.startswith(f"the scratch disk {device}p1 is full: ")
    assert "after giving back the 50.0 MiB and 129 inodes kept in reserve in aux/safety/; the OS may fail to write" in warning

    (full.scratch / "persistent" / "filler").unlink()
    [device] = rig.reboot([device])
    again = rig.boot([device])
    assert (again.scratch / "aux" / "safety" / "50m").is_file() and not again.warnings


@pytest.mark.parametrize("kind", ["a symbolic link", "not a directory"])
def test_a_link_or_a_file_the_os_left_at_the_reserve_is_replaced_by_a_reserve(rig: Rig, kind: str) -> None:
    """The OS writes the scratch disk: what it put at aux/safety in place of the reserve is no reserve, and
    a link's target (a directory of the loader's, say) is left as it was."""
    device = rig.attach(rig.disk("large", 2 * GIB))
    safety = rig.boot([device]).scratch / "aux" / "safety"
    shutil.rmtree(safety)
    outside = rig.root / "etc" / "outside"
    outside.mkdir(parents=True)
    (outside / "kept").write_bytes(b"the loader's\n")
    if kind == "a symbolic link":
        safety.symlink_to(outside)
    else:
        safety.write_bytes(b"not the reserve\n")

    [device] = rig.reboot([device])
    again = rig.boot([device])
    assert (again.scratch / "aux" / "safety" / "50m").is_file() and not (again.scratch / "aux" / "safety").is_symlink()
    assert [path.name for path in outside.iterdir()] == ["kept"]
    assert again.warnings == [f"aux/safety on the scratch disk is {kind}: removed, not taken for the reserve"]


def test_a_scratch_disk_out_of_inodes_is_full_and_gets_the_reserve_back(rig: Rig) -> None:
    """Bytes to spare but no inode for a new file (many small files): the disk is as full as without bytes."""
    device = rig.attach(rig.disk("large", 2 * GIB))
    first = rig.boot([device])
    assert (first.scratch / "aux" / "safety" / "50m").is_file() and not first.warnings
    many = first.scratch / "persistent" / "many"
    many.mkdir()
    try:
        for number in itertools.count():
            os.close(os.open(many / str(number), os.O_WRONLY | os.O_CREAT, 0o600))
    except OSError as error:
        assert error.errno == errno.ENOSPC

    [device] = rig.reboot([device])
    full = rig.boot([device])
    assert not (full.scratch / "aux" / "safety").exists()
    assert full.facts["storage"]["free"] > 500 * MIB and full.facts["storage"]["free_inodes"] >= 129
    [warning] = full.warnings
    assert re.match(rf"the scratch disk {device}p1 is full: .* free of .*, 129 of its \d+ inodes \(one a file\) free, "
                    "after giving back the 50.0 MiB and 129 inodes kept in reserve in aux/safety/", warning), warning

    shutil.rmtree(full.scratch / "persistent" / "many")
    [device] = rig.reboot([device])
    again = rig.boot([device])
    assert (again.scratch / "aux" / "safety" / "50m").is_file() and not again.warnings


def test_a_resize_request_the_disk_cannot_remove_is_a_warning(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """A disk with I/O errors that refuses to remove aux/resize once the file system has grown."""
    backing = rig.disk("empty", 256 * MIB)
    device = rig.attach(backing)
    before = _grown_after_a_resize_request(rig, backing, device, 512 * MIB)
    real_unlink = os.unlink

    def failing(path: object, *args: object, **kwargs: object) -> None:
        if str(path).endswith("aux/resize"):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", failing)
    state = rig.boot([device])
    assert_scratch(state)
    assert os.statvfs(state.scratch).f_blocks > before and state.facts["storage"]["resized"]["partition_gained"]
    assert state.warnings == ["aux/resize not removed from the scratch disk (Input/output error): the next boot "
                              "checks and grows the scratch file system again"]


def test_a_resize_request_the_disk_cannot_read_is_a_warning(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """A disk with I/O errors that cannot even say whether aux/resize is there: nothing is grown."""
    backing = rig.disk("empty", 256 * MIB)
    device = rig.attach(backing)
    rig.boot([device]).scratch.joinpath("aux", "resize").touch()
    [device] = rig.reboot([device])
    real_lstat = Path.lstat

    def failing(path: Path) -> os.stat_result:
        if str(path).endswith("aux/resize"):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_lstat(path)

    monkeypatch.setattr(Path, "lstat", failing)
    state = rig.boot([device])
    assert_scratch(state)
    assert state.facts["storage"]["resized"] is None
    assert state.warnings == ["aux/resize cannot be read on the scratch disk (Input/output error): the scratch file "
                              "system was not grown"]


def _failing_resize2fs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, device: str) -> str:
    """A resize2fs that refuses the file system; the error the boot reports."""
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "resize2fs").write_text("#!/bin/sh\necho 'resize2fs: Filesystem has unsupported feature(s)' >&2\nexit 1\n")
    (tools / "resize2fs").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tools}:{os.environ['PATH']}")
    return "resize2fs failed (1): resize2fs: Filesystem has unsupported feature(s)"


def _unreadable_partition_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, device: str) -> str:
    """A disk that fails the resize's read of its partition table; the error the boot reports."""
    calls = []

    def failing(*args: object, **kwargs: object) -> object:  # the survey reads it, the resize meets a failing disk
        calls.append(args)
        if len(calls) > 1:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return read_table(*args, **kwargs)

    monkeypatch.setattr(storage, "read_table", failing)
    return f"cannot read the partition table of {device}: Input/output error"


def _unopenable_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, device: str) -> str:
    """A disk that fails the open for telling the kernel of the grown partition; the error the boot reports."""
    real_open = os.open

    def failing(path: object, flags: int, *args: object, **kwargs: object) -> int:
        if path == device and flags == os.O_RDONLY | os.O_CLOEXEC:  # BLKPG's open, not a reader's
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", failing)
    return f"cannot resize kernel partition 1 of {device} (1 MiB + 511 MiB): Input/output error"


@pytest.mark.parametrize("fault", [_failing_resize2fs, _unreadable_partition_table, _unopenable_disk])
def test_a_resize_that_fails_is_a_warning_and_the_boot_goes_on(rig: Rig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                fault: Callable[..., str]) -> None:
    """As µCernVM: the scratch disk is mounted again as it was and the request is dropped, instead of a
    machine that fails the same way at every boot."""
    backing = rig.disk("empty", 256 * MIB)
    device = rig.attach(backing)
    before = _grown_after_a_resize_request(rig, backing, device, 512 * MIB)
    error = fault(tmp_path, monkeypatch, device)

    state = rig.boot([device])
    assert_scratch(state)
    assert (state.scratch / "persistent" / "kept").read_text() == "data"
    assert os.statvfs(state.scratch).f_blocks == before
    assert not (state.scratch / "aux" / "resize").exists()
    assert state.warnings == [f"aux/resize: the scratch file system was not grown: {error}"]
    assert state.facts["storage"]["resized"]["error"] == error


def test_a_link_the_os_left_at_the_reserve_s_temporary_name_does_not_keep_the_reserve_away(rig: Rig) -> None:
    """aux/safety.tmp, where the reserve is made before its rename: a link there is no half-made reserve to
    clear (rmtree leaves links alone), and its target is left as it was."""
    device = rig.attach(rig.disk("large", 2 * GIB))
    scratch = rig.boot([device]).scratch
    shutil.rmtree(scratch / "aux" / "safety")
    outside = rig.root / "etc" / "outside"
    outside.mkdir(parents=True)
    (scratch / "aux" / "safety.tmp").symlink_to(outside)

    [device] = rig.reboot([device])
    again = rig.boot([device])
    assert (again.scratch / "aux" / "safety" / "50m").is_file() and not (again.scratch / "aux" / "safety.tmp").exists()
    assert list(outside.iterdir()) == [] and not again.warnings


def test_a_scratch_disk_from_ucernvm_s_predecessor_has_its_aufs_layer_converted(rig: Rig) -> None:
    """A µCernVM disk kept and booted with ucernvm: its aufs marks are overlayfs's before the root is mounted."""
    from test_aufs import aufs_layer

    device = rig.attach(rig.disk("empty", 128 * MIB))
    first = rig.boot([device])
    aufs_layer(first.scratch / "persistent")
    [device] = rig.reboot([device])
    second = rig.boot([device])
    upper = second.scratch / "persistent"
    readme = os.lstat(upper / "usr/share/doc/readme")
    assert readme.st_rdev == 0 and stat.S_ISCHR(readme.st_mode)
    assert not [path for path in upper.rglob(".wh.*")]
    assert second.facts["aufs"] == {"whiteouts": 3, "opaque": 1, "removed": 4, "left": 0}
    assert any(action.startswith(f"convert {upper} from aufs to overlayfs") for action in second.system.actions)
