"""Block devices as sysfs shows them, and what their first bytes hold, without udev or blkid.

Disks are the entries of /sys/block; a partition is a subdirectory that has a ``partition`` file.
Names are never parsed (``nvme0n1`` is a disk, ``nvme0n1p1`` and ``mmcblk0p1`` are partitions because
sysfs says so). File system types and labels come from their superblocks: the few formats a boot meets
(ext2/3/4, ISO 9660, UDF, FAT, swap) are cheaper to recognise here than to ship blkid and its libraries.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import stat
import struct
from collections.abc import Callable, Iterable
from pathlib import Path

from ucernvm.boot.system import System
from ucernvm.errors import StorageError
from ucernvm.records import NamedTuple

SYSFS_SECTOR = 512  # sysfs counts sizes and starts in 512-byte units, whatever the device's sector size
PROBE_BYTES = 1 << 20  # a disk whose first MiB is all zeros holds nothing
Reader = Callable[[int, int], bytes]  # (offset, length) -> bytes


class KernelPartition(NamedTuple):
    name: str
    number: int
    start: int  # bytes from the start of the disk
    size: int  # bytes
    dev: str  # "major:minor"


class Disk(NamedTuple):
    name: str
    dev: str
    size: int  # bytes
    sector_size: int
    read_only: bool
    removable: bool
    virtual: bool  # no hardware behind it (loop, ram, zram, device mapper)
    partitions: tuple[KernelPartition, ...] = ()

    def partition(self, number: int) -> KernelPartition | None:
        return next((part for part in self.partitions if part.number == number), None)


def _read(path: Path, default: str = "") -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return default


def _number(path: Path, default: int = 0) -> int:
    text = _read(path)
    return int(text) if text.isdigit() else default


def _is_virtual(block: Path) -> bool:
    """/sys/block/<name> of a disk without hardware behind it (loop, ram, dm): it has no device link."""
    return not (block / "device").exists()


def read_disk(sysfs: Path | str, name: str) -> Disk | None:
    """One disk as /sys/block/<name> describes it now (its size changes when the disk grows)."""
    base = Path(sysfs) / "block" / name
    dev = _read(base / "dev")
    if not dev:
        return None
    partitions = []
    # A partition's directory is named after its disk (vda1, nvme0n1p1): the other ~25 entries need no look.
    for entry in sorted(base.iterdir()):
        if entry.name.startswith(name) and (entry / "partition").is_file():
            partitions.append(KernelPartition(entry.name, _number(entry / "partition"),
                                              _number(entry / "start") * SYSFS_SECTOR,
                                              _number(entry / "size") * SYSFS_SECTOR, _read(entry / "dev")))
    return Disk(
        name=name,
        dev=dev,
        size=_number(base / "size") * SYSFS_SECTOR,
        sector_size=_number(base / "queue" / "logical_block_size", 512),
        read_only=_read(base / "ro") == "1",
        removable=_read(base / "removable") == "1",
        virtual=_is_virtual(base),
        partitions=tuple(sorted(partitions, key=lambda part: part.number)),
    )


def list_disks(sysfs: Path | str = "/sys", names: Iterable[str] | None = None) -> list[Disk]:
    """Disks with a medium, sorted by name: the named ones, or every disk that is not virtual."""
    if names is None:
        root = Path(sysfs) / "block"
        # Virtual disks are skipped before their attributes are read, which for a kernel with loop
        # built in (8 idle loop devices) cost 0.2 s under emulation.
        entries = sorted(root.iterdir()) if root.is_dir() else []
        candidates = [entry.name for entry in entries if not _is_virtual(entry)]
    else:
        candidates = list(names)
    disks = [read_disk(sysfs, name) for name in candidates]
    return [disk for disk in disks if disk is not None and disk.size > 0]


def partition_node_name(disk: str, number: int) -> str:
    """The kernel's name for a partition it has not created yet (only to describe a plan)."""
    return f"{disk}{'p' if disk[-1:].isdigit() else ''}{number}"


# ---------------------------------------------------------------------------------------- actions


class MakeNode(NamedTuple):
    """A block device node that devtmpfs did not create."""

    path: str
    dev: str  # "major:minor"

    def describe(self) -> str:
        return f"create block device node {self.path} ({self.dev})"

    def apply(self) -> None:
        major, minor = (int(part) for part in self.dev.split(":"))
        try:
            os.mknod(self.path, stat.S_IFBLK | 0o600, os.makedev(major, minor))
        except FileExistsError:
            pass


