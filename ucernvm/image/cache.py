"""Where the builder and the launcher keep what is worth reusing between runs."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """``$UCERNVM_CACHE`` (else ``$XDG_CACHE_HOME/ucernvm``, else ``~/.cache/ucernvm``) / parts, created."""
    base = os.environ.get("UCERNVM_CACHE")
    if not base:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        base = str(Path(xdg) / "ucernvm")
    path = Path(base).joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
