"""``.cvmfsdirtab``: the directories that become nested catalogs without a ``.cvmfscatalog`` of their own.

As ``cvmfs_server publish`` reads it (``Dirtab``, ``Pathspec`` and ``swissknife dirtab`` in cvmfs): one
pattern a line, ``#`` comment lines, blank lines ignored. A pattern is a path from the repository root whose
names may hold ``*`` (any run of characters) and ``?`` (one character); ``\\`` escapes ``*``, ``?`` and
itself. A line starting with ``!`` excludes what its pattern matches; there ``*`` also spans slashes, and
the pattern may be relative (``! */common``). cvmfs finds the directories with ``glob(3)``, ``GLOB_PERIOD``
set, so a wildcard matches hidden names too, and a bracket expression ``[...]`` works as in the shell.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterator
from dataclasses import dataclass

from ucernvm.cvmfs.source_tree import SourceNode
from ucernvm.errors import ConfigError

DIRTAB = ".cvmfsdirtab"


class Wildcard(enum.Enum):
    ANY = "*"  # any run of characters
    ONE = "?"  # one character


# A name pattern: literal runs and wildcards, as cvmfs's PathspecElementPattern holds them.
Element = tuple["str | Wildcard", ...]

_ESCAPABLE = "*?\\"


@dataclass(frozen=True)
class Rule:
    elements: tuple[Element, ...]
    absolute: bool
    exclude: bool

    def glob(self, root: SourceNode) -> Iterator[SourceNode]:
        """The directories the pattern names below ``root``, as glob(3) finds them (symlinks not followed)."""
        names = [re.compile(_glob_regex(_glob_string(element)), re.DOTALL) for element in self.elements]

        def descend(directory: SourceNode, depth: int) -> Iterator[SourceNode]:
            for child in directory.children:
                if child.is_directory and names[depth].fullmatch(child.name):
                    yield from descend(child, depth + 1) if depth + 1 < len(names) else (child,)

        return descend(root, 0)

    def excludes(self, path: str) -> bool:
        """cvmfs's relaxed match of an exclusion: ``*`` spans slashes, a trailing slash is allowed."""
        parts = ["".join(_relaxed_regex(token) for token in element) for element in self.elements]
        return re.fullmatch(("/" if self.absolute else "") + "/".join(parts) + "/?", path) is not None


class Dirtab:
    def __init__(self, rules: list[Rule]) -> None:
        self.rules = rules

    @classmethod
    def parse(cls, data: bytes, where: str) -> Dirtab:
        """The rules of a dirtab's bytes; a ConfigError naming ``where`` and the line for the first bad one
        (cvmfs refuses the whole file, and with it the publish)."""
        rules: list[Rule] = []
        first_line: dict[Rule, int] = {}
        for number, raw in enumerate(data.split(b"\n"), 1):
            line = raw.decode("utf-8", "surrogateescape")
            try:
                rule = _parse_line(line)
            except ValueError as error:
                raise ConfigError(f"{where}:{number}: {line.strip()!r}: {error}",
                                  "see the .cvmfsdirtab section of the cvmfs documentation") from None
            if rule is None:
                continue
            opposite = first_line.get(Rule(rule.elements, rule.absolute, not rule.exclude))
            if opposite is not None:
                raise ConfigError(f"{where}:{number}: {line.strip()!r} contradicts line {opposite}",
                                  "a pattern cannot both add and exclude the same directories")
            first_line.setdefault(rule, number)
            rules.append(rule)
        return cls(rules)

    def select(self, tree: SourceNode) -> list[SourceNode]:
        """The directories that become nested catalogs: matched by a pattern, excluded by none."""
        exclusions = [rule for rule in self.rules if rule.exclude]
        found: dict[str, SourceNode] = {}
        for rule in self.rules:
            if not rule.exclude:
                for directory in rule.glob(tree):
                    if not any(exclusion.excludes(directory.path) for exclusion in exclusions):
                        found.setdefault(directory.path, directory)
        return list(found.values())