def device_node(system: System, name: str, dev: str, devdir: Path | str = "/dev") -> str:
    """The node of a disk or partition, made from its sysfs ``dev`` when /dev lacks it."""
    path = Path(devdir) / name
    try:
        if stat.S_ISBLK(path.stat().st_mode):
            return str(path)
    except OSError:
        pass
    system.do(MakeNode(str(path), dev))
    return str(path)


_BLKPG = 0x1269
_BLKPG_ADD, _BLKPG_RESIZE = 1, 3
_BLKPG_PARTITION = struct.Struct("qqi64s64s4x")  # struct blkpg_partition, padded to its 8-byte alignment


class KernelPartitionChange(NamedTuple):
    """Tell the kernel about one partition (BLKPG): works while other partitions of the disk are in use,
    where re-reading the whole table (BLKRRPART) fails, and on kernels without table parsers."""

    disk: str  # the disk's device node
    number: int
    start: int  # bytes
    size: int  # bytes
    resize: bool = False

    def describe(self) -> str:
        verb = "resize" if self.resize else "add"
        return f"{verb} kernel partition {self.number} of {self.disk} ({self.start >> 20} MiB + {self.size >> 20} MiB)"

    def apply(self) -> None:
        part = ctypes.create_string_buffer(_BLKPG_PARTITION.pack(self.start, self.size, self.number, b"", b""))
        operation = _BLKPG_RESIZE if self.resize else _BLKPG_ADD
        argument = struct.pack("iiiP", operation, 0, _BLKPG_PARTITION.size, ctypes.addressof(part))
        try:
            fd = os.open(self.disk, os.O_RDONLY | os.O_CLOEXEC)  # a failing disk may refuse even this
            try:
                fcntl.ioctl(fd, _BLKPG, argument)
            finally:
                os.close(fd)
        except OSError as error:
            hint = "the disk's partitions are in use; reboot to use the new table" if error.errno == errno.EBUSY else ""
            raise StorageError(f"cannot {self.describe()}: {error.strerror}", hint) from None


# ---------------------------------------------------------------------------------------- probing


class FileSystem(NamedTuple):
    type: str  # ext2, ext3, ext4, jbd, iso9660, udf, vfat, swap
    label: str = ""


_BLKROGET = 0x125E


