"""Public-contexts ``.context`` files as user-data.

A ``.context`` file (github.com/cernvm/public-contexts) is an optional ``#!/bin/sh[.before|.after]``
script ending in an ``exit`` line, amiconfig INI sections, and an optional ``[ucernvm-begin]`` block.
It is user-data already, with traps the conversion reports: a script without an ``exit`` line would
run the INI sections as shell commands. The block's ``cvmfs_path=`` stays as written: the boot loader
reads it as ``cernvm_path=`` (see ucernvm/config.py).
"""

from __future__ import annotations

import re

from ucernvm.errors import ContextError

_SECTION = re.compile(r"\s*\[[^\]]+\]\s*")


def convert_context_file(data: bytes) -> tuple[bytes, list[str]]:
    """The user-data for a ``.context`` file, and warnings about it."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ContextError(f"a .context file is UTF-8 text: byte {error.start} is not",
                           "give binary user-data (gzip, MIME) without the .context suffix") from None
    if "\x00" in text:
        raise ContextError("a .context file is text: it holds NUL bytes")
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    warnings = _check_script(lines)
    if not any(_SECTION.fullmatch(line) for line in lines):
        warnings.append("no [section] in the file: neither amiconfig nor the boot loader will find settings")
    converted = "\n".join(lines).rstrip("\n") + "\n"
    return converted.encode(), warnings


def _check_script(lines: list[str]) -> list[str]:
    first = next((line for line in lines if line.strip()), "")
    if not first.startswith("#!"):
        return []
    for line in lines:
        if _SECTION.fullmatch(line):
            return [f"the {first.strip()} script has no 'exit' line before the first [section]: "
                    "the sections would run as shell commands"]
        if re.match(r"exit\b", line):
            return []
    return []
