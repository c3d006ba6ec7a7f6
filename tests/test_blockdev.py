"""Block devices from a sysfs tree, and file systems recognised from their superblocks."""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from ucernvm.boot.blockdev import (
    DeviceReader,
    FileSystem,
    MakeNode,
    device_node,
    ext_root_names,
    is_blank,
    list_disks,
    probe_path,
)
from ucernvm.boot.system import DryRunSystem, RealSystem

MIB = 1 << 20


def fake_disk(sysfs: Path, name: str, dev: str, sectors: int, partitions: dict[str, tuple[int, int, int]] = {},
              ro: bool = False, removable: bool = False, hardware: bool = True, block_size: int = 512) -> None:
    """/sys/block/<name> as the kernel lays it out; partitions: name -> (number, start, sectors)."""
    base = sysfs / "block" / name
    (base / "queue").mkdir(parents=True)
    (base / "holders").mkdir()
    (base / "dev").write_text(f"{dev}\n")
    (base / "size").write_text(f"{sectors}\n")
    (base / "ro").write_text("1\n" if ro else "0\n")
    (base / "removable").write_text("1\n" if removable else "0\n")
    (base / "queue" / "logical_block_size").write_text(f"{block_size}\n")
    if hardware:
        (base / "device").mkdir()
    major = dev.split(":")[0]
    for index, (part, (number, start, size)) in enumerate(partitions.items(), 1):
        (base / part).mkdir()
        (base / part / "partition").write_text(f"{number}\n")
        (base / part / "start").write_text(f"{start}\n")
        (base / part / "size").write_text(f"{size}\n")
        (base / part / "dev").write_text(f"{major}:{index}\n")


@pytest.fixture
def sysfs(tmp_path: Path) -> Path:
    root = tmp_path / "sys"
    fake_disk(root, "vda", "254:0", 2097152, {"vda1": (1, 2048, 40960), "vda2": (2, 43008, 100000)})
    fake_disk(root, "sda", "8:0", 4194304, {"sda1": (1, 2048, 4192256)})
    fake_disk(root, "xvdb", "202:16", 1048576)
    fake_disk(root, "nvme0n1", "259:0", 8388608, {"nvme0n1p1": (1, 2048, 204800), "nvme0n1p2": (2, 206848, 8181727)},
              block_size=4096)
    fake_disk(root, "nvme1n1", "259:3", 8388608)
    fake_disk(root, "mmcblk0", "179:0", 3000000, {"mmcblk0p1": (1, 8192, 2991808)})
    fake_disk(root, "mmcblk0boot0", "179:8", 8192, ro=True)
    fake_disk(root, "sr0", "11:0", 0, removable=True, ro=True)  # an empty CD drive
    fake_disk(root, "sr1", "11:1", 2048, removable=True, ro=True)
    fake_disk(root, "loop0", "7:0", 204800, hardware=False)
    fake_disk(root, "zram0", "252:0", 8388608, hardware=False)
    return root


def test_every_naming_scheme(sysfs: Path) -> None:
    disks = {disk.name: disk for disk in list_disks(sysfs)}
    assert sorted(disks) == ["mmcblk0", "mmcblk0boot0", "nvme0n1", "nvme1n1", "sda", "sr1", "vda", "xvdb"]
    assert [p.name for p in disks["vda"].partitions] == ["vda1", "vda2"]
    assert [(p.name, p.number, p.start, p.size, p.dev) for p in disks["nvme0n1"].partitions] == [
        ("nvme0n1p1", 1, 2048 * 512, 204800 * 512, "259:1"),
        ("nvme0n1p2", 2, 206848 * 512, 8181727 * 512, "259:2"),
    ]
    assert disks["nvme0n1"].sector_size == 4096 and disks["nvme0n1"].size == 8388608 * 512
    assert disks["nvme1n1"].partitions == ()  # a disk whose name ends in a digit is still a disk
    assert [p.name for p in disks["mmcblk0"].partitions] == ["mmcblk0p1"]
    assert disks["mmcblk0"].partition(1).start == 8192 * 512 and disks["mmcblk0"].partition(2) is None
    assert disks["xvdb"].size == 512 * MIB and not disks["xvdb"].read_only
    assert disks["sr1"].removable and disks["sr1"].read_only
    assert disks["mmcblk0boot0"].read_only


def test_virtual_disks_only_when_named(sysfs: Path) -> None:
    assert [disk.name for disk in list_disks(sysfs, ["loop0", "vda", "missing"])] == ["loop0", "vda"]
    [loop] = list_disks(sysfs, ["loop0"])
    assert loop.virtual and loop.size == 100 * MIB


def test_missing_sysfs_lists_nothing(tmp_path: Path) -> None:
    assert list_disks(tmp_path) == []


def test_device_node_is_made_from_sysfs(tmp_path: Path) -> None:
    dry = DryRunSystem()
    try:
        assert device_node(dry, "vdb", "254:16", tmp_path) == str(tmp_path / "vdb")
        assert dry.actions == [f"create block device node {tmp_path / 'vdb'} (254:16)"]
        assert not (tmp_path / "vdb").exists()
    finally:
        shutil.rmtree(dry.root)
    if os.geteuid() != 0:
        pytest.skip("mknod needs root")
    real = RealSystem(str(tmp_path))
    path = device_node(real, "vdb", "254:16", tmp_path)
    info = os.stat(path)
    assert stat.S_ISBLK(info.st_mode) and (os.major(info.st_rdev), os.minor(info.st_rdev)) == (254, 16)
    assert device_node(real, "vdb", "254:16", tmp_path) == path and len(real.actions) == 1  # exists now
    MakeNode(path, "254:16").apply()  # a node that appeared meanwhile is fine