class DeviceReader:
    """Reads a disk read-only; the page cache is dropped first so that what other nodes of the same
    disk (its partitions) wrote is seen."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError:
            pass  # a regular file (tests) or a device without a page cache
        self.size = os.lseek(self.fd, 0, os.SEEK_END)

    def reader(self, base: int = 0) -> Reader:
        return lambda offset, length: os.pread(self.fd, length, base + offset)

    @property
    def read_only(self) -> bool:
        """Whether the kernel refuses writes to the device (BLKROGET: the disk, or this partition, set
        read-only, as a write-protected disk or one a hypervisor attached read-only); False for a file."""
        try:
            flag = fcntl.ioctl(self.fd, _BLKROGET, bytes(4))
        except OSError:
            return False
        return struct.unpack("i", flag)[0] != 0

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> DeviceReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def is_blank(read: Reader, size: int) -> bool:
    """Whether the first MiB (all of a smaller device) is zeros: no table, file system or volume header."""
    data = read(0, min(size, PROBE_BYTES))
    return data == bytes(len(data))


def probe(read: Reader) -> FileSystem | None:
    """The file system whose superblock starts the data *read* returns, or None."""
    for prober in (_probe_udf, _probe_iso9660, _probe_ext, _probe_vfat, _probe_swap):
        found = prober(read)
        if found is not None:
            return found
    return None


def probe_path(path: str | Path, offset: int = 0) -> FileSystem | None:
    with DeviceReader(str(path)) as device:
        return probe(device.reader(offset))


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", errors="replace").strip()


# ext2/3/4: superblock at 1024 (magic at +56, label at +120); the type follows blkid's feature rules.
_EXT_MAGIC = 0xEF53
_EXT3_COMPAT_JOURNAL = 0x4
_EXT3_INCOMPAT = 0x2 | 0x4 | 0x10  # filetype, recover, meta_bg: what ext3 understands
_EXT3_RO_COMPAT = 0x1 | 0x2 | 0x4  # sparse_super, large_file, btree_dir
_EXT_INCOMPAT_JOURNAL_DEV = 0x8


def _ext_superblock(read: Reader) -> bytes | None:
    """The ext2/3/4 superblock at the start of the data *read* returns, or None."""
    block = read(1024, 1024)
    if len(block) < 1024 or struct.unpack_from("<H", block, 56)[0] != _EXT_MAGIC:
        return None
    return block


def _probe_ext(read: Reader) -> FileSystem | None:
    block = _ext_superblock(read)
    if block is None:
        return None
    compat, incompat, ro_compat = struct.unpack_from("<III", block, 92)
    if incompat & _EXT_INCOMPAT_JOURNAL_DEV:
        kind = "jbd"
    elif incompat & ~_EXT3_INCOMPAT or ro_compat & ~_EXT3_RO_COMPAT:
        kind = "ext4"
    else:
        kind = "ext3" if compat & _EXT3_COMPAT_JOURNAL else "ext2"
    return FileSystem(kind, _text(block[120:136]))


_EXT_VALID_FS, _EXT_ERROR_FS = 0x1, 0x2  # s_state
_EXT_INCOMPAT_RECOVER = 0x4  # the journal holds transactions to replay
_EXT_RO_COMPAT_ORPHAN_PRESENT = 0x10000  # the orphan file lists inodes to release


def ext_check_reason(read: Reader, now: float) -> str | None:
    """Why ``e2fsck -p`` has work on the ext file system *read* returns, or None when its superblock
    says the check would only find it clean: unmounted cleanly (valid, no errors, no journal to replay,
    no orphan inodes) and no check due by mount count or age. These are e2fsck's own reasons to check."""
    block = _ext_superblock(read)
    if block is None:
        return "no ext superblock"
    mounts, max_mounts, _, state = struct.unpack_from("<HhHH", block, 52)
    last_check, interval = struct.unpack_from("<II", block, 64)
    incompat, ro_compat = struct.unpack_from("<II", block, 96)
    last_orphan = struct.unpack_from("<I", block, 232)[0]
    error_count = struct.unpack_from("<I", block, 404)[0]
    if state & _EXT_ERROR_FS or error_count:
        return "errors are recorded in it"
    if not state & _EXT_VALID_FS:
        return "it was not cleanly unmounted"
    if incompat & _EXT_INCOMPAT_RECOVER:
        return "its journal has transactions to replay"
    if last_orphan or ro_compat & _EXT_RO_COMPAT_ORPHAN_PRESENT:
        return "it has orphan inodes to release"
    if 0 < max_mounts <= mounts:
        return f"it was mounted {mounts} times since its last check"
    if interval and not last_check <= now < last_check + interval:
        return "its check interval has passed"
    return None


def _probe_iso9660(read: Reader) -> FileSystem | None:
    descriptor = read(32768, 2048)  # the primary volume descriptor (ECMA-119 sector 16)
    if descriptor[1:6] != b"CD001" or descriptor[0] != 1:
        return None
    return FileSystem("iso9660", descriptor[40:72].decode("ascii", errors="replace").strip())


def _probe_udf(read: Reader) -> FileSystem | None:
    # The volume recognition sequence (2048-byte descriptors from 32 KiB) names NSR02/NSR03 for UDF;
    # ISO 9660 images with a UDF bridge carry both, and blkid reports them as UDF too.
    sequence = read(32768, 16 * 2048)
    if not any(sequence[index + 1:index + 6] in (b"NSR02", b"NSR03") for index in range(0, len(sequence), 2048)):
        return None
    return FileSystem("udf", _udf_label(read))


def _udf_label(read: Reader) -> str:
    """The logical volume identifier: anchor (sector 256) -> main volume descriptor sequence -> LVD."""
    for block in (2048, 512, 4096):
        anchor = read(256 * block, 32)
        if len(anchor) < 24 or struct.unpack_from("<H", anchor)[0] != 2:
            continue
        length, location = struct.unpack_from("<II", anchor, 16)
        sequence = read(location * block, min(length, 64 * block))
        for offset in range(0, len(sequence) - block + 1, block):
            tag = struct.unpack_from("<H", sequence, offset)[0]
            if tag == 6:  # logical volume descriptor; the identifier is a 128-byte dstring at +84
                return _dstring(sequence[offset + 84:offset + 212])
            if tag == 8:  # terminating descriptor
                break
    return ""


def _dstring(raw: bytes) -> str:
    used = raw[-1]
    if used < 2 or used > len(raw) - 1:
        return ""
    payload = raw[1:used]
    return (payload.decode("utf-16-be", errors="replace") if raw[0] == 16 else payload.decode("latin-1")).strip()


