"""Disks and CD-ROMs handed to the VM: sparse raw scratch disks and context ISO images."""

from __future__ import annotations

import re
from pathlib import Path

from ucernvm.context.iso import ISO_MAGIC_END, starts_iso9660
from ucernvm.errors import ConfigError

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
MAX_FILE_SIZE = 1 << 63  # off_t: no file can be this large


def parse_size(text: str) -> int:
    """Bytes in "20G", "512M", "1048576" (binary units, optional trailing B or iB)."""
    match = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    size = 0 if match is None else int(match.group(1)) * _UNITS[match.group(2).upper()]
    if not 0 < size < MAX_FILE_SIZE:
        raise ConfigError(f"invalid size {text!r}", hint="use a positive number with K, M, G or T, e.g. 20G")
    return size


def create_sparse_disk(path: Path, size: int) -> Path:
    """A raw disk of *size* bytes that takes no space until written, in directories made as needed (removed
    again if the disk cannot be made); an existing file is kept."""
    if path.exists():
        return path
    made = _missing_directories(path.parent)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as disk:
            disk.truncate(size)
    except OSError as error:
        if path.is_file():
            path.unlink()  # created, but not to its size (larger than the file system allows)
        _remove_directories(made)
        where = f"{error.filename}: " if error.filename and error.filename != str(path) else ""
        raise ConfigError(f"cannot create disk {path} of {size} bytes: {where}{error.strerror or error}") from None
    return path


def create_disks(paths: tuple[Path, ...], size: int) -> None:
    """The missing disks among *paths* made as sparse raw disks; none is left if one cannot be made, nor any
    directory made for them."""
    created: list[Path] = []
    made: list[Path] = []
    try:
        for path in paths:
            if not path.exists():
                made += _missing_directories(path.parent)
                created.append(create_sparse_disk(path, size))
    except ConfigError:
        for path in created:
            path.unlink()
        _remove_directories(made)
        raise


def _missing_directories(directory: Path) -> list[Path]:
    """*directory* and those above it that do not exist yet, outermost first: the ones mkdir would make."""
    missing: list[Path] = []
    while not directory.exists():
        missing.insert(0, directory)
        directory = directory.parent
    return missing


def _remove_directories(directories: list[Path]) -> None:
    """Directories made for a disk that is gone again, innermost first; one holding anything else, or not made
    after all, is left as it is."""
    for directory in reversed(directories):
        try:
            directory.rmdir()
        except OSError:
            pass


def check_disk(path: Path, creatable: bool = False) -> Path:
    """A disk image file or a block device (a raw disk for QEMU); with *creatable*, also a missing raw disk,
    which create_disks makes."""
    if not path.exists():
        if not creatable:
            raise ConfigError(f"disk {path} does not exist", hint="pass --disk-size to create it")
        if disk_format(path) != "raw":  # a sparse file is a raw disk: QEMU would refuse it as qcow2
            raise ConfigError(f"cannot create a qcow2 disk {path}",
                              hint=f"make it with qemu-img create -f qcow2 {path} SIZE, or name a .raw disk")
        return path
    if not (path.is_file() or path.is_block_device()):
        raise ConfigError(f"disk {path} is not a disk image file or a block device")
    return path


def disk_format(path: Path) -> str:
    return "qcow2" if path.suffix == ".qcow2" else "raw"


def is_iso9660(path: Path) -> bool:
    with path.open("rb") as stream:
        return starts_iso9660(stream.read(ISO_MAGIC_END))


def check_context(path: Path) -> Path:
    """The context must already be an ISO image (`ucernvm launch` makes one of a user-data file)."""
    if not path.exists():
        raise ConfigError(f"context {path} does not exist")
    if not path.is_file():
        raise ConfigError(f"context {path} is not a file", hint="pass a context ISO or a user-data file")
    if not is_iso9660(path):
        raise ConfigError(f"context {path} is not an ISO 9660 image", hint="pass a context ISO (.iso)")
    return path


def qemu_path(path: Path) -> str:
    """A file name inside a QEMU option list, where a comma must be doubled."""
    return str(path).replace(",", ",,")
