"""``ucernvm build``: kernel + initramfs + manifest, from the running Python and a Debian kernel.

Output directory:
  vmlinuz        the bzImage (boots anywhere; QEMU with KVM)
  vmlinux        the uncompressed ELF extracted from it (PVH boot under TCG; a host-side file)
  initrd.img     concatenated compressed newc cpio segments (see compress.py)
  manifest.json  what went in, sizes by component, compression, timings
"""

from __future__ import annotations

import gzip
import hashlib
import json
import lzma
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import ucernvm
from ucernvm.errors import ConfigError
from ucernvm.image import cpio, tools
from ucernvm.image.cache import FILES_KEPT, cache_dir, cached_file
from ucernvm.image.compress import COMPRESSORS, compress
from ucernvm.image.cpio import Entry
from ucernvm.image.elfdeps import LibraryResolver, elf_info, is_elf
from ucernvm.image.kernel import (
    DEFAULT_PACKAGE,
    KERNEL_SLOTS_KEPT,
    Kernel,
    debian_kernel,
    extract_vmlinux,
    has_pvh_entry,
    kernel_from_path,
)
from ucernvm.image.kernel_source import source_kernel
from ucernvm.image.kmods import ModuleIndex, modname
from ucernvm.image.pyruntime import Interpreter, PythonPayload, probe_imports, python_payload

INPUTS_DIR = Path(ucernvm.__file__).resolve().parent.parent / "initramfs"
DEFAULT_INIT = "ucernvm.boot.pid1:main"
# Components that follow the project's code and build options: packed last, in a small segment.
APP_COMPONENTS = frozenset({"ucernvm", "init", "keys"})
# Kernel modules keep their symbols; stripping their debug sections also drops their signature, which the
# kernel then does not check: under emulation, checking the signatures of the boot's 30 modules took seconds.
# Their BTF type information (for BPF programs that trace them; ~8% of each module) goes too.
_MODULES = "kernel-modules"
MODULE_STRIP = ("--strip-debug", "--remove-section=.BTF")
_INIT_RE = re.compile(r"^[A-Za-z_][\w.]*(:[A-Za-z_]\w*)?$")


@dataclass(frozen=True)
class BuildOptions:
    output: Path
    kernel: Path | None = None  # a .deb, an unpacked package tree or a bzImage; else kernel_package
    kernel_package: str = DEFAULT_PACKAGE
    kernel_source: str | None = None  # a linux-source package to build with inputs/kernel.config instead
    keys: Path | None = None  # default: initramfs/keys
    init: str = DEFAULT_INIT  # "module[:function]" that /init runs
    init_paths: tuple[Path, ...] = ()  # where modules outside the package and site-packages live
    extra_modules: tuple[str, ...] = ()
    inputs: Path = INPUTS_DIR
    compression: str = "zstd"
    # Bytecode optimization level: 2 drops docstrings and asserts, which the boot has no use for (it prints
    # no help text; its asserts only narrow types), and 0.20 MB of the compressed initramfs with them
    # (11.78 -> 11.58 MB, zstd -19, Debian's kernel modules): what keeps the image within its 20 MB goal.
    optimize: int = 2
    source_date_epoch: int | None = None  # default: $SOURCE_DATE_EPOCH, else 0
    use_cache: bool = True  # reuse compressed segments
    signed_modules: bool = False  # keep the modules' signatures (for kernels that enforce them)


@dataclass
class BuildResult:
    output: Path
    manifest: dict[str, object] = field(default_factory=dict)

    @property
    def vmlinuz(self) -> Path:
        return self.output / "vmlinuz"

    @property
    def vmlinux(self) -> Path:
        return self.output / "vmlinux"

    @property
    def initrd(self) -> Path:
        return self.output / "initrd.img"