def _probe_vfat(read: Reader) -> FileSystem | None:
    boot = read(0, 512)
    if len(boot) < 512 or boot[510:512] != b"\x55\xaa":
        return None
    sector_size, per_cluster, _, fats = struct.unpack_from("<HBHB", boot, 11)
    media = boot[21]
    valid = sector_size in (512, 1024, 2048, 4096) and per_cluster and not per_cluster & (per_cluster - 1)
    if not valid or fats not in (1, 2) or not (media == 0xF0 or media >= 0xF8):
        return None
    fat32 = struct.unpack_from("<H", boot, 22)[0] == 0  # 16-bit sectors-per-FAT is zero on FAT32
    signature, label_at = (66, 71) if fat32 else (38, 43)
    label = boot[label_at:label_at + 11].decode("ascii", errors="replace").strip() if boot[signature] == 0x29 else ""
    return FileSystem("vfat", "" if label == "NO NAME" else label)


def _probe_swap(read: Reader) -> FileSystem | None:
    for page in (4096, 8192, 16384, 65536):
        magic = read(page - 10, 10)
        if magic in (b"SWAPSPACE2", b"SWAP-SPACE"):
            return FileSystem("swap", _text(read(1024 + 28, 16)) if magic == b"SWAPSPACE2" else "")
    return None


# ---------------------------------------------------------------------------------------- ext contents

_EXT_EXTENTS_FL = 0x80000
_EXT_INLINE_DATA_FL = 0x10000000
_EXT_INCOMPAT_64BIT = 0x80
_EXT_MAX_DIR_BLOCKS = 16


def ext_root_names(read: Reader) -> list[str] | None:
    """Names in the root directory of an ext2/3/4 file system, read without mounting it (a foreign disk
    is never mounted to look at it); None when the layout is beyond this small reader."""
    try:
        return _ext_root_names(read)
    except struct.error:  # a truncated or damaged file system
        return None


def _ext_root_names(read: Reader) -> list[str] | None:
    sb = read(1024, 1024)
    if len(sb) < 1024 or struct.unpack_from("<H", sb, 56)[0] != _EXT_MAGIC:
        return None
    first_data_block, log_block = struct.unpack_from("<II", sb, 20)
    block_size = 1024 << log_block
    revision = struct.unpack_from("<I", sb, 76)[0]
    inode_size = struct.unpack_from("<H", sb, 88)[0] if revision else 128
    incompat = struct.unpack_from("<I", sb, 96)[0]
    descriptor = read((first_data_block + 1) * block_size, 64)
    inode_table = struct.unpack_from("<I", descriptor, 8)[0]
    if incompat & _EXT_INCOMPAT_64BIT and struct.unpack_from("<H", sb, 254)[0] >= 64:
        inode_table |= struct.unpack_from("<I", descriptor, 0x28)[0] << 32
    inode = read(inode_table * block_size + inode_size, 128)  # inode 2, the second of group 0
    mode, size = struct.unpack_from("<HxxI", inode, 0)
    flags = struct.unpack_from("<I", inode, 32)[0]
    if not stat.S_ISDIR(mode) or flags & _EXT_INLINE_DATA_FL:
        return None
    count = -(-size // block_size)
    blocks = _extent_blocks(inode[40:100], count) if flags & _EXT_EXTENTS_FL else _direct_blocks(inode[40:100], count)
    if blocks is None:
        return None
    names = []
    for number in blocks:
        data = read(number * block_size, block_size)
        offset = 0
        while offset + 8 <= len(data):
            entry_inode, record, name_length = struct.unpack_from("<IHB", data, offset)
            if record < 8:
                return None
            name = data[offset + 8:offset + 8 + name_length].decode("utf-8", errors="replace")
            if entry_inode and name not in (".", ".."):
                names.append(name)
            offset += record
    return sorted(names)


def _direct_blocks(i_block: bytes, count: int) -> list[int] | None:
    return list(struct.unpack_from(f"<{count}I", i_block)) if count <= min(12, _EXT_MAX_DIR_BLOCKS) else None


def _extent_blocks(i_block: bytes, count: int) -> list[int] | None:
    magic, entries, _, depth = struct.unpack_from("<HHHH", i_block)
    if magic != 0xF30A or depth != 0 or count > _EXT_MAX_DIR_BLOCKS:
        return None
    blocks: dict[int, int] = {}
    for index in range(min(entries, 4)):
        logical, length, start_high, start_low = struct.unpack_from("<IHHI", i_block, 12 + 12 * index)
        if length > 32768:
            return None  # an uninitialised extent
        for step in range(length):
            blocks[logical + step] = (start_high << 32 | start_low) + step
    return [blocks[index] for index in range(count)] if all(index in blocks for index in range(count)) else None
