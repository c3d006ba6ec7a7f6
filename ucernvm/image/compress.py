"""Compressing initramfs segments, with a cache keyed by the uncompressed bytes.

The kernel unpacks a concatenation of compressed cpio archives one after the other, so the image
is written as segments: the large, rarely changing runtime first, the project's own code last.
A rebuild after a code change then recompresses only the small last segment; unchanged segments
come from the cache. Output is deterministic (fixed levels, fixed thread counts), cached or not.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

from ucernvm.errors import ConfigError
from ucernvm.image import tools
from ucernvm.image.cache import cache_dir, cached_file

# The kernel's xz decoder only knows CRC32 checks; one thread gives one block whatever the host. Its LZ4
# decoder reads only the legacy frame format (-l). LZ4 makes a larger image (about 1.45x zstd) that
# unpacks several times faster, which counts where the CPU is emulated. zstd gets a 32 MiB window (the
# kernel's decoder takes up to 128 MiB): 3.5 % smaller than -19's own 8 MiB, unpacking as fast.
COMPRESSORS: dict[str, list[str]] = {
    "zstd": ["zstd", "-19", "--long=25", "-T2", "-q", "-c"],
    "xz": ["xz", "-9", "--check=crc32", "-T1", "-c"],
    "lz4": ["lz4", "-l", "-12", "-q", "-c"],
}
_KEEP = 12  # cached segments kept (least recently used ones go)


def compressor_id(method: str) -> str:
    """The exact command and tool version, so a tool upgrade never reuses an old cached output."""
    if method not in COMPRESSORS:
        raise ConfigError(f"unknown compression {method!r}", hint=f"use one of: {', '.join(COMPRESSORS)}")
    argv = COMPRESSORS[method]
    version = subprocess.run([tools.find_tool(argv[0]), "--version"], capture_output=True, check=False)
    return " ".join(argv) + " | " + version.stdout.decode(errors="replace").splitlines()[0]


def compress(source: Path, digest: str, method: str, use_cache: bool = True) -> tuple[Path, bool]:
    """The compressed form of *source* (whose sha256 is *digest*) and whether it came from the cache."""
    ident = compressor_id(method)
    key = hashlib.sha256(f"{digest}\0{ident}".encode()).hexdigest()[:32]

    def make(partial: Path) -> None:
        with source.open("rb") as stream, partial.open("wb") as out:
            tools.run(COMPRESSORS[method], stdin=stream.fileno(), stdout=out.fileno(), what=f"{method} compression")

    return cached_file(cache_dir("segments") / f"{key}.{method}", make, _KEEP, reuse=use_cache)

