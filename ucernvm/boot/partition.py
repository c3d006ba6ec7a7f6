"""MBR and GPT partition tables, read and written in Python.

The boot needs only a few table operations (read, add a partition in free space, grow the last one,
move the backup GPT to the end of a grown disk); doing them here instead of shipping sfdisk/sgdisk
keeps their libraries out of the image and gives one code path for MBR and GPT. Layouts follow the
UEFI specification (GPT) and the classic PC MBR; sfdisk reads what this writes and vice versa.
Logical partitions of an MBR extended partition are not parsed: the extended partition counts as
occupied space and is written back unchanged.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Callable

from ucernvm.errors import FormatError, StorageError
from ucernvm.records import NamedTuple

MIB = 1 << 20
LINUX_MBR_TYPE = "83"
LINUX_GPT_TYPE = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"  # "Linux filesystem data"
_PROTECTIVE = 0xEE
_EXTENDED = {0x05, 0x0F, 0x85}
_MBR_LIMIT = 1 << 32  # MBR entries hold 32-bit sector numbers
_MBR_ENTRY = struct.Struct("<B3sB3sII")
_GPT_HEADER = struct.Struct("<8sIIIIQQQQ16sQIII")  # the 92 bytes the CRC covers by default
_GPT_ENTRY = struct.Struct("<16s16sQQQ72s")
_GPT_SIGNATURE = b"EFI PART"
_GPT_REVISION = 0x00010000
_GPT_MAX_ENTRY_BYTES = 1 << 20  # sanity bound: the default array is 16 KiB

Reader = Callable[[int, int], bytes]  # (offset, length) -> bytes


def human(size: int) -> str:
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", MIB), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


# The uuid module imports platform (several ms at PID-1 start); GUIDs need only these two helpers.
def guid_text(raw: bytes) -> str:
    """A GPT GUID (first three fields little-endian) as sfdisk prints it."""
    a, b, c = struct.unpack_from("<IHH", raw)
    rest = raw[8:].hex().upper()
    return f"{a:08X}-{b:04X}-{c:04X}-{rest[:4]}-{rest[4:]}"


def guid_bytes(text: str) -> bytes:
    digits = bytes.fromhex(text.replace("-", ""))
    if len(digits) != 16:
        raise FormatError(f"invalid GUID {text!r}")
    a, b, c = struct.unpack_from(">IHH", digits)
    return struct.pack("<IHH", a, b, c) + digits[8:]


def random_guid() -> str:
    raw = bytearray(os.urandom(16))
    raw[7] = (raw[7] & 0x0F) | 0x40  # version 4 (the version nibble sits in the little-endian third field)
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    return guid_text(bytes(raw))


class Partition(NamedTuple):
    number: int
    start: int  # in sectors
    sectors: int
    type: str  # MBR: hex as sfdisk prints it ("83", "c"); GPT: the type GUID
    uuid: str = ""  # GPT only
    name: str = ""  # GPT only
    attrs: int = 0  # GPT attribute bits; MBR: 0x80 marks the bootable partition

    @property
    def end(self) -> int:
        """First sector after the partition."""
        return self.start + self.sectors


class PartitionTable:
    __slots__ = ("kind", "disk_sectors", "sector_size", "partitions", "disk_id", "first_lba", "last_lba",
                 "entry_count", "entry_size", "boot_code", "backup_lba", "notes")

    def __init__(
        self,
        kind: str,
        disk_sectors: int,
        sector_size: int = 512,
        partitions: list[Partition] | None = None,
        disk_id: str = "",
        first_lba: int = 0,
        last_lba: int = 0,
        entry_count: int = 128,
        entry_size: int = 128,
        boot_code: bytes = bytes(440),
        backup_lba: int = 0,
        notes: list[str] | None = None,
    ) -> None:
        self.kind = kind  # "dos" or "gpt", as sfdisk names them
        self.disk_sectors = disk_sectors
        self.sector_size = sector_size
        self.partitions: list[Partition] = [] if partitions is None else partitions
        self.disk_id = disk_id  # MBR: "0x1234abcd"; GPT: the disk GUID
        self.first_lba = first_lba  # first and last sector partitions may use
        self.last_lba = last_lba
        self.entry_count = entry_count  # GPT partition entry array
        self.entry_size = entry_size
        self.boot_code = boot_code  # kept as found: a boot loader may live there
        # GPT: where the backup header is on the disk now (it stays behind when a disk grows)
        self.backup_lba = backup_lba
        self.notes: list[str] = [] if notes is None else notes  # what was repaired while reading

    @property
    def entry_sectors(self) -> int:
        return -(-self.entry_count * self.entry_size // self.sector_size)

    def partition(self, number: int) -> Partition:
        for part in self.partitions:
            if part.number == number:
                return part
        raise StorageError(f"the partition table has no partition {number}")

    def free_regions(self) -> list[tuple[int, int]]:
        """Unused (start, end) sector ranges, starts aligned to 1 MiB, largest first."""
        align = MIB // self.sector_size
        end_of_disk = self.last_lba + 1
        used = [(part.start, part.end) for part in sorted(self.partitions, key=lambda p: p.start)]
        regions = []
        cursor = self.first_lba
        for used_start, used_end in used + [(end_of_disk, end_of_disk)]:
            start = -(-cursor // align) * align
            if used_start > start:
                regions.append((start, used_start))
            cursor = max(cursor, used_end)
        return sorted(regions, key=lambda region: region[0] - region[1])

    def free_slot(self) -> int | None:
        used = {part.number for part in self.partitions}
        slots = range(1, (4 if self.kind == "dos" else self.entry_count) + 1)
        return next((slot for slot in slots if slot not in used), None)

    def add(self, start: int, sectors: int) -> Partition:
        """A new Linux partition in the first free slot."""
        if start < self.first_lba or start + sectors > self.last_lba + 1 or sectors <= 0:
            raise StorageError(f"sectors {start}-{start + sectors - 1} are outside the usable area of the disk")
        if any(start < part.end and part.start < start + sectors for part in self.partitions):
            raise StorageError(f"sectors {start}-{start + sectors - 1} overlap an existing partition")
        number = self.free_slot()
        if number is None:
            raise StorageError(f"no free partition slot in the {self.kind} table")
        if self.kind == "dos":
            part = Partition(number, start, sectors, LINUX_MBR_TYPE)
        else:
            part = Partition(number, start, sectors, LINUX_GPT_TYPE, uuid=random_guid())
        self.partitions.append(part)
        self.partitions.sort(key=lambda p: p.number)
        return part

    def grow(self, number: int) -> int:
        """Extend a partition up to the next one or the end of the usable area; the sectors gained."""
        part = self.partition(number)
        limit = min([p.start for p in self.partitions if p.start > part.start] + [self.last_lba + 1])
        gained = limit - part.end
        if gained <= 0:
            return 0
        self.partitions[self.partitions.index(part)] = part._replace(sectors=part.sectors + gained)
        return gained

    def relocate_backup(self) -> bool:
        """``sgdisk -e``: on a disk that grew, move the backup GPT to its end and extend the usable area;
        whether anything changed (an MBR always describes the disk it is read from)."""
        last_lba = _last_usable(self.kind, self.disk_sectors, self.entry_sectors)
        moved = self.kind == "gpt" and self.backup_lba != self.disk_sectors - 1
        changed = moved or last_lba != self.last_lba
        self.last_lba = last_lba
        return changed

    def describe(self) -> str:
        parts = ", ".join(
            f"{part.number}: {human(part.start * self.sector_size)}+{human(part.sectors * self.sector_size)}"
            for part in self.partitions
        )
        return f"{'GPT' if self.kind == 'gpt' else 'MBR'} [{parts or 'no partitions'}]"


def _last_usable(kind: str, disk_sectors: int, entry_sectors: int) -> int:
    if kind == "dos":
        return min(disk_sectors, _MBR_LIMIT) - 1
    return disk_sectors - 1 - entry_sectors - 1  # backup entries, then the backup header in the last sector


def new_table(kind: str, disk_bytes: int, sector_size: int = 512) -> PartitionTable:
    """An empty table for a disk of *disk_bytes*."""
    sectors = disk_bytes // sector_size
    if kind == "dos":
        disk_id = f"0x{int.from_bytes(os.urandom(4), 'little') | 1:08x}"
        table = PartitionTable("dos", sectors, sector_size, disk_id=disk_id, first_lba=1)
    elif kind == "gpt":
        table = PartitionTable("gpt", sectors, sector_size, disk_id=random_guid())
        table.first_lba = 2 + table.entry_sectors
    else:
        raise ValueError(kind)
    table.last_lba = _last_usable(kind, sectors, table.entry_sectors)
    if table.last_lba < table.first_lba:
        raise StorageError(f"a disk of {human(disk_bytes)} is too small for a partition table")
    return table


# ---------------------------------------------------------------------------------------------- reading


def read_table(read: Reader, disk_bytes: int, sector_size: int = 512, where: str = "disk") -> PartitionTable | None:
    """The partition table of a disk, None if it has none; FormatError for a damaged or invalid one."""
    sector0 = read(0, 512)
    if len(sector0) < 512 or sector0[510:512] != b"\x55\xaa":
        return None
    if _is_boot_record(sector0):
        return None  # a FAT/NTFS file system on the whole disk carries the same signature
    entries = [_MBR_ENTRY.unpack_from(sector0, 446 + 16 * slot) for slot in range(4)]
    disk_sectors = disk_bytes // sector_size
    if any(entry[2] == _PROTECTIVE for entry in entries):
        return _read_gpt(read, disk_sectors, sector_size, sector0, where)
    return _read_mbr(sector0, entries, disk_sectors, sector_size, where)


def _is_boot_record(sector0: bytes) -> bool:
    return sector0[3:11] == b"NTFS    " or sector0[54:59] == b"FAT12" or sector0[54:59] == b"FAT16" or sector0[82:87] == b"FAT32"


def _read_mbr(sector0: bytes, entries: list[tuple], disk_sectors: int, sector_size: int, where: str) -> PartitionTable:
    table = PartitionTable("dos", disk_sectors, sector_size, disk_id=f"0x{struct.unpack_from('<I', sector0, 440)[0]:08x}",
                           first_lba=1, last_lba=_last_usable("dos", disk_sectors, 0), boot_code=sector0[:440])
    for slot, (status, _chs_first, kind, _chs_last, start, sectors) in enumerate(entries, 1):
        if status not in (0x00, 0x80):
            raise FormatError(f"{where}: the MBR is invalid (partition {slot} has boot flag 0x{status:02x})",
                              "the first sector is not a partition table; wipe it if the disk holds nothing")
        if kind == 0:
            continue
        if start == 0 or sectors == 0 or start + sectors > disk_sectors:
            raise FormatError(f"{where}: MBR partition {slot} (sectors {start}+{sectors}) does not fit a disk of "
                              f"{disk_sectors} sectors", "repair or wipe the partition table")
        table.partitions.append(Partition(slot, start, sectors, f"{kind:x}", attrs=status))
    _check_overlaps(table, where)
    return table


def _check_overlaps(table: PartitionTable, where: str) -> None:
    ordered = sorted(table.partitions, key=lambda p: p.start)
    for first, second in zip(ordered, ordered[1:]):
        if second.start < first.end:
            raise FormatError(f"{where}: partitions {first.number} and {second.number} overlap",
                              "repair the partition table before using this disk")


def _read_gpt(read: Reader, disk_sectors: int, sector_size: int, sector0: bytes, where: str) -> PartitionTable:
    try:
        header, entries = _gpt_header(read, 1, disk_sectors, sector_size)
        notes = []
    except FormatError as primary_error:
        try:
            header, entries = _gpt_header(read, disk_sectors - 1, disk_sectors, sector_size)
        except FormatError as backup_error:
            raise FormatError(f"{where}: damaged GPT: primary header {primary_error.message}; "
                              f"backup header {backup_error.message}", "repair the partition table (gdisk)") from None
        notes = [f"the primary GPT header {primary_error.message}: using the backup"]
    (_, _, _, _, _, my_lba, other_lba, first_lba, last_lba, disk_guid, _, count, size, _) = header
    if not first_lba <= last_lba < disk_sectors:
        raise FormatError(f"{where}: GPT usable area {first_lba}-{last_lba} does not fit a disk of {disk_sectors} sectors")
    table = PartitionTable("gpt", disk_sectors, sector_size, disk_id=guid_text(disk_guid), first_lba=first_lba,
                           last_lba=last_lba, entry_count=count, entry_size=size, boot_code=sector0[:440],
                           backup_lba=other_lba if my_lba == 1 else my_lba, notes=notes)
    for index in range(count):
        type_guid, unique, first, last, attrs, name = _GPT_ENTRY.unpack_from(entries, index * size)
        if type_guid == bytes(16):
            continue
        if not first_lba <= first <= last <= last_lba:
            raise FormatError(f"{where}: GPT partition {index + 1} (sectors {first}-{last}) is outside the usable "
                              f"area {first_lba}-{last_lba}", "repair the partition table (gdisk)")
        label = name.decode("utf-16-le", errors="replace").split("\0", 1)[0]
        table.partitions.append(Partition(index + 1, first, last - first + 1, guid_text(type_guid),
                                          guid_text(unique), label, attrs))
    _check_overlaps(table, where)
    return table


def _gpt_header(read: Reader, lba: int, disk_sectors: int, sector_size: int) -> tuple[tuple, bytes]:
    """One GPT header (at *lba*) and its entry array, both checked against their CRC32."""
    raw = read(lba * sector_size, sector_size)
    if len(raw) < _GPT_HEADER.size or raw[:8] != _GPT_SIGNATURE:
        raise FormatError(f"at sector {lba} is missing")
    header = _GPT_HEADER.unpack_from(raw)
    (_, _, header_size, crc, _, my_lba, _, _, _, _, entries_lba, count, size, entries_crc) = header
    if not _GPT_HEADER.size <= header_size <= sector_size:
        raise FormatError(f"at sector {lba} has an invalid size {header_size}")
    if zlib.crc32(raw[:16] + b"\0\0\0\0" + raw[20:header_size]) != crc:
        raise FormatError(f"at sector {lba} fails its CRC32")
    if my_lba != lba:
        raise FormatError(f"at sector {lba} says it is at sector {my_lba}")
    if size < _GPT_ENTRY.size or size % 8 or count * size > _GPT_MAX_ENTRY_BYTES or count == 0:
        raise FormatError(f"at sector {lba} has an invalid entry array ({count} entries of {size} bytes)")
    if not 0 < entries_lba < disk_sectors:
        raise FormatError(f"at sector {lba} places its entries outside the disk")
    entries = read(entries_lba * sector_size, count * size)
    if len(entries) != count * size or zlib.crc32(entries) != entries_crc:
        raise FormatError(f"at sector {lba}: the partition entries fail their CRC32")
    return header, entries


# ---------------------------------------------------------------------------------------------- writing


def table_blocks(table: PartitionTable) -> list[tuple[int, bytes]]:
    """The (byte offset, bytes) writes that put *table* on its disk."""
    sector0 = bytearray(512)
    sector0[:440] = table.boot_code
    sector0[510:512] = b"\x55\xaa"
    if table.kind == "dos":
        struct.pack_into("<I", sector0, 440, int(table.disk_id, 16))
        for part in table.partitions:
            _pack_mbr_entry(sector0, part.number, part.attrs & 0x80, int(part.type, 16), part.start, part.sectors)
        return [(0, bytes(sector0))]
    _pack_mbr_entry(sector0, 1, 0, _PROTECTIVE, 1, min(table.disk_sectors - 1, _MBR_LIMIT - 1))
    entries = bytearray(table.entry_count * table.entry_size)
    for part in table.partitions:
        _GPT_ENTRY.pack_into(entries, (part.number - 1) * table.entry_size, guid_bytes(part.type), guid_bytes(part.uuid),
                             part.start, part.end - 1, part.attrs, part.name.encode("utf-16-le")[:72])
    array = bytes(entries)
    last = table.disk_sectors - 1
    backup_entries = last - table.entry_sectors
    size = table.sector_size
    return [
        (0, bytes(sector0)),
        (size, _gpt_header_sector(table, 1, last, 2, array)),
        (2 * size, array),
        (backup_entries * size, array),
        (last * size, _gpt_header_sector(table, last, 1, backup_entries, array)),
    ]


def _gpt_header_sector(table: PartitionTable, lba: int, other: int, entries_lba: int, array: bytes) -> bytes:
    fields = [_GPT_SIGNATURE, _GPT_REVISION, _GPT_HEADER.size, 0, 0, lba, other, table.first_lba, table.last_lba,
              guid_bytes(table.disk_id), entries_lba, table.entry_count, table.entry_size, zlib.crc32(array)]
    fields[3] = zlib.crc32(_GPT_HEADER.pack(*fields))
    return _GPT_HEADER.pack(*fields).ljust(table.sector_size, b"\0")


def _pack_mbr_entry(sector0: bytearray, slot: int, status: int, kind: int, start: int, sectors: int) -> None:
    _MBR_ENTRY.pack_into(sector0, 446 + 16 * (slot - 1), status, _chs(start), kind, _chs(start + sectors - 1), start, sectors)


def _chs(lba: int) -> bytes:
    """Cylinder/head/sector for the usual 255-head, 63-sector geometry; the maximum beyond cylinder 1023."""
    if lba >= 1024 * 255 * 63:
        return b"\xfe\xff\xff"
    cylinder, rest = divmod(lba, 255 * 63)
    head, sector = divmod(rest, 63)
    return bytes((head, (sector + 1) | ((cylinder >> 2) & 0xC0), cylinder & 0xFF))


def write_table(fd: int, table: PartitionTable, wipe: bool = False) -> None:
    """Write *table*; *wipe* zeroes the first and last MiB first, so no old signature survives."""
    disk_bytes = table.disk_sectors * table.sector_size
    if wipe:
        for offset in sorted({0, max(0, disk_bytes - MIB)}):
            os.pwrite(fd, bytes(min(MIB, disk_bytes)), offset)
    if table.kind == "gpt" and 1 < table.backup_lba < table.disk_sectors - 1:
        # the backup header left inside a grown disk: zeroed, so no tool takes it for a table
        os.pwrite(fd, bytes(table.sector_size), table.backup_lba * table.sector_size)
    for offset, data in table_blocks(table):
        os.pwrite(fd, data, offset)
    os.fsync(fd)
    table.backup_lba = table.disk_sectors - 1 if table.kind == "gpt" else 0


class WriteTable(NamedTuple):
    """Write a partition table on a disk (an action: a dry run only describes it)."""

    device: str
    table: PartitionTable
    wipe: bool = False

    def describe(self) -> str:
        wiped = " after wiping its first and last MiB" if self.wipe else ""
        return f"write partition table {self.table.describe()} on {self.device}{wiped}"

    def apply(self) -> None:
        fd = os.open(self.device, os.O_WRONLY | os.O_CLOEXEC)
        try:
            write_table(fd, self.table, self.wipe)
        except OSError as error:
            raise StorageError(f"cannot write the partition table of {self.device}: {error.strerror}") from None
        finally:
            os.close(fd)


def file_reader(fd: int, base: int = 0) -> Reader:
    """Reads from an open file or block device, *base* bytes in."""
    return lambda offset, length: os.pread(fd, length, base + offset)


def read_table_fd(fd: int, sector_size: int = 512, where: str = "disk") -> PartitionTable | None:
    return read_table(file_reader(fd), os.lseek(fd, 0, os.SEEK_END), sector_size, where)
