"""Partition tables written by ucernvm and read by sfdisk, and the other way round."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ucernvm.boot.partition import (
    LINUX_GPT_TYPE,
    MIB,
    Partition,
    new_table,
    read_table_fd,
    table_blocks,
    write_table,
)
from ucernvm.errors import FormatError, StorageError

pytestmark = pytest.mark.skipif(shutil.which("sfdisk") is None, reason="sfdisk (util-linux) is not installed")

ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"


def make_file(path: Path, size: int) -> Path:
    with path.open("wb") as handle:
        handle.truncate(size)
    return path


def sfdisk_json(path: Path | str) -> dict:
    result = subprocess.run(["sfdisk", "-J", str(path)], capture_output=True, check=True)
    return json.loads(result.stdout)["partitiontable"]


def sfdisk_verify(path: Path | str) -> str:
    result = subprocess.run(["sfdisk", "--verify", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def sfdisk_write(path: Path, script: str) -> None:
    subprocess.run(["sfdisk", "-q", str(path)], input=script, text=True, check=True, capture_output=True)


def read(path: Path):
    fd = os.open(path, os.O_RDONLY)
    try:
        return read_table_fd(fd, where=str(path))
    finally:
        os.close(fd)


def write(path: Path, table, wipe: bool = False) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        write_table(fd, table, wipe)
    finally:
        os.close(fd)


def test_mbr_written_here_reads_back_in_sfdisk(tmp_path: Path) -> None:
    disk = make_file(tmp_path / "disk", 100 * MIB)
    table = new_table("dos", 100 * MIB)
    start, end = table.free_regions()[0]
    first = table.add(start, 20 * MIB // 512)
    second_start, second_end = table.free_regions()[0]
    second = table.add(second_start, second_end - second_start)
    write(disk, table)

    dump = sfdisk_json(disk)
    assert dump["label"] == "dos"
    assert int(dump["id"], 16) == int(table.disk_id, 16)
    assert [(p["start"], p["size"], p["type"]) for p in dump["partitions"]] == [
        (2048, 40960, "83"),
        (first.end, 100 * MIB // 512 - first.end, "83"),
    ]
    assert (start, second.number, second_start) == (2048, 2, 43008)
    assert "No errors detected" in sfdisk_verify(disk)


def test_gpt_written_here_reads_back_in_sfdisk(tmp_path: Path) -> None:
    disk = make_file(tmp_path / "disk", 100 * MIB)
    table = new_table("gpt", 100 * MIB)
    start, end = table.free_regions()[0]
    part = table.add(start, end - start)
    write(disk, table)

    dump = sfdisk_json(disk)
    assert dump["label"] == "gpt"
    assert dump["id"] == table.disk_id
    assert (dump["firstlba"], dump["lastlba"]) == (34, 100 * MIB // 512 - 34)
    [entry] = dump["partitions"]
    assert (entry["start"], entry["size"], entry["type"], entry["uuid"]) == (2048, end - 2048, LINUX_GPT_TYPE, part.uuid)
    assert part.end - 1 == dump["lastlba"]  # the partition takes all the free space
    assert "No errors detected" in sfdisk_verify(disk)


def numbered(disk: Path, dump: dict) -> list[tuple[int, dict]]:
    return [(int(p["node"][len(str(disk)):]), p) for p in dump["partitions"]]


def test_gpt_made_by_sfdisk_reads_here(tmp_path: Path) -> None:
    disk = make_file(tmp_path / "disk", 100 * MIB)
    sfdisk_write(disk, f"""label: gpt
start=2048, size=10M, name="boot", attrs="RequiredPartition", type={ESP_TYPE}
size=20M, name="data"
""")
    dump = sfdisk_json(disk)
    table = read(disk)
    assert table.kind == "gpt" and table.disk_id == dump["id"] and table.notes == []
    assert (table.first_lba, table.last_lba) == (dump["firstlba"], dump["lastlba"])
    assert [(p.number, p.start, p.sectors, p.type, p.uuid, p.name) for p in table.partitions] == [
        (number, p["start"], p["size"], p["type"], p["uuid"], p["name"]) for number, p in numbered(disk, dump)
    ]
    assert table.partitions[0].attrs == 1  # RequiredPartition is bit 0
    assert table.free_regions() == [(63488, dump["lastlba"] + 1)]


def test_mbr_made_by_sfdisk_reads_here(tmp_path: Path) -> None:
    disk = make_file(tmp_path / "disk", 100 * MIB)
    sfdisk_write(disk, """label: dos
