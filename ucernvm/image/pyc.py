"""Reproducible bytecode: hash-based .pyc files compiled in a fresh interpreter with a fixed hash seed.

marshal output depends on the hash seed (set and frozenset constants) and on reference counts
(it only emits back-references for shared objects), so compiling inside the builder process could
give different bytes from one build to the next. ``compile_files`` runs this module as a child
process instead; ``python -m ucernvm.image.pyc`` reads a JSON job list on stdin.
"""

from __future__ import annotations

import importlib.util
import json
import marshal
import os
import struct
import subprocess
import sys
from pathlib import Path

from ucernvm.errors import UcernvmError

_UNCHECKED_HASH = 0b01  # PEP 552 flags: hash-based, never compared with a source file


def pyc_bytes(source: bytes, display_name: str, optimize: int) -> bytes:
    code = compile(source, display_name, "exec", dont_inherit=True, optimize=optimize)
    header = importlib.util.MAGIC_NUMBER + struct.pack("<I", _UNCHECKED_HASH) + importlib.util.source_hash(source)
    return header + marshal.dumps(code)


def compile_files(jobs: list[tuple[Path, Path, str]], optimize: int) -> None:
    """Compile each (source .py, destination .pyc, name shown in tracebacks) in a clean child."""
    package_root = Path(__file__).resolve().parents[2]
    env = {"PYTHONHASHSEED": "0", "PYTHONPATH": str(package_root), "PYTHONDONTWRITEBYTECODE": "1"}
    payload = json.dumps({"optimize": optimize, "jobs": [[str(s), str(d), n] for s, d, n in jobs]})
    result = subprocess.run(
        [sys.executable, "-S", "-s", "-m", "ucernvm.image.pyc"],
        input=payload.encode(), capture_output=True, env=env, check=False,
    )
    if result.returncode != 0:
        lines = result.stderr.decode(errors="replace").strip().splitlines()
        raise UcernvmError(f"compiling the Python modules failed: {lines[-1] if lines else result.returncode}")


def _main() -> None:
    request = json.load(sys.stdin)
    for source, destination, display in request["jobs"]:
        os.makedirs(os.path.dirname(destination), exist_ok=True)
        with open(source, "rb") as stream:
            data = pyc_bytes(stream.read(), display, request["optimize"])
        with open(destination, "wb") as stream:
            stream.write(data)


if __name__ == "__main__":
    _main()
