"""The ucernvm kernel: Debian's kernel source (the ``linux-source`` package from apt) configured with
``initramfs/kernel.config`` and built once per source version and configuration (cached).

Like the CernVM kernel, it builds in every driver the boot needs instead of loading modules: under
emulation the boot then neither loads modules nor runs the initcalls of the hundreds of drivers a
distribution kernel builds in for hardware a VM does not have.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

from ucernvm.errors import ConfigError
from ucernvm.image import tools
from ucernvm.image.cache import cache_dir
from ucernvm.image.kernel import Kernel, bzimage_release, kernel_slot_used, resolve_package
from ucernvm.tarfiles import tarfile

DEFAULT_SOURCE_PACKAGE = "linux-source"
_ASSIGNMENT = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")


def source_kernel(config: Path, package: str = DEFAULT_SOURCE_PACKAGE,
                  progress: Callable[[str], None] = lambda step: None) -> Kernel:
    """The kernel built from *package* with the options of *config* (a Kconfig fragment), cached."""
    name, version = resolve_package(package, family="linux-source-")
    fragment = config.read_text()
    wanted = fragment_assignments(fragment, str(config))  # a malformed line fails now, not after the download
    digest = hashlib.sha256(f"{name} {version}\n{fragment}".encode()).hexdigest()[:16]
    slot = cache_dir("kernels", f"{name}_{version.replace(':', '%3a')}-{digest}")
    bzimage = slot / "vmlinuz"
    if not (slot / ".complete").exists():
        progress(f"kernel: building {name} {version} with {config.name} (once; minutes)")
        remove_abandoned_builds(slot.parent)
        with tempfile.TemporaryDirectory(prefix=f"build-{os.getpid()}-", dir=slot.parent) as work:
            tree = _unpack_source(name, version, Path(work))
            _configure(tree, config, wanted)
            _make(tree, [*_build_identity(tree), "bzImage"], what="the kernel build")
            shutil.copyfile(tree / ".config", slot / "config")
            shutil.copyfile(tree / "arch/x86/boot/bzImage", slot / "vmlinuz.partial")
            (slot / "vmlinuz.partial").replace(bzimage)  # a concurrent build finds a whole file or none
        (slot / ".complete").write_text(f"{name} {version} {digest}\n")
    kernel_slot_used(slot)
    return Kernel(release=bzimage_release(bzimage.read_bytes()), bzimage=bzimage, modules_dir=None,
                  source=f"{name} {version} with {config.name} ({digest})")


def remove_abandoned_builds(kernels: Path) -> None:
    """Delete the work trees (2-3 GB each) of builds whose process is gone, e.g. killed mid-build."""
    for work in kernels.glob("build-*-*"):
        pid = work.name.split("-")[1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(work, ignore_errors=True)


def _unpack_source(name: str, version: str, work: Path) -> Path:
    tools.run(["apt-get", "download", f"{name}={version}"], cwd=work, what=f"apt-get download {name}",
              hint="check the network access to the Debian mirror, or pass --kernel PATH")
    deb = next(work.glob("*.deb"))
    tools.run(["dpkg-deb", "-x", deb, work / "deb"], what="dpkg-deb -x")
    deb.unlink()
    archive = next((work / "deb" / "usr" / "src").glob("linux-source-*.tar.*"))
    with tarfile.open(archive) as tar:
        tar.extractall(work / "src", filter="tar")
    shutil.rmtree(work / "deb")
    return next((work / "src").iterdir())


def _build_identity(tree: Path) -> list[str]:
    """The user, host and time the kernel reports (uname -v): fixed, or each build would differ."""
    stamp = time.strftime("%a %b %d %H:%M:%S UTC %Y", time.gmtime((tree / "Makefile").stat().st_mtime))
    return ["KBUILD_BUILD_USER=ucernvm", "KBUILD_BUILD_HOST=ucernvm", f"KBUILD_BUILD_TIMESTAMP={stamp}"]


def _configure(tree: Path, config: Path, wanted: dict[str, str]) -> None:
    """allnoconfig with the fragment forced in (Kconfig's KCONFIG_ALLCONFIG), then a check that every
    assignment of the fragment survived: Kconfig silently drops one whose dependencies are off."""
    _make(tree, [f"KCONFIG_ALLCONFIG={config.resolve()}", "allnoconfig"], what="make allnoconfig")
    dropped = dropped_options(wanted, (tree / ".config").read_text())
    if dropped:
        raise ConfigError(f"kernel options not taken: {', '.join(dropped)}",
                          hint=f"enable what they depend on in {config}")


def fragment_assignments(text: str, name: str = "the kernel configuration") -> dict[str, str]:
    """``CONFIG_X=value`` lines of a Kconfig fragment; anything but those, comments and blank lines is an
    error, since Kconfig would only warn about a misspelt line and build without it."""
    assignments: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = _ASSIGNMENT.match(stripped)
        if match is None:
            raise ConfigError(f"{name}:{number}: not a CONFIG_NAME=value line: {stripped[:80]!r}")
        assignments[match.group(1)] = match.group(2)
    return assignments


def dropped_options(wanted: dict[str, str], config: str) -> list[str]:
    """The assignments of *wanted* that the resulting ``.config`` text does not have."""
    result = {m.group(1): m.group(2) for m in map(_ASSIGNMENT.match, config.splitlines()) if m}
    return sorted(f"{key}={value}" for key, value in wanted.items() if result.get(key) != value)


def _make(tree: Path, targets: list[str], what: str) -> None:
    tools.run(["make", "-C", tree, f"-j{os.cpu_count() or 1}", *targets], what=what,
              hint="install the kernel's build dependencies: apt-get install build-essential bc bison flex "
                   "libelf-dev")