start=2048, size=10M, type=c, bootable
start=30M, size=20M, type=83
start=60M, type=5
start=61M, size=5M, type=83
""")
    dump = sfdisk_json(disk)
    table = read(disk)
    assert table.kind == "dos" and int(table.disk_id, 16) == int(dump["id"], 16)
    primaries = [(number, p) for number, p in numbered(disk, dump) if number <= 4]
    assert [(p.number, p.start, p.sectors, p.type) for p in table.partitions] == [
        (number, p["start"], p["size"], p["type"]) for number, p in primaries
    ]
    assert table.partitions[0].attrs == 0x80
    # the extended partition (with logical partition 5 inside) is occupied space; the gaps are free
    assert table.free_regions() == [(22528, 30 * 2048), (50 * 2048, 60 * 2048)]


def test_added_partition_keeps_the_others_and_the_boot_code(tmp_path: Path) -> None:
    disk = make_file(tmp_path / "disk", 100 * MIB)
    sfdisk_write(disk, "label: dos\nstart=2048, size=10M, type=c, bootable\n")
    with disk.open("r+b") as handle:
        handle.write(b"\xeb\x63boot code" + bytes(30))
    table = read(disk)
    start, end = table.free_regions()[0]
    table.add(start, end - start)
    write(disk, table)
    dump = sfdisk_json(disk)
    assert [(p["start"], p["size"], p["type"], p.get("bootable", False)) for p in dump["partitions"]] == [
        (2048, 20480, "c", True), (22528, 100 * 2048 - 22528, "83", False)
    ]
    assert disk.read_bytes()[:11] == b"\xeb\x63boot code"
    assert "No errors detected" in sfdisk_verify(disk)


def test_free_space_is_aligned_to_one_mib(tmp_path: Path) -> None:
    disk = make_file(tmp_path / "disk", 100 * MIB)
    sfdisk_write(disk, "label: gpt\nstart=2048, size=1000\nstart=10000, size=3000\n")
    table = read(disk)
    assert [start % 2048 for start, _ in table.free_regions()] == [0, 0]
    assert table.free_regions() == [(14336, table.last_lba + 1), (4096, 10000)]  # largest first


def test_backup_gpt_moves_to_the_end_of_a_grown_disk(tmp_path: Path) -> None:
    disk = make_file(tmp_path / "disk", 64 * MIB)
    table = new_table("gpt", 64 * MIB)
    start, end = table.free_regions()[0]
    table.add(start, end - start)
    write(disk, table)
    old_backup = 64 * MIB // 512 - 1
    os.truncate(disk, 128 * MIB)

    grown = read(disk)  # the primary header still describes the old size
    assert grown.last_lba == 64 * MIB // 512 - 34 and grown.backup_lba == old_backup
    assert grown.relocate_backup()
    assert grown.grow(1) == 64 * MIB // 512
    write(disk, grown)

    dump = sfdisk_json(disk)
    assert dump["lastlba"] == 128 * MIB // 512 - 34
    assert dump["partitions"][0]["start"] + dump["partitions"][0]["size"] - 1 == dump["lastlba"]
    with disk.open("rb") as handle:
        handle.seek(old_backup * 512)
        assert handle.read(512) == bytes(512)  # no stale header left in the middle of the disk
        handle.seek(-512, os.SEEK_END)
        assert handle.read(8) == b"EFI PART"
    assert "No errors detected" in sfdisk_verify(disk)


def test_mbr_partition_grows_to_the_end(tmp_path: Path) -> None:
    disk = make_file(tmp_path / "disk", 64 * MIB)
    sfdisk_write(disk, "label: dos\nstart=2048, size=10M\nstart=20M, size=20M\n")
    table = read(disk)
    assert table.grow(1) == (20 - 11) * 2048  # up to partition 2
    assert table.grow(2) == (64 - 40) * 2048  # up to the end
    write(disk, table)
    assert [(p["start"], p["size"]) for p in sfdisk_json(disk)["partitions"]] == [(2048, 19 * 2048), (20 * 2048, 44 * 2048)]
    assert table.grow(2) == 0


def test_gpt_crc_damage_falls_back_to_the_backup(tmp_path: Path) -> None:
    disk = make_file(tmp_path / "disk", 32 * MIB)
    sfdisk_write(disk, "label: gpt\nstart=2048, size=10M\n")
    expected = read(disk)
    with disk.open("r+b") as handle:
        handle.seek(2 * 512 + 36)  # inside the first partition entry of the primary array
        handle.write(b"\x01")
    table = read(disk)
    assert table.partitions == expected.partitions
    assert table.notes == ["the primary GPT header at sector 1: the partition entries fail their CRC32: using the backup"]

    with disk.open("r+b") as handle:
        handle.seek(-512 + 24, os.SEEK_END)  # the backup header's own LBA field: its CRC no longer matches
        handle.write(b"\x01")
    with pytest.raises(FormatError, match="damaged GPT: primary header at sector 1: the partition entries fail "
                                          "their CRC32; backup header at sector 65535 fails its CRC32"):
        read(disk)


def test_garbage_with_a_boot_signature_is_refused(tmp_path: Path) -> None:
    disk = make_file(tmp_path / "disk", 8 * MIB)
    with disk.open("r+b") as handle:
        handle.write(bytes(range(256)) * 2)
        handle.seek(510)
        handle.write(b"\x55\xaa")
    with pytest.raises(FormatError, match="the MBR is invalid .partition 1 has boot flag 0x.."):
        read(disk)


def test_blank_disk_and_fat_file_system_have_no_table(tmp_path: Path) -> None:
    disk = make_file(tmp_path / "disk", 40 * MIB)
    assert read(disk) is None
    if shutil.which("mkfs.fat") is None:
        pytest.skip("mkfs.fat (dosfstools) is not installed")
    for bits in ("16", "32"):
        subprocess.run(["mkfs.fat", "-F", bits, str(disk)], check=True, capture_output=True)
        assert read(disk) is None  # a FAT boot sector ends with 55 aa as well


@pytest.mark.parametrize("kind", ["dos", "gpt"])
def test_overlapping_partitions_are_refused(tmp_path: Path, kind: str) -> None:
    disk = make_file(tmp_path / "disk", 32 * MIB)
    table = new_table(kind, 32 * MIB)
    table.add(2048, 4096)
    with pytest.raises(StorageError, match="overlap an existing partition"):
        table.add(4096, 4096)
    with pytest.raises(StorageError, match="outside the usable area"):
        table.add(2048 * 31, 4096)
    # a table damaged elsewhere: written as is, refused when read
    table.partitions.append(Partition(2, 4096, 4096, table.partitions[0].type, table.partitions[0].uuid))
    fd = os.open(disk, os.O_RDWR)
    for offset, data in table_blocks(table):
        os.pwrite(fd, data, offset)
    os.close(fd)
    with pytest.raises(FormatError, match="partitions 1 and 2 overlap"):
        read(disk)


def test_mbr_partition_beyond_the_disk_is_refused(tmp_path: Path) -> None:
    disk = make_file(tmp_path / "disk", 64 * MIB)
    sfdisk_write(disk, "label: dos\nstart=2048, size=60M\n")
    os.truncate(disk, 32 * MIB)
    with pytest.raises(FormatError, match="MBR partition 1 .sectors 2048.122880. does not fit a disk of 65536 sectors"):
        read(disk)


def test_mbr_has_four_slots(tmp_path: Path) -> None:
    table = new_table("dos", 64 * MIB)
    for index in range(4):
        table.add(2048 + index * 4096, 4096)
    with pytest.raises(StorageError, match="no free partition slot"):
        table.add(2048 * 20, 4096)


def test_wipe_clears_old_signatures(tmp_path: Path) -> None:
    disk = make_file(tmp_path / "disk", 16 * MIB)
    with disk.open("r+b") as handle:
        handle.seek(1024 + 56)
        handle.write(b"\x53\xef")  # an ext superblock's magic
        handle.seek(-512, os.SEEK_END)
        handle.write(b"EFI PART")
    table = new_table("dos", 16 * MIB)
    table.add(2048, 4096)
    write(disk, table, wipe=True)
    data = disk.read_bytes()
    assert data[512:MIB] == bytes(MIB - 512) and data[-MIB:] == bytes(MIB)
    assert sfdisk_json(disk)["partitions"][0]["start"] == 2048


def test_gpt_on_4k_sectors_reads_in_sfdisk(tmp_path: Path) -> None:
    if os.geteuid() != 0 or not Path("/dev/loop-control").exists():
        pytest.skip("a loop device with 4096-byte sectors needs root and /dev/loop-control")
    backing = make_file(tmp_path / "disk", 64 * MIB)
    attach = subprocess.run(["losetup", "-f", "--show", "--sector-size", "4096", str(backing)], capture_output=True, text=True)
    if attach.returncode != 0:
        pytest.skip(f"no loop device: {attach.stderr.strip()}")
    device = attach.stdout.strip()
    try:
        table = new_table("gpt", 64 * MIB, sector_size=4096)
        start, end = table.free_regions()[0]
        table.add(start, end - start)
        fd = os.open(device, os.O_RDWR)
        try:
            write_table(fd, table)
            assert read_table_fd(fd, sector_size=4096).partitions == table.partitions
        finally:
            os.close(fd)
        dump = sfdisk_json(device)
        assert (dump["sectorsize"], dump["firstlba"], dump["lastlba"]) == (4096, 6, 64 * MIB // 4096 - 6)
        assert (dump["partitions"][0]["start"], dump["partitions"][0]["size"]) == (256, end - 256)
    finally:
        subprocess.run(["losetup", "-d", device], check=False)
