"""Real disk images for the context tests, and a way to mount them read-only.

Images are built with the tools that make them in real life (pycdlib for ISO 9660 and UDF bridges,
mkfs.vfat + mtools, mkudffs, mkfs.ext4 -d). They are mounted by the kernel through a loop device
and the boot's own ``SystemMounter`` when the kernel has the file system; where it lacks it (some
CI kernels have no isofs, vfat or udf), by FUSE implementations (fuseiso, fusefat) of the same
format. Tests skip with the reason when neither can mount a type.
"""

from __future__ import annotations

import io
import os
import platform
import shutil
import subprocess
from pathlib import Path

import pytest

from ucernvm.boot.blockdev import probe_path
from ucernvm.boot.system import RealSystem
from ucernvm.context.iso import write_iso
from ucernvm.context.found import BlockDevice
from ucernvm.context.sources import SystemMounter
from ucernvm.errors import MountError

KERNEL_MODULES = {"iso9660": "fs/isofs", "vfat": "fs/fat", "udf": "fs/udf", "ext4": "fs/ext4"}
FUSE_TOOLS = {"iso9660": "fuseiso", "udf": "fuseiso", "vfat": "fusefat"}  # udf: ISO images with a UDF bridge


def _kernel_has(fstype: str) -> bool:
    with open("/proc/filesystems") as listing:
        if fstype in listing.read().split():
            return True
    module_dir = Path("/lib/modules") / platform.release() / "kernel" / KERNEL_MODULES.get(fstype, "-")
    return module_dir.is_dir()


def _loops_usable() -> bool:
    return os.geteuid() == 0 and os.path.exists("/dev/loop-control") and shutil.which("losetup") is not None


def mount_method(fstype: str) -> str:
    """"kernel" or "fuse" for images of ``fstype``; skips the test when neither works here."""
    if _loops_usable() and _kernel_has(fstype):
        return "kernel"
    tool = FUSE_TOOLS.get(fstype)
    if tool and shutil.which(tool) and shutil.which("fusermount") and os.path.exists("/dev/fuse"):
        return "fuse"
    why = "no loop devices (needs root)" if not _loops_usable() else f"the kernel has no {fstype}"
    pytest.skip(f"cannot mount {fstype} images: {why}, and no FUSE tool ({tool or 'none'}) for it "
                "(apt: fuseiso, fusefat)")


class Media:
    """Attaches images as candidate devices and mounts them read-only (a ``Mounter``)."""

    def __init__(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.kernel = SystemMounter(RealSystem(), str(workdir / "kernel-mount"))
        self.fuse_dir = workdir / "fuse-mount"
        self.loops: list[str] = []

    def attach(self, image: Path, fstype: str | None = None, label: str | None = None) -> BlockDevice:
        """The device for ``image``: its type and label as the boot's superblock probe reads them,
        unless given (a broken image may not probe)."""
        probed = probe_path(image)
        fstype = fstype or (probed.type if probed else "")
        label = label if label is not None else (probed.label if probed else "")
        if mount_method(fstype) == "fuse":
            return BlockDevice(str(image), fstype, label)
        loop = subprocess.run(["losetup", "--find", "--show", "--read-only", str(image)], capture_output=True,
                              text=True, check=True).stdout.strip()
        self.loops.append(loop)
        return BlockDevice(loop, fstype, label)

    def mount(self, device: BlockDevice) -> Path:
        if device.path.startswith("/dev/"):
            return self.kernel.mount(device)
        self.fuse_dir.mkdir(exist_ok=True)
        tool = FUSE_TOOLS[device.fstype]
        argv = [tool, device.path, str(self.fuse_dir)] if tool == "fuseiso" else [tool, "-o", "ro", device.path,
                                                                                  str(self.fuse_dir)]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        if result.returncode != 0 or not os.path.ismount(self.fuse_dir):
            raise MountError(f"{tool} {device.path}: {(result.stderr or result.stdout).strip() or 'failed'}")
        return self.fuse_dir

    def unmount(self, path: Path) -> None:
        if path == self.kernel.directory:
            self.kernel.unmount(path)
        else:
            subprocess.run(["fusermount", "-u", str(path)], check=True, capture_output=True)

    def close(self) -> None:
        for loop in self.loops:
            subprocess.run(["losetup", "--detach", loop], capture_output=True)


# ---------------------------------------------------------------------------------------- images


def iso_image(path: Path, files: dict[str, bytes], label: str = "CONTEXT") -> Path:
    write_iso(path, label, files)
    return path


def udf_bridge_image(path: Path, files: dict[str, bytes], label: str = "UDF") -> Path:
    """An ISO 9660 image with a UDF 2.60 bridge, flat (files at the root), as Azure's provisioning medium."""
    pycdlib = pytest.importorskip("pycdlib")
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=4, joliet=3, vol_ident=label, udf="2.60")
    for index, (name, data) in enumerate(sorted(files.items())):
        iso.add_fp(io.BytesIO(data), len(data), f"/F{index}.;1", joliet_path=f"/{name}", udf_path=f"/{name}")
    iso.write(str(path))
    iso.close()
    return path


def _need(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (apt: dosfstools, mtools, udftools, e2fsprogs)")


def vfat_image(path: Path, files: dict[str, bytes], label: str = "") -> Path:
    _need("mkfs.vfat", "mcopy", "mmd")
    subprocess.run(["mkfs.vfat", "-C", *(["-n", label] if label else []), str(path), "4096"], check=True,
                   capture_output=True)
    staging = path.with_suffix(".files")
    _stage(staging, files)
    for entry in sorted(staging.iterdir()):
        subprocess.run(["mcopy", "-s", "-i", str(path), str(entry), "::"], check=True, capture_output=True)
    return path


def ext4_image(path: Path, files: dict[str, bytes], label: str = "") -> Path:
    _need("mkfs.ext4")
    staging = path.with_suffix(".files")
    _stage(staging, files)
    subprocess.run(["mkfs.ext4", "-q", "-F", *(["-L", label] if label else []), "-d", str(staging), str(path), "8M"],
                   check=True, capture_output=True)
    return path


def udf_image(path: Path, files: dict[str, bytes], label: str = "UDF") -> Path:
    """A UDF file system from mkudffs, filled through a read-write kernel mount (no userspace writer)."""
    _need("mkudffs")
    if not (_loops_usable() and _kernel_has("udf")):
        pytest.skip("filling a mkudffs image needs a kernel with udf and loop devices")
    with open(path, "wb") as image:
        image.truncate(8 << 20)
    subprocess.run(["mkudffs", f"--label={label}", "--media-type=hd", str(path)], check=True, capture_output=True)
    target = path.with_suffix(".mnt")
    target.mkdir()
    subprocess.run(["mount", "-o", "loop", "-t", "udf", str(path), str(target)], check=True, capture_output=True)
    try:
        _stage(target, files)
    finally:
        subprocess.run(["umount", str(target)], check=True, capture_output=True)
    return path


def _stage(directory: Path, files: dict[str, bytes]) -> None:
    directory.mkdir(exist_ok=True)
    for name, data in files.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_bytes(data)
