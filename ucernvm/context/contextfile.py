"""Public-contexts ``.context`` files as user-data.

A ``.context`` file (github.com/cernvm/public-contexts) is an optional ``#!/bin/sh[.before|.after]``
script ending in an ``exit`` line, amiconfig INI sections, and an optional ``[ucernvm-begin]`` block.
It is user-data already, with two traps the conversion removes or reports: the block's
``cvmfs_path=`` is not a key the boot loader knows (it reads ``cernvm_path``), and a script without
an ``exit`` line would run the INI sections as shell commands.
"""

from __future__ import annotations

import re

from ucernvm.context.section import BEGIN, END
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
    lines, renamed = _rename_path_key(lines)
    if renamed:
        warnings.append("cvmfs_path= in the ucernvm block is written as cernvm_path=, the key the boot loader reads")
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


def _rename_path_key(lines: list[str]) -> tuple[list[str], bool]:
    stripped = [line.strip() for line in lines]
    if BEGIN not in stripped or END not in stripped[stripped.index(BEGIN):]:
        return lines, False
    start = stripped.index(BEGIN)
    end = stripped.index(END, start)
    block = stripped[start + 1:end]
    if any(line.partition("=")[0].strip().lower() == "cernvm_path" for line in block):
        return lines, False
    renamed = False
    result = list(lines)
    for index in range(start + 1, end):
        key, equals, value = result[index].strip().partition("=")
        if equals and key.strip().lower() == "cvmfs_path":
            result[index] = f"cernvm_path={value.strip()}"
            renamed = True
    return result, renamed
