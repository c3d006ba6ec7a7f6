"""The kernel that goes into the image: Debian's package from apt (cached), or one given by path.

Also pulls the uncompressed ELF ``vmlinux`` out of a bzImage: QEMU boots that directly through
the PVH entry point, which under TCG saves the firmware and decompression time (about 3 s here).
"""

from __future__ import annotations

import hashlib
import json
import lzma
import re
import shutil
import struct
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path

from ucernvm.errors import ConfigError, FetchError
from ucernvm.image import tools
from ucernvm.image.cache import cache_dir, keep_recent, used

DEFAULT_PACKAGE = "linux-image-amd64"
APT_LISTS = "/var/lib/apt/lists"
KERNEL_SLOTS_KEPT = 4  # unpacked kernel packages (~400 MB each) and built kernels, most recently used
RESOLVED_KEPT = 16  # remembered package resolutions

# Magic numbers of the compressors a bzImage payload may use (arch/x86/boot/compressed).
_XZ_MAGIC = b"\xfd7zXZ\x00"
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_LZMA_MAGIC = b"\x5d\x00\x00"


@dataclass(frozen=True)
class Kernel:
    """A kernel ready to be packed: its bzImage and (optionally) a depmod'ed module tree."""

    release: str
    bzimage: Path
    modules_dir: Path | None  # .../lib/modules/<release>, None for a bare bzImage
    source: str  # the package and version, or the path it came from


def debian_kernel(package: str = DEFAULT_PACKAGE) -> Kernel:
    """Resolve *package* to its versioned linux-image package, download and unpack it (cached)."""
    name, version = resolve_package(package)
    slot = cache_dir("kernels", f"{name}_{version.replace(':', '%3a')}")
    root = slot / "root"
    if not (slot / ".complete").exists():
        shutil.rmtree(slot)
        slot.mkdir(parents=True)
        tools.run(
            ["apt-get", "download", f"{name}={version}"],
            cwd=slot,
            what=f"apt-get download {name}",
            hint="check the network access to the Debian mirror, or pass --kernel PATH",
        )
        deb = next(slot.glob("*.deb"))
        tools.run(["dpkg-deb", "-x", deb, root], what="dpkg-deb -x")
        deb.unlink()  # the unpacked tree is what is reused; the .deb would only double the cache
        _depmod(root)
        (slot / ".complete").write_text(f"{name} {version}\n")
    kernel_slot_used(slot)
    return _kernel_in_tree(root, source=f"{name} {version}")


def kernel_slot_used(slot: Path) -> None:
    """Mark a kernel's cache slot used and drop the least recently used others (a kernel update
    leaves its predecessor's ~400 MB behind)."""
    keep_recent((entry for entry in used(slot).parent.iterdir() if entry.is_dir()), KERNEL_SLOTS_KEPT)


def resolve_package(package: str, family: str = "linux-image-") -> tuple[str, str]:
    """(versioned package, candidate version): follows a metapackage to the *family* package it depends on.

    Each apt-cache call loads the whole package cache (about 1 s), so the answer is remembered
    until the package lists change.
    """
    lists = sorted(Path(APT_LISTS).glob("*")) if Path(APT_LISTS).is_dir() else []
    state = hashlib.sha256(
        "\0".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in lists).encode()
    ).hexdigest()[:24]
    key = hashlib.sha256(f"{family}{package}".encode()).hexdigest()[:12]
    memo = cache_dir("resolved") / f"{key}-{state}.json"
    if memo.exists():
        name, version = json.loads(used(memo).read_text())
        return name, version
    resolved = _resolve_with_apt(package, family)
    memo.write_text(json.dumps(resolved))
    keep_recent(memo.parent.iterdir(), RESOLVED_KEPT)  # one per package lists' state: each apt-get update adds one
    return resolved


def _resolve_with_apt(package: str, family: str) -> tuple[str, str]:
    version = _candidate(package)
    depends = tools.run(["apt-cache", "depends", package], what="apt-cache depends").stdout.decode()
    for match in re.finditer(rf"^\s*Depends:\s*({re.escape(family)}\S+)", depends, re.MULTILINE):
        target = match.group(1)
        if target != package and not target.startswith("<"):
            return target, _candidate(target)
    return package, version


def _candidate(package: str) -> str:
    policy = tools.run(["apt-cache", "policy", package], what="apt-cache policy").stdout.decode()
    match = re.search(r"^\s*Candidate:\s*(\S+)", policy, re.MULTILINE)
    if match is None or match.group(1) == "(none)":
        raise FetchError(
            f"package {package} has no installation candidate",
            hint="run `apt-get update` (a fresh system has no package lists), or pass --kernel PATH",
        )
    return match.group(1)


def kernel_from_path(path: Path) -> Kernel:
    """A kernel from a .deb, from an unpacked package tree, or from a bare bzImage (no modules)."""
    if path.is_dir():
        return _kernel_in_tree(path, source=str(path))
    if not path.is_file():
        raise ConfigError(f"kernel {path} does not exist")
    if path.suffix == ".deb":
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        slot = cache_dir("kernels", f"deb-{digest}")
        root = slot / "root"
        if not (slot / ".complete").exists():
            shutil.rmtree(slot)
            slot.mkdir(parents=True)
            tools.run(["dpkg-deb", "-x", path, root], what="dpkg-deb -x")
            _depmod(root)
            (slot / ".complete").write_text(f"{path}\n")
        kernel_slot_used(slot)
        return _kernel_in_tree(root, source=str(path))
    return Kernel(release=bzimage_release(path.read_bytes()), bzimage=path, modules_dir=None, source=str(path))


