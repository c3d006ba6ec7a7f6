"""``.cvmfsdirtab``: the directories that become nested catalogs without a ``.cvmfscatalog`` of their own.

As ``cvmfs_server publish`` reads it (``Dirtab``, ``Pathspec`` and ``swissknife dirtab`` in cvmfs): one
pattern a line, ``#`` comment lines, blank lines ignored. A pattern is a path from the repository root whose
names may hold ``*`` (any run of bytes) and ``?`` (one byte: cvmfs matches in the C locale); ``\\`` escapes
``*``, ``?`` and itself. A line starting with ``!`` excludes what its pattern matches; there ``*`` also
spans slashes, and the pattern may be relative (``! */common``). cvmfs finds the directories with
``glob(3)``, ``GLOB_PERIOD`` set, which glibc keeps for the last name only: there a wildcard matches hidden
names too. A bracket expression ``[...]`` works as fnmatch(3) reads it: with ranges, and classes
(``[[:digit:]]``) as the C locale defines them. glob goes down symlinks to directories of the repository;
cvmfs makes no catalog at a symlink itself.
"""

from __future__ import annotations

import enum
import functools
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

from ucernvm.cvmfs.catalog import join
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

    def glob(self, root: SourceNode) -> Iterator[tuple[str, SourceNode]]:
        """The directories the pattern names below ``root`` as cvmfs's glob(3) finds them: each by the path
        it was found at and its node. On the way down, glob opens . and .. as well as the names of a
        directory, and follows a symlink to a directory of the tree; as glibc's glob drops GLOB_PERIOD
        there, a leading . is matched only by a . that begins the pattern. The last name, where GLOB_PERIOD
        holds, must be a directory itself (cvmfs skips . and .., and a symlink: it cannot hold a catalog).
        glibc's glob reads a \\ that ends the name of a directory on the way down as the escape of the / after
        it, and drops it; a name left empty names no directory."""
        patterns = [_as_bytes(_glob_string(element)) for element in self.elements]
        patterns = [_without_escaping_end(pattern) for pattern in patterns[:-1]] + patterns[-1:]
        names = [re.compile(_glob_regex(pattern), re.DOTALL) for pattern in patterns]

        def descend(path: str, directory: SourceNode, depth: int) -> Iterator[tuple[str, SourceNode]]:
            if not patterns[depth]:
                yield from descend(path, directory, depth + 1)
                return
            if depth + 1 == len(names):
                for child in directory.children:
                    if child.is_directory and names[depth].fullmatch(_as_bytes(child.name)):
                        yield join(path, child.name), child
                return
            hidden_too = patterns[depth].startswith((".", "\\."))
            entries: list[tuple[str, SourceNode | None]] = [(".", None), ("..", None)]
            entries += [(child.name, child) for child in directory.children]
            for name, node in entries:
                if (hidden_too or not name.startswith(".")) and names[depth].fullmatch(_as_bytes(name)):
                    target = _followed(root, node) if node else _relative(root, directory, name)
                    if target is not None:
                        yield from descend(join(path, name), target, depth + 1)

        return descend("", root, 0)

    def excludes(self, path: str) -> bool:
        """cvmfs's relaxed match of an exclusion: ``*`` spans slashes, a trailing slash is allowed."""
        parts = ["".join(_relaxed_regex(token) for token in element) for element in self.elements]
        regex = "^" + ("/" if self.absolute else "") + "/".join(parts) + "/?$"
        # cvmfs compiles it with REG_NEWLINE: ^ and $ match at a newline of the path, which . never matches.
        return re.search(regex, _as_bytes(path), re.MULTILINE) is not None


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
                for path, directory in rule.glob(tree):
                    if not any(exclusion.excludes(path) for exclusion in exclusions):
                        found.setdefault(directory.path, directory)
        return list(found.values())


def _without_escaping_end(pattern: str) -> str:
    """A name pattern without the \\ that ends it, if one does (an escaped \\ stays)."""
    escapes = len(pattern) - len(pattern.rstrip("\\"))
    return pattern[:-1] if escapes % 2 else pattern


def _followed(root: SourceNode, node: SourceNode) -> SourceNode | None:
    """The directory of the tree below ``root`` that glob opens at ``node``: itself, or a symlink's target
    (cvmfs's directory functions for glob refuse one outside the repository)."""
    if node.is_directory:
        return node
    if not node.is_symlink:
        return None
    top = os.path.realpath(root.fs_path)
    target = os.path.realpath(node.fs_path)
    if target != top and not target.startswith(top.rstrip("/") + "/"):
        return None
    return _directory_at(root, os.path.relpath(target, top).split("/") if target != top else [])


def _relative(root: SourceNode, directory: SourceNode, name: str) -> SourceNode | None:
    """The directory ``.`` or ``..`` of ``directory`` is; None above the repository's root (cvmfs's
    directory functions for glob refuse it)."""
    if name == ".":
        return directory
    return _directory_at(root, directory.path.split("/")[1:-1]) if directory.path else None