def build_image(options: BuildOptions, progress: Callable[[str], None] = lambda _: None) -> BuildResult:
    """Build the image described by *options* into ``options.output``."""
    started = time.monotonic()
    phases: dict[str, float] = {}

    def phase(name: str, since: float) -> float:
        now = time.monotonic()
        phases[name] = round(now - since, 2)
        return now

    _parse_init(options.init)
    if options.compression not in COMPRESSORS:
        raise ConfigError(f"unknown compression {options.compression!r}", hint=f"use one of: {', '.join(COMPRESSORS)}")
    epoch = options.source_date_epoch
    if epoch is None:
        text = os.environ.get("SOURCE_DATE_EPOCH", "0")
        if not text.isdigit():
            raise ConfigError(f"SOURCE_DATE_EPOCH={text!r} is not a number of seconds")
        epoch = int(text)
    if epoch > cpio.MAX_MTIME:
        raise ConfigError(f"SOURCE_DATE_EPOCH={epoch!r} is after 2106-02-07, the last time a cpio archive holds")
    options.output.mkdir(parents=True, exist_ok=True)

    progress("kernel")
    t = time.monotonic()
    if options.kernel:
        kernel = kernel_from_path(options.kernel)
    elif options.kernel_source:
        kernel = source_kernel(options.inputs / "kernel.config", options.kernel_source, progress)
    else:
        kernel = debian_kernel(options.kernel_package)
    vmlinux, pvh = _vmlinux(kernel)
    t = phase("kernel", t)

    progress("python closure")
    with tempfile.TemporaryDirectory(prefix="ucernvm-build-") as tmp:
        staging = Path(tmp)
        entries, python = python_entries(
            options.init, options.init_paths, options.extra_modules, options.inputs, staging, options.optimize
        )
        t = phase("python", t)

        progress("kernel modules")
        modules, load_order = module_entries(kernel, _list_file(options.inputs / "modules.txt"))
        entries += modules
        t = phase("kernel-modules", t)

        progress("tools and libraries")
        host_tools = tool_entries(options.inputs / "tools.txt")
        entries += host_tools
        entries += library_entries([e.source for e in host_tools if e.source and is_elf(e.source)], [])
        entries += layout_entries()
        entries += key_entries(options.keys or options.inputs / "keys")
        entries = [_stripped(e, options.signed_modules) for e in entries]
        t = phase("tools", t)

        progress(f"cpio + {options.compression}")
        partial = options.output / "initrd.img.partial"
        try:
            with partial.open("wb") as initrd:
                segments = _write_segments(entries, initrd, staging, epoch, options)
            partial.replace(options.output / "initrd.img")
        except BaseException:  # a file the archive cannot hold, a compressor failing, Ctrl-C
            partial.unlink(missing_ok=True)
            raise
        packed_files = [e for e in cpio.normalize(entries) if stat.S_ISREG(e.mode)]
        components = _components(packed_files, kernel.bzimage.stat().st_size)
        files = sorted(([e.path, e.component, e.size] for e in packed_files), key=lambda row: (-row[2], row[0]))
        t = phase("cpio+compress", t)

    shutil.copyfile(kernel.bzimage, options.output / "vmlinuz")
    _link_or_copy(vmlinux, options.output / "vmlinux")
    result = BuildResult(options.output)
    result.manifest = {
        "format": 1,
        "kernel": {
            "release": kernel.release,
            "source": kernel.source,
            "vmlinuz_bytes": result.vmlinuz.stat().st_size,
            "vmlinux_bytes": result.vmlinux.stat().st_size,
            "pvh": pvh,
        },
        "init": options.init,
        "python": {
            "executable": str(python.interpreter.executable),
            "version": python.interpreter.version,
            "optimize": options.optimize,
            "modules": python.modules,
        },
        "kernel_modules": load_order,
        "components": components,
        "files": files,  # every regular file: image path, component, bytes; largest first
        "initrd": {
            "compression": " ".join(COMPRESSORS[options.compression]),
            "segments": segments,
            "bytes": result.initrd.stat().st_size,
            "sha256": _sha256(result.initrd),
        },
        "boot_bytes": result.vmlinuz.stat().st_size + result.initrd.stat().st_size,
        "source_date_epoch": epoch,
        "build": {"seconds": round(time.monotonic() - started, 2), "phases": phases},
    }
    (options.output / "manifest.json").write_text(json.dumps(result.manifest, indent=2) + "\n")
    return result


def _write_segments(entries: Sequence[Entry], initrd: BinaryIO, staging: Path, epoch: int,
                    options: BuildOptions) -> list[dict[str, object]]:
    """Write the runtime and app segments, each a compressed cpio archive, to *initrd*; what each holds."""
    segments: list[dict[str, object]] = []
    for name, members in (
        ("runtime", [e for e in entries if e.component not in APP_COMPONENTS]),
        ("app", [e for e in entries if e.component in APP_COMPONENTS]),
    ):
        archive = staging / f"{name}.cpio"
        with archive.open("wb") as out:
            size = cpio.write(members, out, mtime=epoch)
        digest = _sha256(archive)
        packed, cached = compress(archive, digest, options.compression, options.use_cache)
        with packed.open("rb") as stream:
            shutil.copyfileobj(stream, initrd)
        segments.append({"name": name, "cpio_bytes": size, "cpio_sha256": digest,
                         "compressed_bytes": packed.stat().st_size, "from_cache": cached})
    return segments