def _module_dirs(root: Path) -> list[Path]:
    return sorted([*root.glob("lib/modules/*"), *root.glob("usr/lib/modules/*")])


def _depmod(root: Path) -> None:
    # dpkg-deb -x does not run the package's postinst, so modules.dep does not exist yet.
    for modules in _module_dirs(root):
        # depmod -b BASE reads BASE/lib/modules/RELEASE, which also fits a usr/lib/modules tree.
        tools.run(["depmod", "-b", modules.parents[2], modules.name], what="depmod")


def _kernel_in_tree(root: Path, source: str) -> Kernel:
    for modules in _module_dirs(root):
        release = modules.name
        for bzimage in (root / "boot" / f"vmlinuz-{release}", modules / "vmlinuz"):
            if bzimage.is_file():
                if not (modules / "modules.dep").exists():
                    raise ConfigError(
                        f"{modules} has no modules.dep",
                        hint=f"run: depmod -b {root} {release}",
                    )
                return Kernel(release=release, bzimage=bzimage, modules_dir=modules, source=source)
    raise ConfigError(
        f"no kernel found in {root}",
        hint="expected boot/vmlinuz-RELEASE and lib/modules/RELEASE (an unpacked linux-image package)",
    )


def _setup_header(bzimage: bytes) -> tuple[int, int, int]:
    """(setup sectors, payload offset, payload length) from the x86 boot protocol header."""
    if len(bzimage) < 0x250 or bzimage[0x202:0x206] != b"HdrS":
        raise ConfigError("not an x86 bzImage (no HdrS boot header)")
    (protocol,) = struct.unpack_from("<H", bzimage, 0x206)
    if protocol < 0x208:
        raise ConfigError(f"bzImage boot protocol {protocol:#x} is too old (payload fields need 2.08)")
    setup_sects = bzimage[0x1F1] or 4
    payload_offset, payload_length = struct.unpack_from("<II", bzimage, 0x248)
    return setup_sects, payload_offset, payload_length


def bzimage_release(bzimage: bytes) -> str:
    """The kernel release string the boot header points at (e.g. ``6.1.0-56-amd64``)."""
    _setup_header(bzimage)
    (pointer,) = struct.unpack_from("<H", bzimage, 0x20E)
    text = bzimage[pointer + 0x200 : pointer + 0x200 + 256].split(b"\0", 1)[0].decode(errors="replace")
    return text.split(" ", 1)[0]


def extract_vmlinux(bzimage: bytes) -> bytes:
    """Decompress the ELF kernel carried by a bzImage, located through the boot header."""
    setup_sects, payload_offset, payload_length = _setup_header(bzimage)
    start = (setup_sects + 1) * 512 + payload_offset
    payload = bzimage[start : start + payload_length]
    if len(payload) < payload_length:
        raise ConfigError(f"the bzImage is cut short: its payload ends at byte {start + payload_length}, "
                          f"the file at {len(bzimage)}")
    # The decoders stop at the end of the stream (the kernel build appends the uncompressed size after
    # it) and return what they have for a stream that ends early: only a stream's end proves it whole.
    try:
        if payload.startswith(_XZ_MAGIC) or payload.startswith(_LZMA_MAGIC):
            decoder = lzma.LZMADecompressor(format=lzma.FORMAT_XZ if payload.startswith(_XZ_MAGIC) else
                                            lzma.FORMAT_ALONE)
            elf, complete = decoder.decompress(payload), decoder.eof
        elif payload.startswith(_GZIP_MAGIC):
            inflater = zlib.decompressobj(wbits=31)
            elf, complete = inflater.decompress(payload), inflater.eof
        elif payload.startswith(_ZSTD_MAGIC):
            proc = subprocess.run([tools.find_tool("zstd"), "-dcq"], input=payload, capture_output=True,
                                  check=False)
            elf, complete = proc.stdout, proc.returncode == 0
        else:
            raise ConfigError(f"unsupported bzImage payload compression (magic {payload[:6].hex()})")
    except (lzma.LZMAError, zlib.error) as error:
        raise ConfigError(f"the bzImage payload does not decompress: {error}") from None
    if not complete:
        raise ConfigError("the bzImage payload does not decompress: the compressed stream ends early")
    if not elf.startswith(b"\x7fELF"):
        raise ConfigError("the bzImage payload did not decompress to an ELF kernel")
    return elf


def has_pvh_entry(vmlinux: Path) -> bool:
    """Whether the ELF kernel carries XEN_ELFNOTE_PHYS32_ENTRY, which QEMU needs to boot it via PVH."""
    from elftools.elf.elffile import ELFFile  # build-time dependency only

    with vmlinux.open("rb") as stream:
        elf = ELFFile(stream)
        for segment in elf.iter_segments():
            if segment["p_type"] != "PT_NOTE":
                continue
            for note in segment.iter_notes():
                if note["n_name"] == "Xen" and note["n_type"] == 18:  # XEN_ELFNOTE_PHYS32_ENTRY
                    return True
    return False