def need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed")


def image(tmp_path: Path, size: int = 16 * MIB, name: str = "image") -> Path:
    path = tmp_path / name
    with path.open("wb") as handle:
        handle.truncate(size)
    return path


@pytest.mark.parametrize("kind, options", [
    ("ext2", []), ("ext3", []), ("ext4", []), ("ext4", ["-b", "1024"]), ("ext4", ["-O", "64bit"]),
])  # fmt: skip
def test_ext_superblocks(tmp_path: Path, kind: str, options: list[str]) -> None:
    need("mke2fs")
    path = image(tmp_path)
    subprocess.run(["mke2fs", "-q", "-F", "-t", kind, "-L", "UROOT", *options, str(path)], check=True)
    assert probe_path(path) == FileSystem(kind, "UROOT")
    with DeviceReader(str(path)) as device:
        assert ext_root_names(device.reader()) == ["lost+found"]


def test_ext_at_an_offset_and_its_root_directory(tmp_path: Path) -> None:
    need("mke2fs")
    content = tmp_path / "content"
    (content / "etc").mkdir(parents=True)
    for index in range(300):  # more than one directory block
        (content / f"file-with-a-long-name-{index:04d}").write_text("x")
    path = image(tmp_path, 64 * MIB)
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext3", "-L", "data", "-b", "1024", "-d", str(content),
                    "-E", f"offset={MIB}", str(path), "32M"], check=True)  # fmt: skip
    assert probe_path(path) is None
    assert probe_path(path, MIB) == FileSystem("ext3", "data")
    with DeviceReader(str(path)) as device:
        names = ext_root_names(device.reader(MIB))
    assert names is not None and len(names) == 302 and "etc" in names and "lost+found" in names


def test_iso9660_and_udf(tmp_path: Path) -> None:
    pycdlib = pytest.importorskip("pycdlib")
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, vol_ident="UCVM-BOOT", joliet=3)
    iso.add_fp(io.BytesIO(b"x"), 1, "/USERDATA.;1", joliet_path="/user-data")
    iso.write(str(tmp_path / "plain.iso"))
    iso.close()
    assert probe_path(tmp_path / "plain.iso") == FileSystem("iso9660", "UCVM-BOOT")

    bridge = pycdlib.PyCdlib()
    bridge.new(interchange_level=3, vol_ident="CONTEXT", udf="2.60")
    bridge.write(str(tmp_path / "bridge.iso"))
    bridge.close()
    assert probe_path(tmp_path / "bridge.iso").type == "udf"  # an ISO 9660 with a UDF bridge reads as UDF


@pytest.mark.parametrize("block", ["512", "2048"])
def test_udf_label(tmp_path: Path, block: str) -> None:
    need("mkudffs")
    path = image(tmp_path, 8 * MIB)
    subprocess.run(["mkudffs", "-m", "hd", "-b", block, "--lvid=Azure Context", str(path)], check=True, capture_output=True)
    assert probe_path(path) == FileSystem("udf", "Azure Context")


@pytest.mark.parametrize("bits, label, expected", [("12", "CONFIG-2", "CONFIG-2"), ("16", "", ""), ("32", "ESP", "ESP")])
def test_fat(tmp_path: Path, bits: str, label: str, expected: str) -> None:
    need("mkfs.fat")
    path = image(tmp_path, {"12": 8, "16": 32, "32": 40}[bits] * MIB)
    subprocess.run(["mkfs.fat", "-F", bits, *(["-n", label] if label else []), str(path)], check=True, capture_output=True)
    assert probe_path(path) == FileSystem("vfat", expected)


def test_swap(tmp_path: Path) -> None:
    need("mkswap")
    path = image(tmp_path, 8 * MIB)
    subprocess.run(["mkswap", "-L", "swappy", str(path)], check=True, capture_output=True)
    assert probe_path(path) == FileSystem("swap", "swappy")


def test_blank_and_unknown(tmp_path: Path) -> None:
    path = image(tmp_path, 4 * MIB)
    with DeviceReader(str(path)) as device:
        assert is_blank(device.reader(), device.size)
    assert probe_path(path) is None
    with path.open("r+b") as handle:
        handle.seek(512)
        handle.write(b"LABELONE\x01\x00\x00\x00")  # an LVM physical volume's label: not a file system known here
    with DeviceReader(str(path)) as device:
        assert not is_blank(device.reader(), device.size)
        assert ext_root_names(device.reader()) is None
    assert probe_path(path) is None


def test_damaged_ext_root_directory_is_not_guessed(tmp_path: Path) -> None:
    need("mke2fs")
    path = image(tmp_path)
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext3", str(path)], check=True)
    with path.open("r+b") as handle:
        handle.truncate(4096)  # superblock kept, inode table gone
    with DeviceReader(str(path)) as device:
        assert ext_root_names(device.reader()) is None