def _directory_at(root: SourceNode, names: list[str]) -> SourceNode | None:
    """The directory of the tree at ``names`` below ``root``; None when one is no directory."""
    directory = root
    for name in names:
        found = next((child for child in directory.children if child.name == name and child.is_directory), None)
        if found is None:
            return None  # not a directory, or gone since the scan
        directory = found
    return directory


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
        return "[^/\n]"
    return re.escape(_as_bytes(token))


def _as_bytes(text: str) -> str:
    """The bytes of a name or pattern, one character each. cvmfs matches in the C locale, which knows bytes:
    there ``?`` is one byte of a UTF-8 name, and a class holds ASCII characters only."""
    return os.fsencode(text).decode("latin-1")


def _glob_regex(pattern: str) -> str:
    """A regular expression for one name glob(3) pattern, as glibc's fnmatch reads it: \\ escapes (a \\ that
    ends the pattern matches nothing), *, ?, and [...]."""
    return _regex_from(pattern, 0)


@functools.lru_cache(maxsize=256)
def _regex_from(pattern: str, i: int) -> str:
    """The regular expression of ``pattern[i:]``. A bracket expression takes the rest of the pattern into its
    own expression: where it ends depends on the name's character."""
    out: list[str] = []
    while i < len(pattern):
        char = pattern[i]
        i += 1
        if char == "\\":
            if i == len(pattern):
                return "".join(out) + _NEVER
            out.append(re.escape(pattern[i]))
            i += 1
        elif char == "*":
            out.append(".*")
        elif char == "?":
            out.append(".")
        elif char == "[":
            return "".join(out) + _bracket(pattern, i)
        else:
            out.append(re.escape(char))
    return "".join(out)


# The character classes of a bracket expression, as the C locale defines them.
_CLASSES = {
    "alnum": "0-9A-Za-z", "alpha": "A-Za-z", "blank": " \\t", "cntrl": "\\x00-\\x1f\\x7f", "digit": "0-9",
    "graph": "!-~", "lower": "a-z", "print": " -~", "punct": "!-/:-@\\[-`{-~", "space": " \\t\\n\\r\\f\\v",
    "upper": "A-Z", "xdigit": "0-9A-Fa-f",
}  # fmt: skip
_NEVER = "(?!)"  # the expression of what matches nothing
_CLASS_NAME_MAX = 256  # glibc's CHAR_CLASS_MAX_LENGTH
_CLASS_NAME_CHARACTERS = "abcdefghijklmnopqrstuvwxy"  # what fnmatch takes for a class name ('z' is not)


class _Member(enum.Enum):
    CHAR = "char"  # may start a range a-z
    COLLATING = "collating"  # [.a.]: followed by - it starts a range, or is nothing
    EQUIVALENCE = "equivalence"  # [=a=]: never starts a range
    CLASS = "class"  # [:alpha:]
    INVALID = "invalid"  # an unknown class or a longer collating name


class _Unterminated(Exception):
    """A ``[.`` without its ``.]``: fnmatch(3) then matches the name pattern with nothing."""


class _Skip(enum.Enum):
    FAILS = "fails"  # the pattern matches nothing
    UNTERMINATED = "unterminated"  # the [ is an ordinary character


def _bracket(pattern: str, start: int) -> str:
    """The regular expression of a bracket expression whose ``[`` is just before ``start``, followed by the
    rest of the pattern. As glibc's fnmatch reads it: ``!`` or ``^`` negates, a ``]`` first is a member,
    ``\\`` escapes, ``a-z`` is a range of character codes (none when reversed), ``[:alpha:]`` a class,
    ``[=a=]`` and ``[.a.]`` the character itself. fnmatch tries the members in order and gives up at an
    invalid one. Once a member matched, it skips the rest with a reading of its own (_skip): that reading
    may fail the match, or find the pattern's end, and then, as where no member matched before the end, the
    ``[`` is an ordinary character."""
    negate = pattern[start:start + 1] in ("!", "^")
    members, end, complete = _bracket_members(pattern, start + int(negate))
    alternatives: list[str] = []
    claimed: list[str] = []  # the members before, which a name's character matched first
    literal = complete and end >= len(pattern)  # for a '[' that no member matches
    bracket_matched = False
    for expression, after in members:
        outcome = _skip(pattern, after)
        if not bracket_matched and re.fullmatch(f"[{expression}]", "["):
            bracket_matched, literal = True, outcome is _Skip.UNTERMINATED
        if isinstance(outcome, int) and not negate:
            guard = f"(?![{''.join(claimed)}])" if claimed else ""
            alternatives.append(f"{guard}[{expression}]" + _regex_from(pattern, outcome))
        claimed.append(expression)
    if negate and complete and end < len(pattern):
        alternatives.append((f"[^{''.join(claimed)}]" if claimed else ".") + _regex_from(pattern, end + 1))
    if literal:
        alternatives.append(re.escape("[") + _regex_from(pattern, start))
    if not alternatives:
        return _NEVER
    return alternatives[0] if len(alternatives) == 1 else "(?:" + "|".join(alternatives) + ")"