def read_dirtab(tree: SourceNode) -> Dirtab | None:
    """The rules of the tree's ``/.cvmfsdirtab``; None when it has none."""
    node = next((child for child in tree.children if child.name == DIRTAB), None)
    if node is None:
        return None
    if not node.is_regular:
        raise ConfigError(f"{node.fs_path} is not a regular file")
    try:
        with open(node.fs_path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise ConfigError(f"cannot read {node.fs_path}: {error.strerror}") from None
    return Dirtab.parse(data, node.fs_path)


def _parse_line(line: str) -> Rule | None:
    """One line's rule, None for a blank or comment line; ValueError says what makes a pattern invalid."""
    text = line.lstrip(" \t")
    if text.startswith("#"):
        return None
    exclude = text.startswith("!")
    spec = (text[1:] if exclude else text).strip(" \t")
    if not spec:
        return None
    elements = tuple(_parse_element(name) for name in spec.split("/") if name)
    if not elements:
        raise ValueError("the pattern names no directory")
    absolute = spec.startswith("/")
    if not absolute and not exclude:
        raise ValueError("a pattern that adds nested catalogs starts with /, from the repository root")
    return Rule(elements, absolute, exclude)


def _parse_element(name: str) -> Element:
    tokens: list[str | Wildcard] = []
    literal = ""
    escaped = False
    for char in name:
        if escaped:
            if char not in _ESCAPABLE:
                raise ValueError(f"only {', '.join(_ESCAPABLE)} can follow a \\")
            literal += char
            escaped = False
        elif char == "\\":
            escaped = True  # a \ that ends the name escapes nothing and is dropped, as in cvmfs
        elif char in "*?":
            tokens += [literal] if literal else []
            tokens.append(Wildcard(char))
            literal = ""
        else:
            literal += char
    tokens += [literal] if literal else []
    if not tokens:
        raise ValueError("a name of the pattern is empty")
    return tuple(tokens)


def _glob_string(element: Element) -> str:
    """The name pattern as cvmfs hands it to glob(3): only * and ? are escaped in its literal runs."""
    return "".join(token.value if isinstance(token, Wildcard) else re.sub(r"([*?])", r"\\\1", token)
                   for token in element)


def _relaxed_regex(token: str | Wildcard) -> str:
    if token is Wildcard.ANY:
        return ".*"
    if token is Wildcard.ONE:
        return "[^/]"
    return re.escape(token)


def _glob_regex(pattern: str) -> str:
    """A regular expression for one name glob(3) pattern: \\ escapes, *, ?, and [...] (negated by ! or ^, ]
    first is literal, an unclosed [ is literal)."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        i += 1
        if char == "\\" and i < len(pattern):
            out.append(re.escape(pattern[i]))
            i += 1
        elif char == "*":
            out.append(".*")
        elif char == "?":
            out.append(".")
        elif char == "[" and (bracket := _bracket(pattern, i)) is not None:
            expression, i = bracket
            out.append(expression)
        else:
            out.append(re.escape(char))
    return "".join(out)


def _bracket(pattern: str, start: int) -> tuple[str, int] | None:
    """The character class of a bracket expression whose ``[`` is just before ``start``, and the index after
    its ``]``; None if it is not closed."""
    i = start
    negate = i < len(pattern) and pattern[i] in "!^"
    i += int(negate)
    members: list[str] = []
    while i < len(pattern) and (pattern[i] != "]" or not members):
        escaped = pattern[i] == "\\" and i + 1 < len(pattern)
        i += int(escaped)
        char = pattern[i]
        is_range = char == "-" and not escaped and bool(members) and i + 1 < len(pattern) and pattern[i + 1] != "]"
        members.append("-" if is_range else re.escape(char))
        i += 1
    if i >= len(pattern):
        return None
    return "[" + ("^" if negate else "") + "".join(members) + "]", i + 1
