"""The ``storage`` stage: find the scratch file system, make it on first boot, grow it on request.

The scratch file system is the ext4 labelled ``UROOT`` (``scratch_label``); whether it exists decides
first boot versus later boots, as in µCernVM. On first boot it goes on an empty disk (case A; Amazon's
pre-formatted ext3 ephemeral disk holding only lost+found counts as empty), else into an empty Linux
partition that a disk already has, else (also when ``use_boothd`` is set and there is no such
partition) into the free space of the boot disk (case B, MBR or GPT). Disks are read with
the sysfs/superblock code of ``blockdev`` and partitioned with ``partition``; only the e2fsprogs tools
run as programs. Every change goes through ``state.system``, so a dry run probes the real disks
read-only and records the plan without writing.
"""

from __future__ import annotations

import copy
import os
import stat
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ucernvm.boot.aufs import convert_aufs_layer
from ucernvm.boot.blockdev import (
    DeviceReader,
    Disk,
    FileSystem,
    KernelPartitionChange,
    device_node,
    ext_check_reason,
    ext_root_names,
    is_blank,
    list_disks,
    partition_node_name,
    probe,
    read_disk,
)
from ucernvm.boot.partition import (
    LINUX_GPT_TYPE,
    LINUX_MBR_TYPE,
    MIB,
    Partition,
    PartitionTable,
    WriteTable,
    human,
    new_table,
    read_table,
)
from ucernvm.boot.state import BootState
from ucernvm.boot.system import MakeDirs, Mount, Run, Unmount
from ucernvm.boot.untrusted import not_a_directory, scratch_directory
from ucernvm.errors import FormatError, MountError, StorageError, UcernvmError
from ucernvm.records import NamedTuple

# The scratch disk's directories (µCernVM's, plus work/ that overlayfs needs on the same file system).
LAYOUT = ("persistent", "work", "cache", "aux", "context", "ulogs", "cvmfs")
BOOT_LABEL = "UCVM-BOOT"  # the boot medium's file system label: its disk is the "boot disk"
CAPPED_SIZE = 20 << 30  # the scratch partition's size with resize_rootfs=off
MIN_FREE = 750 * MIB  # case B: free space needed on the boot disk, after FREE_MARGIN
FREE_MARGIN = 20 * MIB
MIN_SCRATCH = 16 * MIB  # below this, ext4 with a journal hardly fits
FULL_BELOW = 50 * MIB  # free space (or 5 % of a small disk) below which the disk is reported full
SAFETY = "aux/safety"  # µCernVM's room kept in reserve, given back when the disk is found full
SAFETY_BYTES = 50 * MIB  # its file 50m
RESERVE_FROM = 20 * SAFETY_BYTES  # the scratch partitions (or disks) that keep it: 1000 MiB and more
INODE_SPACERS = 127  # and its empty files inode_spacer1..127
SAFETY_INODES = INODE_SPACERS + 2  # the spacers, 50m and their directory
FULL_INODES = SAFETY_INODES  # free inodes (or 5 % of a small disk's) below which it is full: no room for new files
DISK_WAIT = 5.0  # seconds to wait for a first disk to appear (SCSI and NVMe scans are asynchronous)
TOOL_TIMEOUT = 900.0  # e2fsck -f and resize2fs on a large disk take a while
NO_SPACE_HINT = "attach an empty disk of at least 20 GB (it becomes the scratch disk), or free 750 MiB on the boot disk"


class Volume(NamedTuple):
    number: int | None  # partition number; None: the whole disk
    start: int  # bytes into the disk
    size: int
    fs: FileSystem | None


class DiskView:
    """What one disk holds, read without changing it."""

    __slots__ = ("disk", "path", "table", "problem", "blank", "ephemeral", "volumes")

    def __init__(self, disk: Disk, path: str) -> None:
        self.disk = disk
        self.path = path
        self.table: PartitionTable | None = None
        self.problem = ""  # why it cannot be used (unreadable, invalid table)
        self.blank = False
        self.ephemeral = False  # Amazon's pre-formatted ext3 that holds only lost+found
        self.volumes: list[Volume] = []

    @property
    def writable(self) -> bool:
        return not (self.disk.read_only or self.disk.removable or self.problem)

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.disk.name, "size": self.disk.size, "table": self.table.kind if self.table else None,
            "blank": self.blank, "read_only": self.disk.read_only, "removable": self.disk.removable,
            "problem": self.problem,
            "volumes": [{"number": v.number, "type": v.fs.type, "label": v.fs.label} for v in self.volumes if v.fs],
        }  # fmt: skip


