"""cvmfs's variant symlinks: a target may hold ``$(VAR)`` or ``$(VAR:-default)``, which the client expands
from its environment, so that one tree points each machine at its own variant (an architecture, a site)."""

from __future__ import annotations

import re
from collections.abc import Mapping

_VARIANT = re.compile(r"\$\(([^)]*)\)")


def expand_variant_symlink(target: str, environment: Mapping[str, str]) -> str:
    """The target with each ``$(VAR)`` and ``$(VAR:-default)`` replaced from ``environment``."""

    def value(match: re.Match[str]) -> str:
        name, _, default = match.group(1).partition(":-")
        return environment.get(name, default)

    return _VARIANT.sub(value, target)
