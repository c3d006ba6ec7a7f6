"""Finding and running the host tools the builder relies on (apt, dpkg-deb, depmod, strip, zstd...)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from ucernvm.errors import ConfigError, UcernvmError
from ucernvm.image.cache import FILES_KEPT, cache_dir, cached_file

# Debian keeps depmod and friends in /usr/sbin, which a non-root PATH often lacks.
_EXTRA_PATH = ("/usr/sbin", "/sbin")

# Which Debian package provides each tool, for the hint of a missing one.
TOOL_PACKAGES = {
    "apt-get": "apt",
    "apt-cache": "apt",
    "dpkg-deb": "dpkg",
    "depmod": "kmod",
    "strip": "binutils",
    "zstd": "zstd",
    "xz": "xz-utils",
    "lz4": "lz4",
    "qemu-system-x86_64": "qemu-system-x86",
}


def find_tool(name: str) -> str:
    """The absolute path of host tool *name*; ConfigError naming its package when it is missing."""
    path = os.environ.get("PATH", "") + os.pathsep + os.pathsep.join(_EXTRA_PATH)
    found = shutil.which(name, path=path)
    if found is None:
        package = TOOL_PACKAGES.get(name, name)
        raise ConfigError(f"required tool {name!r} not found", hint=f"install it: apt-get install {package}")
    return found


def run(
    argv: Sequence[str | Path],
    *,
    cwd: Path | None = None,
    stdin: int | None = None,
    stdout: int | None = subprocess.PIPE,
    what: str = "",
    hint: str = "",
) -> subprocess.CompletedProcess[bytes]:
    """Run a tool (argv[0] looked up with find_tool); a non-zero exit becomes a UcernvmError."""
    args = [find_tool(str(argv[0])), *(str(a) for a in argv[1:])]
    result = subprocess.run(args, cwd=cwd, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, check=False)
    if result.returncode != 0:
        detail = result.stderr.decode(errors="replace").strip().splitlines()
        last = detail[-1] if detail else f"exit status {result.returncode}"
        raise UcernvmError(f"{what or Path(args[0]).name} failed: {last}", hint=hint)
    return result


def stripped(path: Path, how: Sequence[str] = ("--strip-unneeded",)) -> Path:
    """A copy of ELF file *path* without symbols and debug sections, cached by path, size, mtime and *how*.

    Unstripped builds (pyenv's libpython is 23 MB, 5.7 MB stripped) would dominate the image. Kernel
    modules get ``--strip-debug`` (they need their symbols), which also drops their appended signature.
    """
    real = path.resolve()
    info = real.stat()
    options = " ".join(how)
    key = hashlib.sha256(f"{real}\0{info.st_size}\0{info.st_mtime_ns}\0{options}".encode()).hexdigest()[:24]
    target, _ = cached_file(cache_dir("stripped") / f"{key}-{real.name}",
                            lambda partial: run(["strip", *how, "-o", partial, real], what=f"strip {real.name}"),
                            FILES_KEPT)
    return target