class Target(NamedTuple):
    """Where the scratch file system is: a partition (number) or a whole disk (None), and its bytes."""

    view: DiskView
    number: int | None
    device: str
    size: int


class CheckFileSystem(NamedTuple):
    """``e2fsck -p``: exit codes 1 and 2 mean repaired, 4 and up that it needs a human."""

    device: str
    force: bool = False

    def describe(self) -> str:
        return f"check file system {self.device} (e2fsck -p{'f' if self.force else ''})"

    def apply(self) -> int:
        import subprocess  # see Run in system.py

        argv = ("e2fsck", "-pf" if self.force else "-p", self.device)
        try:
            result = subprocess.run(argv, capture_output=True, timeout=TOOL_TIMEOUT, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as error:
            raise StorageError(f"{self.describe()}: {error}") from None
        if result.returncode >= 4:
            output = " ".join((result.stdout + result.stderr).decode(errors="replace").split())
            raise StorageError(
                f"e2fsck cannot repair {self.device} by itself (exit code {result.returncode}): {output[:300]}",
                f"run 'e2fsck -f {self.device}' from the rescue shell, or attach a fresh empty disk instead",
            )
        return result.returncode


class RemoveFile(NamedTuple):
    path: str

    def describe(self) -> str:
        return f"remove {self.path}"

    def apply(self) -> None:
        Path(self.path).unlink(missing_ok=True)


class KeepRoom(NamedTuple):
    """µCernVM's ``aux/safety/``: a file of 50 MiB (allocated, not written: fallocate is instant where
    µCernVM's dd wrote zeros) and 127 empty files, whose blocks and inodes a full disk can be given back.
    Made under a temporary name, so that a half-made one is never taken for whole."""

    directory: str

    def describe(self) -> str:
        return f"keep {human(SAFETY_BYTES)} and {SAFETY_INODES} inodes in reserve in {self.directory}"

    def apply(self) -> None:
        import shutil  # only where the reserve is made or given back

        temporary = f"{self.directory}.tmp"
        if os.path.islink(temporary) or os.path.isfile(temporary):  # not ours: rmtree would leave a link there
            os.unlink(temporary)
        shutil.rmtree(temporary, ignore_errors=True)  # what a boot cut short left
        try:
            os.mkdir(temporary)
            for number in range(1, INODE_SPACERS + 1):
                os.close(os.open(f"{temporary}/inode_spacer{number}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            fd = os.open(f"{temporary}/50m", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.posix_fallocate(fd, 0, SAFETY_BYTES)
            finally:
                os.close(fd)
            os.rename(temporary, self.directory)
        except OSError:
            shutil.rmtree(temporary, ignore_errors=True)
            raise


class ReleaseRoom(NamedTuple):
    """Give back the reserve of ``aux/safety/`` (a later boot with room keeps one again)."""

    directory: str

    def describe(self) -> str:
        return f"give back the room kept in reserve in {self.directory}"

    def apply(self) -> None:
        import shutil

        shutil.rmtree(self.directory)


def storage_stage(
    state: BootState, devices: Sequence[str] | None = None, sysfs: str = "/sys", devdir: str = "/dev"
) -> None:
    """Mount the scratch file system on ``state.scratch``. *devices* limits the disks looked at (tests);
    the boot looks at every disk that is not virtual."""
    system = state.system
    views = [_survey(state, disk, devdir) for disk in _wait_for_disks(sysfs, devices, wait=not system.dry_run)]
    facts: dict[str, Any] = {"disks": [view.summary() for view in views]}
    state.facts["storage"] = facts
    try:
        target = _find(state, views, sysfs, devdir)
        if target is not None:
            facts["fsck"] = _check_and_mount(state, target.device)
        else:
            target = _create(state, views, sysfs, devdir, facts)
    except StorageError as error:
        if not system.dry_run:
            raise
        state.warn(f"storage: a real boot would stop here: {error.message}")
        _make_layout(state)
        return
    _make_layout(state)
    facts["resized"] = _grow_on_request(state, target, sysfs, devdir)
    state.scratch_device = target.device
    facts.update(device=target.device, disk=target.view.path, fresh=state.scratch_fresh)
    keeps_reserve = target.size + (facts["resized"] or {}).get("partition_gained", 0) >= RESERVE_FROM
    if not system.dry_run:
        _mind_the_room(state, target.device, keeps_reserve, facts)
    elif keeps_reserve and state.scratch_fresh:  # a new file system is empty: it has the room, and no reserve yet
        system.do(KeepRoom(str(state.scratch / SAFETY)))
    # Before the rebase and the root's mount read persistent/, with the disk's room given back if it was full.
    convert_aufs_layer(state)


class Room(NamedTuple):
    """What the scratch file system holds and has free for files: bytes, and inodes (one a file)."""

    size: int
    free: int
    inodes: int  # 0: a file system without a fixed number of them
    free_inodes: int

    @property
    def short_of_inodes(self) -> bool:
        return self.inodes > 0 and self.free_inodes < min(FULL_INODES, self.inodes // 20)

    @property
    def full(self) -> bool:
        return self.free < min(FULL_BELOW, self.size // 20) or self.short_of_inodes

    def less(self, size: int, inodes: int) -> Room:
        return self._replace(free=self.free - size, free_inodes=self.free_inodes - inodes)

    def describe(self, inodes: bool = False) -> str:
        shown = f"{human(self.free)} free of {human(self.size)}"
        return shown + (f", {self.free_inodes} of its {self.inodes} inodes (one a file) free" if inodes else "")


def _mind_the_room(state: BootState, device: str, keeps_reserve: bool, facts: dict[str, Any]) -> None:
    """Report the scratch disk's size and free space; a full one (of bytes or of inodes) is named in the
    report, and given back the reserve of ``aux/safety/`` so that the boot can write its state (the pin, the
    context, the logs). As µCernVM, the reserve is made where there is none, here only on a disk that
    *keeps_reserve* and where it leaves the disk room."""
    safety = state.scratch / SAFETY
    _clear_the_reserve_place(state, safety)
    room = _room(state)
    full, short_of_inodes = room.full, room.short_of_inodes
    released = ""
    room_for_reserve = keeps_reserve and not room.less(SAFETY_BYTES, SAFETY_INODES).full
    if full and os.path.isdir(safety):  # os.path: False where a failing disk cannot answer
        try:
            state.system.do(ReleaseRoom(str(safety)))
        except OSError as error:
            state.warn(f"the reserve {SAFETY}/ on the scratch disk cannot be given back: {error.strerror or error}")
        else:
            released = (f", after giving back the {human(SAFETY_BYTES)} and {SAFETY_INODES} inodes kept in reserve "
                        f"in {SAFETY}/")
            room = _room(state)
    elif room_for_reserve and not os.path.lexists(safety):
        if state.do_or_warn(f"the reserve {SAFETY}/", KeepRoom(str(safety))):
            room = _room(state)
    facts.update(room._asdict())
    state.log.info(f"scratch: {device} on {state.scratch}, {room.describe(inodes=True)}")
    if full:
        # The boot goes on (the cache makes room for itself, the loader's own writes are warnings),
        # but the OS is likely to fail: said first in the report, not left to a failed write later.
        state.warn(f"the scratch disk {device} is full: {room.describe(inodes=short_of_inodes)}{released}; the OS "
                   "may fail to write (what it wrote is under /mnt/.rw/persistent)")


def _clear_the_reserve_place(state: BootState, safety: Path) -> None:
    """What the OS left at ``aux/safety`` in place of the reserve's directory (a link, a file) is no reserve:
    it is removed, with a warning, so that a reserve is made as where there is none; a link would stand in
    for the reserve, neither given back (``rmtree`` refuses one) nor replaced by one."""
    try:
        mode = safety.lstat().st_mode
    except OSError:
        return  # none, or a failing disk that the reserve's own steps report
    if stat.S_ISDIR(mode):
        return
    kind = not_a_directory(mode)
    try:
        state.system.do(RemoveFile(str(safety)))
    except OSError as error:
        state.warn(f"{SAFETY} on the scratch disk is {kind} and cannot be removed: {error.strerror or error}")
    else:
        state.warn(f"{SAFETY} on the scratch disk is {kind}: removed, not taken for the reserve")


def _room(state: BootState) -> Room:
    stats = os.statvfs(state.scratch)
    return Room(stats.f_blocks * stats.f_frsize, stats.f_bavail * stats.f_frsize, stats.f_files, stats.f_favail)


def _wait_for_disks(sysfs: str, devices: Sequence[str] | None, wait: bool) -> list[Disk]:
    deadline = time.monotonic() + (DISK_WAIT if wait else 0.0)
    while True:
        disks = list_disks(sysfs, devices)
        if disks or time.monotonic() >= deadline:
            return disks
        time.sleep(0.1)


def _survey(state: BootState, disk: Disk, devdir: str) -> DiskView:
    view = DiskView(disk, device_node(state.system, disk.name, disk.dev, devdir))
    try:
        with DeviceReader(view.path) as device:
            read = device.reader()
            view.blank = is_blank(read, disk.size)
            if view.blank:
                return view
            whole = probe(read)
            if whole is not None:
                view.volumes.append(Volume(None, 0, disk.size, whole))
                view.ephemeral = whole.type == "ext3" and ext_root_names(read) == ["lost+found"]
            try:
                view.table = read_table(read, disk.size, disk.sector_size, view.path)
            except FormatError as error:
                view.problem = error.message
                state.log.warn(f"{error.message}: {view.path} is left alone")
            numbers = set()
            for part in view.table.partitions if view.table else ():
                start, size = part.start * disk.sector_size, part.sectors * disk.sector_size
                view.volumes.append(Volume(part.number, start, size, probe(device.reader(start))))
                numbers.add(part.number)
            for known in disk.partitions:  # what the kernel found and this reader does not parse (logical partitions)
                if known.number not in numbers:
                    view.volumes.append(Volume(known.number, known.start, known.size, probe(device.reader(known.start))))
    except OSError as error:
        view.problem = f"cannot read {view.path}: {error.strerror}"
        state.log.info(view.problem)
    for note in view.table.notes if view.table else ():
        state.log.warn(f"{view.path}: {note}")
    return view


def _find(state: BootState, views: list[DiskView], sysfs: str, devdir: str) -> Target | None:
    """The file system labelled scratch_label, if any (a later boot)."""
    label = state.config.scratch_label
    found = [(view, volume, volume.fs.type) for view in views for volume in view.volumes
             if volume.fs and volume.fs.label == label and volume.fs.type.startswith("ext")]  # fmt: skip
    if not found:
        state.log.info(f"no file system labelled {label}: first boot")
        return None
    view, volume, fstype = found[0]
    for other_view, other, _ in found[1:]:
        state.warn(f"another file system labelled {label} on {other_view.path} (partition {other.number}) is not used")
    if volume.number is None:
        device = view.path
    else:
        device = _attach(state, view, volume.number, volume.start, volume.size, sysfs, devdir)
    state.log.info(f"scratch file system {label} on {device} ({fstype}, {human(volume.size)})")
    state.scratch_fresh = False
    return Target(view, volume.number, device, volume.size)


def _check_and_mount(state: BootState, device: str) -> str:
    """Check the scratch file system when its superblock says e2fsck has work, and mount it; what the
    check found. (A clean one is left alone: under emulation, starting e2fsck only for it to report
    "clean" cost 0.1-0.2 s of every later boot.)"""
    try:
        with DeviceReader(device) as reader:
            if reader.read_only:  # e2fsck and the mount would fail, with errors that do not say why
                raise StorageError(f"the scratch file system {state.config.scratch_label} is on {device}, a read-only "
                                   "device", "attach its disk read-write: the scratch disk is written at every boot")
            reason = ext_check_reason(reader.reader(), time.time())
    except OSError as error:
        reason = f"its superblock cannot be read ({error.strerror})"
    if reason is None:
        state.log.info(f"{device} was unmounted cleanly: no check needed")
        outcome = "clean"
    else:
        state.log.info(f"checking {device}: {reason}")
        code = state.system.do(CheckFileSystem(device))
        if code is None:
            outcome = f"to be checked: {reason}"  # a dry run
        elif code:
            state.log.warn(f"e2fsck repaired the file system on {device} (exit code {code})")
            outcome = f"repaired (e2fsck exit code {code}; {reason})"
        else:
            outcome = f"checked, clean ({reason})"
    _mount(state, device)
    return outcome


def _mount(state: BootState, device: str) -> None:
    state.system.do(MakeDirs(str(state.scratch)))
    try:
        # noinit_itable: mke2fs leaves the inode tables unwritten (lazy_itable_init) and marks them so in
        # the checksummed group descriptors, which the kernel and e2fsck honour; without this option the
        # kernel zeroes them in the background after every mount until done, 320 MB on a 20 GiB disk,
        # written under the first boot that also downloads the OS (418 MB written instead of 104 MB in a
        # Debian boot under emulation, 3.5 s more guest CPU in block completions).
        state.system.do(Mount(device, str(state.scratch), "ext4", "noinit_itable"))
    except MountError as error:
        raise MountError(error.message, f"is the ext4 module loaded? else check the disk: e2fsck -f {device}") from None


def _make_layout(state: BootState) -> None:
    # Once made here, the boot's later writes find directories: the OS that could put links there is not running.
    for name in LAYOUT:
        scratch_directory(state, name, f"{name}/ on the scratch disk")


# ------------------------------------------------------------------------------------------ first boot


class _Plan(NamedTuple):
    view: DiskView
    table: PartitionTable
    numbers: list[int]  # the scratch partition first, then a spare one (resize_rootfs=off)
    wipe: bool
    what: str
    write: bool = True  # False: the partition exists already, the disk's table stays as it is


def _create(state: BootState, views: list[DiskView], sysfs: str, devdir: str, facts: dict[str, Any]) -> Target:
    config = state.config
    rejected: dict[str, str] = {}  # why each disk cannot take the scratch file system (first reason wins)
    plan = None if config.use_boothd else _plan_empty_disk(views, config.resize_rootfs, rejected)
    if plan is None:
        plan = _plan_empty_partition(views, rejected)
    if plan is None:
        plan = _plan_free_space(views, config.resize_rootfs, rejected)
    if plan is None:
        seen = "; ".join(f"{name}: {reason}" for name, reason in rejected.items()) or "no disks found"
        raise StorageError(f"no empty disk and no free space for the scratch file system ({seen})", NO_SPACE_HINT)
    view, table = plan.view, plan.table
    state.log.info(f"{plan.what}: {table.describe()}")
    if plan.write:
        state.system.do(WriteTable(view.path, table, wipe=plan.wipe))
    devices = []
    for number in plan.numbers:
        part, sector = table.partition(number), table.sector_size
        devices.append(_attach(state, view, number, part.start * sector, part.sectors * sector, sysfs, devdir))
    device = devices[0]
    label = config.scratch_label
    # No periodic checks by mount count or age (µCernVM runs `tune2fs -c0 -i0` after mke2fs): the
    # mke2fs.conf the image carries leaves them off (enable_periodic_fsck), so no second tool is run.
    _tool(state, ("mke2fs", "-q", "-F", "-t", "ext4", "-L", label, "-E", "lazy_itable_init=1,lazy_journal_init=1", device))
    _mount(state, device)
    state.scratch_fresh = True
    facts["created"] = f"{plan.what}: partition {plan.numbers[0]} ({device}) formatted as ext4 labelled {label}"
    if len(devices) > 1:
        facts["spare"] = devices[1]
        state.log.info(f"spare partition {devices[1]} with the rest of the disk is left unformatted (resize_rootfs=off)")
    part = table.partition(plan.numbers[0])
    return Target(view, plan.numbers[0], device, part.sectors * table.sector_size)


def _plan_empty_disk(views: list[DiskView], resize_rootfs: bool, rejected: dict[str, str]) -> _Plan | None:
    for view in views:
        if not (view.blank or view.ephemeral):
            continue
        if not view.writable:
            rejected.setdefault(view.disk.name, f"empty but {view.problem or 'read-only or removable'}")
            continue
        disk = view.disk
        kind = "dos" if disk.size // disk.sector_size <= 1 << 32 else "gpt"  # MBR addresses 2^32 sectors
        table = new_table(kind, disk.size, disk.sector_size)
        regions = table.free_regions()
        region = regions[0] if regions else (0, 0)
        if (region[1] - region[0]) * disk.sector_size < MIN_SCRATCH:
            rejected.setdefault(disk.name, f"empty but only {human(disk.size)}")
            continue
        what = "Amazon's pre-formatted ephemeral disk" if view.ephemeral else "empty disk"
        return _Plan(view, table, _add_partitions(table, region, resize_rootfs), True,
                     f"scratch on {what} {view.path} ({human(disk.size)})")
    return None


def _plan_empty_partition(views: list[DiskView], rejected: dict[str, str]) -> _Plan | None:
    """µCernVM's "first empty partition": a Linux data partition of a disk partitioned but never formatted
    (a cloud's ephemeral disk, one partitioned by hand) that holds nothing, its first MiB zeros. Other
    partition types (swap, EFI, BIOS boot) and anything with a signature are never formatted."""
    for view in views:
        if view.table is None or not view.writable:
            continue
        probed = {volume.number: volume.fs for volume in view.volumes}
        sector = view.table.sector_size
        for part in view.table.partitions:
            if part.type.upper() not in (LINUX_MBR_TYPE, LINUX_GPT_TYPE) or probed.get(part.number) is not None:
                continue
            size = part.sectors * sector
            try:
                with DeviceReader(view.path) as device:
                    blank = is_blank(device.reader(part.start * sector), size)
            except OSError as error:
                rejected.setdefault(view.disk.name, f"partition {part.number} cannot be read: {error.strerror}")
                continue
            if not blank:
                continue
            if size < MIN_FREE:
                rejected.setdefault(view.disk.name, f"partition {part.number} is empty but only {human(size)}")
                continue
            return _Plan(view, view.table, [part.number], False,
                         f"scratch in empty partition {part.number} of {view.path} ({human(size)})", write=False)
    return None


def _plan_free_space(views: list[DiskView], resize_rootfs: bool, rejected: dict[str, str]) -> _Plan | None:
    boot = {view.disk.name for view in views if any(v.fs and v.fs.label == BOOT_LABEL for v in view.volumes)}
    for view in sorted(views, key=lambda view: view.disk.name not in boot):  # the boot disk first
        name = view.disk.name
        if view.table is None:
            empty = "empty (use_boothd is set)" if view.blank or view.ephemeral else "not empty, no partition table"
            rejected.setdefault(name, view.problem or empty)
            continue
        if not view.writable:
            rejected.setdefault(name, view.problem or "read-only or removable")
            continue
        table = copy.deepcopy(view.table)
        table.relocate_backup()  # a disk image written onto a larger disk: free space after its old end
        regions = table.free_regions()
        free = (regions[0][1] - regions[0][0]) * table.sector_size if regions else 0
        if table.free_slot() is None or free - FREE_MARGIN < MIN_FREE:
            rejected.setdefault(name, f"{human(free)} free" + ("" if table.free_slot() else ", no free partition slot"))
            continue
        where = "boot disk" if name in boot else "disk"
        return _Plan(view, table, _add_partitions(table, regions[0], resize_rootfs), False,
                     f"scratch in the free space of {where} {view.path} ({human(free)} free)")
    return None


def _add_partitions(table: PartitionTable, region: tuple[int, int], resize_rootfs: bool) -> list[int]:
    """The scratch partition over *region*; with resize_rootfs=off only its first 20 GiB, and (as
    µCernVM) a spare partition with the rest, created now so that the OS can use it without a reboot."""
    start, end = region
    capped = CAPPED_SIZE // table.sector_size
    if resize_rootfs or end - start <= capped:
        return [table.add(start, end - start).number]
    numbers = [table.add(start, capped).number]
    rest = next((r for r in table.free_regions() if r[0] >= start + capped and r[1] <= end), None)
    if rest is not None and table.free_slot() is not None:
        numbers.append(table.add(rest[0], rest[1] - rest[0]).number)
    return numbers


def _attach(state: BootState, view: DiskView, number: int, start: int, size: int, sysfs: str, devdir: str) -> str:
    """The device node of partition *number*, after telling the kernel about it if it does not know it
    as the table says (a new or grown partition, or a kernel that did not parse the table)."""
    system = state.system
    current = read_disk(sysfs, view.disk.name) if not system.dry_run else view.disk
    known = current.partition(number) if current else None
    if known is not None and known.start != start:
        raise StorageError(f"the kernel has partition {number} of {view.path} at another place than its table",
                           "reboot so that the kernel reads the new partition table")
    if known is None or known.size != size:
        system.do(KernelPartitionChange(view.path, number, start, size, resize=known is not None))
        if not system.dry_run:
            current = read_disk(sysfs, view.disk.name)  # what the kernel made of it
            known = current.partition(number) if current else None
            if known is None:
                raise StorageError(f"the kernel did not create partition {number} of {view.path}")
    if system.dry_run:
        return str(Path(devdir) / (known.name if known else partition_node_name(view.disk.name, number)))
    return device_node(system, known.name, known.dev, devdir)


def _tool(state: BootState, argv: tuple[str, ...]) -> None:
    try:
        state.system.do(Run(argv, timeout=TOOL_TIMEOUT))
    except UcernvmError as error:
        raise StorageError(error.message, "the image must carry e2fsprogs; if it does, the disk may be failing") from None


# ------------------------------------------------------------------------------------------ growing


def _grow_on_request(state: BootState, target: Target, sysfs: str, devdir: str) -> dict[str, Any] | None:
    """aux/resize (touched by the OS): grow the partition to the end of its disk, then the file system.

    As µCernVM: where growing fails, the file system is mounted again as it was and the request is
    dropped, with a warning (a machine must not fail the same way at every boot); only a file system
    that e2fsck cannot repair stops the boot, as at any other boot."""
    flag = state.scratch / "aux" / "resize"
    try:
        flag.lstat()
    except FileNotFoundError:
        return None
    except OSError as error:  # a failing disk: the file system is left as it is, as where growing fails
        state.warn(f"aux/resize cannot be read on the scratch disk ({error.strerror or error}): the scratch file "
                   "system was not grown")
        return None
    system = state.system
    before = _room(state).size
    system.do(Unmount(str(state.scratch)))
    system.do(CheckFileSystem(target.device, force=True))  # resize2fs wants a file system just checked
    try:
        gained = _grow(state, target, sysfs, devdir)
    except UcernvmError as error:
        state.warn(f"aux/resize: the scratch file system was not grown: {error.message}")
        outcome: dict[str, Any] = {"error": error.message}
    else:
        outcome = {"partition_gained": gained, "before": before}
    _mount(state, target.device)
    try:
        system.do(RemoveFile(str(flag)))
    except OSError as error:  # a failing disk: growing again next boot is slow, not harmful
        state.warn(f"aux/resize not removed from the scratch disk ({error.strerror or error}): the next boot checks "
                   "and grows the scratch file system again")
    if "error" not in outcome:
        outcome["after"] = _room(state).size
        state.log.info(f"aux/resize: partition {target.device} grew by {human(gained)}, "
                       f"file system {human(before)} -> {human(outcome['after'])}")
    return outcome


def _grow(state: BootState, target: Target, sysfs: str, devdir: str) -> int:
    """Grow the unmounted scratch partition (if it can) and its file system; the bytes the partition gained."""
    grown = None if target.number is None else _grown_partition(target.view, target.number, sysfs)
    if grown is not None:
        table, part, _ = grown
        state.system.do(WriteTable(target.view.path, table))
        size = table.sector_size
        _attach(state, target.view, part.number, part.start * size, part.sectors * size, sysfs, devdir)
    _tool(state, ("resize2fs", target.device))
    return grown[2] if grown else 0


def _grown_partition(view: DiskView, number: int, sysfs: str) -> tuple[PartitionTable, Partition, int] | None:
    """The disk's table with partition *number* grown up to the end of the disk (a GPT's backup moved
    there first), the partition, and the bytes it gained; None if the table needs no change."""
    disk = read_disk(sysfs, view.disk.name) or view.disk
    try:
        with DeviceReader(view.path) as device:
            table = read_table(device.reader(), disk.size, disk.sector_size, view.path)
    except OSError as error:  # a failing disk: the resize is dropped, as when the table cannot be written
        raise StorageError(f"cannot read the partition table of {view.path}: {error.strerror}") from None
    if table is None:
        raise StorageError(f"{view.path} lost its partition table")
    moved = table.relocate_backup()
    gained = table.grow(number)
    if not (moved or gained):
        return None
    return table, table.partition(number), gained * table.sector_size