def python_entries(
    init: str,
    init_paths: Sequence[Path],
    extra_modules: Sequence[str],
    inputs: Path,
    staging: Path,
    optimize: int,
) -> tuple[list[Entry], PythonPayload]:
    """The running interpreter trimmed to what *init* imports, its shared libraries, and /init.

    Enough to run the init module in a chroot of the unpacked entries (layout_entries() added).
    """
    module, function = _parse_init(init)
    interpreter = Interpreter.current()
    package_dir = Path(ucernvm.__file__).resolve().parent
    extra = [*_list_file(inputs / "python-modules.txt"), *extra_modules]
    probe = probe_imports(interpreter, [module, *extra], [package_dir.parent, *init_paths],
                          left_out=_list_file(inputs / "python-modules-left-out.txt"))
    python = python_payload(interpreter, probe, package_dir, init_paths, staging, optimize)
    entries = [*python.entries, *library_entries(python.elf_roots, python.mapped_libraries)]
    shim = (inputs / "init.template").read_text().format(
        interpreter=interpreter.image_executable, module=module, function=function
    )
    entries.append(Entry.blob("init", shim.encode(), "init", perm=0o755))
    return entries, python


def _parse_init(init: str) -> tuple[str, str]:
    if not _INIT_RE.match(init):
        raise ConfigError(f"invalid init entry {init!r}",
                          hint="use MODULE or MODULE:FUNCTION, e.g. ucernvm.boot.pid1:main")
    module, _, function = init.partition(":")
    return module, function or "main"


def _list_file(path: Path) -> list[str]:
    """Non-empty lines of *path* without '#' comments."""
    return [w for line in path.read_text().splitlines() if (w := line.split("#", 1)[0].strip())]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _link_or_copy(source: Path, target: Path) -> None:
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:  # another file system than the cache
        shutil.copyfile(source, target)


def _vmlinux(kernel: Kernel) -> tuple[Path, bool]:
    """The ELF kernel of the bzImage (cached by its hash) and whether it has a PVH entry point."""
    target, _ = cached_file(cache_dir("vmlinux") / f"{_sha256(kernel.bzimage)[:24]}.elf",
                            lambda partial: partial.write_bytes(extract_vmlinux(kernel.bzimage.read_bytes())),
                            KERNEL_SLOTS_KEPT)
    return target, has_pvh_entry(target)


def module_entries(kernel: Kernel, names: Sequence[str]) -> tuple[list[Entry], list[str]]:
    """The requested modules with their dependencies, and subsets of the depmod index files."""
    if kernel.modules_dir is None:
        return [], []
    index = ModuleIndex.load(kernel.modules_dir)
    try:
        order = index.load_order(names)
    except KeyError as error:
        raise ConfigError(f"kernel {kernel.release} has no module {error.args[0]!r}",
                          hint="fix initramfs/modules.txt") from error
    base = f"usr/lib/modules/{kernel.release}"
    entries: list[Entry] = []
    image_paths: dict[str, str] = {}
    for name in order:
        rel = index.paths[name]
        source, rel = _uncompressed_module(kernel.modules_dir / rel, rel)
        image_paths[name] = rel
        entries.append(Entry.file(f"{base}/{rel}", source, "kernel-modules"))
    included = set(order)
    dep_lines = [f"{image_paths[n]}: {' '.join(image_paths[d] for d in index.deps[n])}".rstrip() for n in order]
    softdep_lines = [line for n in order for line in index.softdep_lines.get(n, [])]
    alias_lines = [f"alias {pattern} {m}" for pattern, mods in sorted(index.aliases.items())
                   for m in mods if m in included]
    for filename, lines in (("modules.dep", dep_lines), ("modules.softdep", softdep_lines),
                            ("modules.alias", alias_lines)):
        entries.append(Entry.blob(f"{base}/{filename}", "".join(f"{line}\n" for line in lines).encode(),
                                  "kernel-modules"))
    builtin = kernel.modules_dir / "modules.builtin"
    if builtin.exists():
        entries.append(Entry.file(f"{base}/modules.builtin", builtin, "kernel-modules"))
    return entries, order


