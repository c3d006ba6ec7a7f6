"""Shared-library closure of ELF files, read from their headers (DT_NEEDED, DT_RUNPATH, PT_INTERP).

Reading the headers instead of running ldd means nothing from the build host gets executed, and
the answer does not depend on LD_LIBRARY_PATH. The search follows ld.so(8): DT_RPATH (when there
is no DT_RUNPATH), DT_RUNPATH, the ld.so.conf directories, then the default directories.
"""

from __future__ import annotations

import glob
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile

from ucernvm.errors import ConfigError

_DEFAULT_DIRS = (
    "/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib",
)


@dataclass(frozen=True)
class ElfInfo:
    """The dynamic-linking facts of one ELF file."""

    path: Path
    elfclass: int
    machine: str
    soname: str | None = None
    needed: tuple[str, ...] = ()
    rpath: tuple[str, ...] = ()
    runpath: tuple[str, ...] = ()
    interpreter: str | None = None


def is_elf(path: Path) -> bool:
    with path.open("rb") as stream:
        return stream.read(4) == b"\x7fELF"


@cache
def elf_info(path: Path) -> ElfInfo:
    try:
        with path.open("rb") as stream:
            elf = ELFFile(stream)
            fields: dict[str, list[str]] = {"DT_NEEDED": [], "DT_RPATH": [], "DT_RUNPATH": [], "DT_SONAME": []}
            for section in elf.iter_sections():
                if isinstance(section, DynamicSection):
                    for tag in section.iter_tags():
                        if tag.entry.d_tag in fields:
                            key = {"DT_NEEDED": "needed", "DT_RPATH": "rpath", "DT_RUNPATH": "runpath",
                                   "DT_SONAME": "soname"}[tag.entry.d_tag]
                            fields[tag.entry.d_tag].append(getattr(tag, key))
            interpreter = next(
                (seg.get_interp_name() for seg in elf.iter_segments() if seg["p_type"] == "PT_INTERP"), None
            )
            return ElfInfo(
                path=path,
                elfclass=elf.elfclass,
                machine=elf["e_machine"],
                soname=fields["DT_SONAME"][0] if fields["DT_SONAME"] else None,
                needed=tuple(fields["DT_NEEDED"]),
                rpath=_split_paths(fields["DT_RPATH"], path),
                runpath=_split_paths(fields["DT_RUNPATH"], path),
                interpreter=interpreter,
            )
    except ELFError as error:
        raise ConfigError(f"{path} is not a readable ELF file: {error}") from error


def _split_paths(values: list[str], owner: Path) -> tuple[str, ...]:
    origin = str(owner.parent)
    return tuple(
        part.replace("$ORIGIN", origin).replace("${ORIGIN}", origin)
        for value in values
        for part in value.split(":")
        if part
    )


def ld_so_conf_dirs(conf: Path = Path("/etc/ld.so.conf")) -> list[str]:
    """The directories listed by ld.so.conf, following its ``include`` globs."""
    dirs: list[str] = []
    if not conf.exists():
        return dirs
    for raw in conf.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("include "):
            pattern = line.split(None, 1)[1]
            if not pattern.startswith("/"):
                pattern = str(conf.parent / pattern)
            for included in sorted(glob.glob(pattern)):
                dirs.extend(d for d in ld_so_conf_dirs(Path(included)) if d not in dirs)
        elif line not in dirs:
            dirs.append(line)
    return dirs


@dataclass
class Closure:
    """The libraries a set of ELF files needs: soname -> host file, plus the dynamic loader."""

    libraries: dict[str, Path] = field(default_factory=dict)
    interpreter: str | None = None  # PT_INTERP as written in the executables
    interpreter_file: Path | None = None


class LibraryResolver:
    """Finds DT_NEEDED sonames the way the dynamic loader would on this host."""

    def __init__(self, system_dirs: Iterable[str] | None = None) -> None:
        self.system_dirs = list(system_dirs) if system_dirs is not None else [
            *ld_so_conf_dirs(), *(d for d in _DEFAULT_DIRS if d not in ld_so_conf_dirs())
        ]

    def find(self, soname: str, requester: ElfInfo) -> Path:
        search = [*(requester.rpath if not requester.runpath else ()), *requester.runpath, *self.system_dirs]
        for directory in search:
            candidate = Path(directory) / soname
            if candidate.is_file() and is_elf(candidate):
                info = elf_info(candidate.resolve())
                if (info.elfclass, info.machine) == (requester.elfclass, requester.machine):
                    return candidate
        raise ConfigError(
            f"{requester.path} needs {soname}, which is not in {', '.join(search)}",
            hint="install the package that provides it",
        )

    def closure(self, roots: Iterable[Path]) -> Closure:
        result = Closure()
        pending = [elf_info(Path(root).resolve()) for root in roots]
        seen: set[Path] = set()
        while pending:
            info = pending.pop()
            if info.path in seen:
                continue
            seen.add(info.path)
            if info.interpreter and result.interpreter is None:
                result.interpreter = info.interpreter
                result.interpreter_file = Path(info.interpreter).resolve()
            for soname in info.needed:
                if soname in result.libraries:
                    continue
                found = self.find(soname, info)
                result.libraries[soname] = found
                pending.append(elf_info(found.resolve()))
        # The loader is mapped by the kernel and is also libc's DT_NEEDED: keep a single copy.
        if result.interpreter:
            result.libraries.pop(Path(result.interpreter).name, None)
        return result
