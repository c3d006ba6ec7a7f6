"""Kernel module indexes (modules.dep, modules.softdep, modules.alias, modules.builtin) and load order.

Pure standard library on purpose: the builder uses it to pick the image's module subset, and code
running inside the image can use the same index to order ``finit_module`` calls.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from pathlib import Path

_MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")
_GLOB_CHARS = frozenset("*?[")


def modname(path_or_name: str) -> str:
    """The canonical module name: file name without .ko[.xz|.zst|.gz], dashes as underscores."""
    name = path_or_name.rsplit("/", 1)[-1]
    for suffix in _MODULE_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name.replace("-", "_")


class ModuleIndex:
    """What depmod wrote for one kernel release, keyed by canonical module name."""

    __slots__ = ("paths", "deps", "softdeps", "aliases", "builtin", "softdep_lines", "_globs")

    def __init__(self) -> None:
        self.paths: dict[str, str] = {}  # name -> path relative to the release dir
        self.deps: dict[str, list[str]] = {}  # name -> dependency names, as listed
        self.softdeps: dict[str, list[str]] = {}  # name -> "pre:" names or aliases
        self.aliases: dict[str, list[str]] = {}  # alias pattern -> module names
        self.builtin: set[str] = set()
        self.softdep_lines: dict[str, list[str]] = {}  # name -> its raw softdep lines
        self._globs: list[tuple[str, str, list[str]]] | None = None  # the aliases with wildcards, once asked

    @classmethod
    def load(cls, release_dir: Path) -> ModuleIndex:
        index = cls()
        for line in _lines(release_dir / "modules.dep"):
            target, _, deps = line.partition(":")
            name = modname(target)
            index.paths[name] = target
            index.deps[name] = [modname(dep) for dep in deps.split()]
        for line in _lines(release_dir / "modules.softdep"):
            words = line.split()
            if len(words) < 3 or words[0] != "softdep":
                continue
            name = modname(words[1])
            index.softdep_lines.setdefault(name, []).append(line)
            # Only "pre:" soft dependencies must be loaded first; a bare list counts as "pre:".
            section = "pre:"
            for word in words[2:]:
                if word.endswith(":"):
                    section = word
                elif section == "pre:":
                    index.softdeps.setdefault(name, []).append(word)
        for line in _lines(release_dir / "modules.alias"):
            words = line.split()
            if len(words) == 3 and words[0] == "alias":
                index.aliases.setdefault(words[1], []).append(modname(words[2]))
        index.builtin = {modname(line) for line in _lines(release_dir / "modules.builtin")}
        return index

    def resolve(self, name: str) -> list[str]:
        """Module names for a module name or alias (glob patterns as in modules.alias); [] if none."""
        canonical = modname(name)
        if canonical in self.paths:
            return [canonical]
        if name in self.aliases:
            return list(self.aliases[name])
        matches: list[str] = []
        for prefix, pattern, modules in self._glob_aliases():
            # The literal prefix rules out almost every pattern without compiling it: fnmatch's
            # regular expressions cost seconds in a boot under emulation.
            if name.startswith(prefix) and fnmatch.fnmatchcase(name, pattern):
                matches.extend(m for m in modules if m not in matches)
        return matches

    def _glob_aliases(self) -> list[tuple[str, str, list[str]]]:
        if self._globs is None:
            self._globs = []
            for pattern, modules in self.aliases.items():
                cut = min((pattern.index(char) for char in _GLOB_CHARS if char in pattern), default=-1)
                if cut >= 0:
                    self._globs.append((pattern[:cut], pattern, modules))
        return self._globs

    def soft_targets(self, name: str, preferred: Iterable[str] = ()) -> list[str]:
        """The modules a "pre:" softdep of *name* resolves to: the preferred ones when any match."""
        chosen: list[str] = []
        wanted = set(preferred)
        for alias in self.softdeps.get(name, []):
            candidates = [m for m in self.resolve(alias) if m in self.paths]
            picked = [m for m in candidates if m in wanted] or candidates
            chosen.extend(m for m in picked if m not in chosen)
        return chosen

    def load_order(self, names: Iterable[str], preferred: Iterable[str] = ()) -> list[str]:
        """Every module needed for *names* (dependencies and "pre:" softdeps), each after its needs.

        modules.dep lists a module's whole dependency set with the ones to load first last, so a
        depth-first walk over the reversed lists yields a valid order. Built-in names are skipped;
        unknown names raise KeyError.
        """
        preferred = set(preferred) | {modname(n) for n in names}
        order: list[str] = []
        seen: set[str] = set()

        def visit(name: str) -> None:
            if name in seen:
                return
            seen.add(name)
            for soft in self.soft_targets(name, preferred):
                visit(soft)
            for dep in reversed(self.deps[name]):
                visit(dep)
            order.append(name)

        for requested in names:
            canonical = modname(requested)
            if canonical in self.builtin and canonical not in self.paths:
                continue
            resolved = self.resolve(requested)
            if not resolved:
                raise KeyError(requested)
            visit(resolved[0] if len(resolved) == 1 else _prefer(resolved, preferred))
        return order


def _prefer(candidates: list[str], preferred: set[str]) -> str:
    return next((c for c in candidates if c in preferred), candidates[0])


def _lines(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [line for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