def _uncompressed_module(path: Path, rel: str) -> tuple[Path, str]:
    """finit_module takes plain .ko files, and the initramfs compressor does better on them too."""
    openers: dict[str, Callable[[Path], bytes]] = {
        ".xz": lambda p: lzma.decompress(p.read_bytes()),
        ".gz": lambda p: gzip.decompress(p.read_bytes()),
        ".zst": lambda p: tools.run(["zstd", "-dcq", p], what="zstd -d").stdout,
    }
    opener = openers.get(path.suffix)
    if opener is None:
        return path, rel
    info = path.stat()
    key = hashlib.sha256(f"{path}\0{info.st_size}\0{info.st_mtime_ns}".encode()).hexdigest()[:24]
    target, _ = cached_file(cache_dir("modules") / f"{key}-{modname(path.name)}.ko",
                            lambda partial: partial.write_bytes(opener(path)), FILES_KEPT)
    return target, rel[: -len(path.suffix)]


def tool_entries(listing: Path) -> list[Entry]:
    entries = []
    for line in _list_file(listing):
        words = line.split()
        if words[0] == "link" and len(words) == 3:
            entries.append(Entry.symlink(words[1], words[2]))
        elif words[0] == "file" and len(words) == 5:
            _, image_path, host_path, component, package = words
            source = Path(host_path)
            if not source.is_file():
                raise ConfigError(f"{host_path} not found (needed for {component})",
                                  hint=f"install it: apt-get install {package}")
            perm = 0o755 if is_elf(source) else 0o644
            entries.append(Entry.file(image_path, source.resolve(), component, perm=perm))
        else:
            raise ConfigError(f"{listing}: cannot parse line {line!r}")
    return entries


def library_entries(roots: Iterable[Path], mapped: Iterable[Path]) -> list[Entry]:
    """The shared libraries of *roots* (and *mapped* ones with theirs), under their sonames."""
    mapped = list(mapped)
    closure = LibraryResolver().closure([*roots, *mapped])
    libraries = dict(closure.libraries)
    for path in mapped:
        info = elf_info(path.resolve())
        name = info.soname or path.name
        if closure.interpreter is None or name != Path(closure.interpreter).name:
            libraries.setdefault(name, path)
    entries = [
        Entry.file(f"usr/lib/{soname}", path.resolve(), "python" if soname.startswith("libpython") else "shared-libs",
                   perm=0o755)
        for soname, path in sorted(libraries.items())
    ]
    if closure.interpreter and closure.interpreter_file:
        # /lib64, /lib and /bin are links into /usr in the image, as on a usr-merged system.
        image_path = closure.interpreter.lstrip("/")
        if image_path.split("/", 1)[0] in ("lib", "lib64", "bin", "sbin"):
            image_path = f"usr/{image_path}"
        entries.append(Entry.file(image_path, closure.interpreter_file, "shared-libs", perm=0o755))
    return entries


def layout_entries() -> list[Entry]:
    entries = [Entry.directory(d) for d in ("dev", "proc", "sys", "run", "mnt", "etc", "usr/bin", "usr/sbin",
                                           "usr/lib", "usr/lib64")]
    entries += [Entry.directory("tmp", perm=0o1777), Entry.directory("root", perm=0o700)]
    entries += [Entry.symlink(link, f"usr/{link}") for link in ("bin", "sbin", "lib", "lib64")]
    # devtmpfs is mounted by init, later: Python needs /dev/urandom before that (the CRNG is not
    # ready when PID 1 starts), and the kernel opens /dev/console for init's stdio.
    entries += [
        Entry.chardev("dev/console", 5, 1, perm=0o600),
        Entry.chardev("dev/null", 1, 3),
        Entry.chardev("dev/random", 1, 8),
        Entry.chardev("dev/urandom", 1, 9),
    ]
    return entries


def key_entries(keys: Path) -> list[Entry]:
    if not keys.is_dir():
        raise ConfigError(f"keys directory {keys} does not exist")
    return [
        Entry.file(f"etc/cvmfs/keys/{key.relative_to(keys).as_posix()}", key, "keys")
        for key in sorted(keys.rglob("*.pub"))
        if key.is_file()
    ]


def _stripped(entry: Entry, signed_modules: bool) -> Entry:
    if entry.source is None or not is_elf(entry.source):
        return entry
    if entry.component == _MODULES:
        if signed_modules:
            return entry
        return Entry(entry.path, entry.mode, entry.component, source=tools.stripped(entry.source, MODULE_STRIP))
    return Entry(entry.path, entry.mode, entry.component, source=tools.stripped(entry.source))


def _components(files: Sequence[Entry], vmlinuz_bytes: int) -> dict[str, dict[str, int]]:
    table: dict[str, dict[str, int]] = {"kernel": {"files": 1, "bytes": vmlinuz_bytes}}
    for entry in files:
        row = table.setdefault(entry.component, {"files": 0, "bytes": 0})
        row["files"] += 1
        row["bytes"] += entry.size
    return table