def _bracket_members(pattern: str, i: int) -> tuple[list[tuple[str, int]], int, bool]:
    """The members of a bracket expression from ``i`` on, as fnmatch tries them: each as a part of a regular
    expression's character set (reversed ranges and the like left out) with the index after it; the index of
    the closing ``]`` (the pattern's length when there is none); whether every member is valid."""
    members: list[tuple[str, int]] = []
    first = i
    try:
        while i < len(pattern) and (pattern[i] != "]" or i == first):
            kind, member, i = _bracket_member(pattern, i)
            expression, i = _member_expression(pattern, kind, member, i)
            if expression is None:
                return members, i, False
            if expression:
                members.append((expression, i))
            if kind in (_Member.CHAR, _Member.COLLATING) and pattern[i:] == "-":
                return members, i, False  # fnmatch reads a range up to the pattern's end: it matches nothing
    except _Unterminated:
        return members, len(pattern), False
    return members, i, True


def _skip(pattern: str, i: int) -> int | _Skip:
    """Where the bracket expression ends (the index after its ``]``) as fnmatch reads it from ``i`` on once a
    member matched: ``[:`` and ``[.`` as where it tries members, a ``[=`` not closed by ``=]`` and a ``\\``
    or ``[.`` that meet the pattern's end fail the match; the pattern's end makes the ``[`` ordinary."""
    while i < len(pattern):
        char, i = pattern[i], i + 1
        opener = pattern[i:i + 1]
        if char == "]":
            return i
        if char == "\\":
            if i == len(pattern):
                return _Skip.FAILS
            i += 1
        elif char == "[" and opener == ":":
            rest = pattern[i + 1:]
            length = len(rest) - len(rest.lstrip(_CLASS_NAME_CHARACTERS))
            if length + 1 >= _CLASS_NAME_MAX:
                return _Skip.FAILS
            if rest[length:length + 2] == ":]":
                i += length + 3
        elif char == "[" and opener == "=":
            if i + 1 >= len(pattern) or pattern[i + 2:i + 4] != "=]":
                return _Skip.FAILS
            i += 4
        elif char == "[" and opener == ".":
            end = pattern.find(".]", i + 1)
            if end < 0:
                return _Skip.FAILS
            i = end + 2
    return _Skip.UNTERMINATED


def _member_expression(pattern: str, kind: _Member, member: str, i: int) -> tuple[str | None, int]:
    """A member's part of the character set (None for an invalid one), and the index after it and the
    range it may start."""
    if kind is _Member.INVALID:
        return None, i
    if kind is _Member.CLASS:
        return _CLASSES[member], i
    dash = pattern[i:i + 1] == "-"
    if kind is _Member.CHAR:
        starts_range = dash and pattern[i + 1:i + 2] not in ("", "]")
    else:  # fnmatch only asks that something follow the - of a [.a.]; an [=a=] starts no range
        starts_range = kind is _Member.COLLATING and dash and i + 1 < len(pattern)
    if not starts_range:
        return re.escape(member), i
    if pattern[i + 1] == "]":
        return "", i  # an [.a.] before -] is no member, and the - is one
    end, i = _range_end(pattern, i + 1)
    if end is None:
        return None, i
    return (f"{re.escape(member)}-{re.escape(end)}" if member <= end else ""), i


def _bracket_member(pattern: str, i: int) -> tuple[_Member, str, int]:
    """The member at ``i``, its text (a character or a class name), and the index after it."""
    char = pattern[i]
    if char == "\\" and i + 1 < len(pattern):
        return _Member.CHAR, pattern[i + 1], i + 2
    opener = pattern[i:i + 2]
    if opener == "[:":
        end = pattern.find(":]", i + 2)
        if end < 0 or (name := pattern[i + 2:end]).strip(_CLASS_NAME_CHARACTERS):
            return _Member.CHAR, char, i + 1  # no class name: an ordinary [
        return (_Member.CLASS if name in _CLASSES else _Member.INVALID), name, end + 2
    if opener == "[=":
        if pattern[i + 3:i + 5] != "=]":
            return _Member.CHAR, char, i + 1
        return _Member.EQUIVALENCE, pattern[i + 2], i + 5
    if opener == "[.":
        symbol, end = _collating_symbol(pattern, i)
        return (_Member.INVALID, "", end) if symbol is None else (_Member.COLLATING, symbol, end)
    return _Member.CHAR, char, i + 1


def _range_end(pattern: str, i: int) -> tuple[str | None, int]:
    """The character that ends a range, at ``i`` (None for none fnmatch accepts), and the index after it."""
    if pattern[i] == "\\" and i + 1 < len(pattern):
        return pattern[i + 1], i + 2
    if pattern[i:i + 2] == "[.":
        return _collating_symbol(pattern, i)
    return pattern[i], i + 1


def _collating_symbol(pattern: str, i: int) -> tuple[str | None, int]:
    """``[.c.]`` at ``i``, and the index after it; None for a longer name, which the C locale does not
    define."""
    end = pattern.find(".]", i + 2)
    if end < 0:
        raise _Unterminated
    return (pattern[i + 2] if end == i + 3 else None), end + 2
