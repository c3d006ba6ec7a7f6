"""cvmfs-style client configuration: ``KEY=value`` files in cvmfs's order, then explicit overrides.

Files are read in the order of cvmfs's ``OptionsManager::ParseDefault``, later ones overriding
earlier ones: ``default.conf``, ``default.d/*.conf``, ``default.local``,
``domain.d/<domain>.conf|.local``, ``config.d/<fqrn>.conf|.local``; then files named
explicitly, then ``-o KEY=value`` overrides (taken literally). In values, ``@fqrn@`` becomes the
repository name and ``@org@`` its first label. The result is one frozen :class:`FetcherConfig`,
every value checked; a bad one is a ConfigError that names its key.

cvmfs sources these files with a shell. A boot image has no shell, so the assignments are parsed
here (hand-written: shlex knows quotes but not ``$VAR`` expansion): ``[export|readonly] KEY=word``
with single and double quotes (a quoted value may span lines), backslashes (one ending a line joins
the next one to it), ``#`` comments and ``$VAR``, ``${VAR}``, ``${VAR:-word}``, ``${VAR:=word}``,
``${VAR:+word}`` (and each without ``:``).
``if``/``elif``/``else``/``fi`` blocks choose which assignments apply, as the shell does: cvmfs's
own ``domain.d`` files pick their servers that way (``CVMFS_USE_OPENHTC``, ``CVMFS_USE_CDN``).
Their conditions are ``[ ... ]`` or ``test`` (string and integer comparisons, ``-z``, ``-n``,
``!``), ``true``, ``false``, joined by ``&&`` and ``||``; any other condition is a ConfigError
naming the file and line. ``return``, alone or after such a condition and ``&&`` or ``||``, ends the
reading of its file, as it ends a sourced one (cvmfs's own ``domain.d`` files return early so). Other lines
that are not assignments (functions, ``. file``) are skipped.
"""

from __future__ import annotations

import math
import os
import re
from collections import ChainMap
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ucernvm.client.cache import DEFAULT_QUOTA
from ucernvm.client.proxies import parse_proxy_list
from ucernvm.cvmfs.hashing import ContentHash
from ucernvm.errors import ConfigError, FormatError
from ucernvm.records import NamedTuple

DEFAULT_CONFIG_DIR = Path("/etc/cvmfs")

# Patterns, compiled at their first use (re keeps them): a boot imports this module and reads no file, and
# compiling them cost each boot's start 0.5 ms natively, ten times that under emulation.
_ASSIGNMENT = r"(?s)^\s*(?:(?:export|readonly)\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$"
# "KEY = value": the shell runs KEY as a command and sets nothing, cvmfs keeps the earlier value.
_SPACED_ASSIGNMENT = r"^\s*(?:(?:export|readonly)\s+)?([A-Za-z_][A-Za-z0-9_]*)\s+="
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_BRACED = r"(?s)([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-=+])(.*))?"
_WORD_END = " \t;&|<>"
_QUOTES = {"'": "single", '"': "double"}
_RETURN = r"(?:^\s*|&&\s*|\|\|\s*)return(?:[\s;]|$)"  # where return may be a command


# --- values -------------------------------------------------------------------------------------


def _text(key: str, value: str) -> str:
    return value


def _optional(key: str, value: str) -> str | None:
    return value or None


def _list(separator: str) -> Callable[[str, str], tuple[str, ...]]:
    def parse(key: str, value: str) -> tuple[str, ...]:
        return tuple(item.strip() for item in value.split(separator) if item.strip())

    return parse


def check_server_url(url: str, key: str = "CVMFS_SERVER_URL") -> str:
    """``url`` without a trailing slash, once it is an http(s) URL with a host and a port that is a
    number: a malformed one would only fail, obscurely, when the failover reaches it."""
    try:
        parts = urlsplit(url)  # raises on an unclosed "[" of an IPv6 address
        if parts.scheme not in ("http", "https") or not parts.hostname:
            problem = "not an HTTP URL with a host"
        else:  # .port raises on a port that is not a number in 0..65535
            problem = "port 0" if parts.port == 0 else ""
    except ValueError as error:
        problem = str(error)
    if problem:
        raise ConfigError(f"{key}: bad server URL {url!r}: {problem}", "servers are http://host[:port]/cvmfs/@fqrn@")
    return url.rstrip("/")


def _server_urls(key: str, value: str) -> tuple[str, ...]:
    return tuple(check_server_url(url, key) for url in _list(";")(key, value))


def _proxies(key: str, value: str) -> str:
    # Checks every member; the text is kept (for "auto", which only CVMFS_HTTP_PROXY may hold).
    parse_proxy_list(value, key, allow_auto=key == "CVMFS_HTTP_PROXY")
    return value.strip()


def _bool(key: str, value: str) -> bool:
    word = value.strip().lower()
    if word in ("yes", "on", "1", "true"):
        return True
    if word in ("no", "off", "0", "false", ""):
        return False
    raise ConfigError(f"{key}={value!r} is not a yes/no value", f"set {key}=yes or {key}=no")


def _seconds(key: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number < 0:
        raise ConfigError(f"{key}={value!r} is not a number of seconds", f"{key} takes a non-negative number")
    return number


def _count(key: str, value: str) -> int:
    if not value.strip().isdigit():
        raise ConfigError(f"{key}={value!r} is not a non-negative integer", f"{key} takes a whole number >= 0")
    return int(value)


def _quota(key: str, value: str) -> int:
    if value.strip() == "-1":
        return -1  # unlimited, as in cvmfs
    return _count(key, value)


def _root_hash(key: str, value: str) -> ContentHash | None:
    if not value:
        return None
    try:
        return ContentHash.parse(value)
    except FormatError as error:
        raise ConfigError(f"{key}: {error.message}", "give the root catalog's hash, e.g. 40 hex digits") from None


class FetcherConfig(NamedTuple):
    """The client settings, with cvmfs's defaults (``mount/default.conf``, ``mountpoint.h``).

    Times are seconds; unlike cvmfs (whole seconds), fractions are accepted.
    """

    server_urls: tuple[str, ...] = ()
    http_proxy: str = ""
    fallback_proxy: str = ""
    pac_urls: tuple[str, ...] = ()
    use_geoapi: bool = False
    timeout: float = 5.0
    timeout_direct: float = 10.0
    low_speed_limit: int = 1024
    max_retries: int = 1
    backoff_init: float = 2.0
    backoff_max: float = 10.0
    proxy_reset_after: float = 300.0
    host_reset_after: float = 1800.0
    follow_redirects: bool = False
    max_servers: int = 0
    cache_base: str = "/var/lib/cvmfs"
    quota_limit: int = DEFAULT_QUOTA  # MiB; -1: none
    keys_dir: str = "/etc/cvmfs/keys"
    public_key: tuple[str, ...] = ()
    repository_tag: str | None = None
    root_hash: ContentHash | None = None
    uid_map: str | None = None  # files of owner mappings (read_id_map), read when mounting
    gid_map: str | None = None

    @classmethod
    def from_values(cls, values: Mapping[str, str]) -> FetcherConfig:
        """Typed settings from raw ``CVMFS_*`` values; unknown keys are ignored (other parts use them)."""
        settings: dict[str, Any] = {}
        for name, (key, parse) in SETTINGS.items():
            if key in values:
                settings[name] = parse(key, values[key].strip())
        return cls(**settings)


# Field -> (cvmfs key, parser): the one table of the settings this configuration knows.
SETTINGS: dict[str, tuple[str, Callable[[str, str], Any]]] = {
    "server_urls": ("CVMFS_SERVER_URL", _server_urls),
    "http_proxy": ("CVMFS_HTTP_PROXY", _proxies),
    "fallback_proxy": ("CVMFS_FALLBACK_PROXY", _proxies),
    "pac_urls": ("CVMFS_PAC_URLS", _list(";")),
    "use_geoapi": ("CVMFS_USE_GEOAPI", _bool),
    "timeout": ("CVMFS_TIMEOUT", _seconds),
    "timeout_direct": ("CVMFS_TIMEOUT_DIRECT", _seconds),
    "low_speed_limit": ("CVMFS_LOW_SPEED_LIMIT", _count),
    "max_retries": ("CVMFS_MAX_RETRIES", _count),
    "backoff_init": ("CVMFS_BACKOFF_INIT", _seconds),
    "backoff_max": ("CVMFS_BACKOFF_MAX", _seconds),
    "proxy_reset_after": ("CVMFS_PROXY_RESET_AFTER", _seconds),
    "host_reset_after": ("CVMFS_HOST_RESET_AFTER", _seconds),
    "follow_redirects": ("CVMFS_FOLLOW_REDIRECTS", _bool),
    "max_servers": ("CVMFS_MAX_SERVERS", _count),
    "cache_base": ("CVMFS_CACHE_BASE", _text),
    "quota_limit": ("CVMFS_QUOTA_LIMIT", _quota),
    "keys_dir": ("CVMFS_KEYS_DIR", _text),
    "public_key": ("CVMFS_PUBLIC_KEY", _list(":")),
    "repository_tag": ("CVMFS_REPOSITORY_TAG", _optional),
    "root_hash": ("CVMFS_ROOT_HASH", _root_hash),
    "uid_map": ("CVMFS_UID_MAP", _optional),
    "gid_map": ("CVMFS_GID_MAP", _optional),
}


# --- owner maps ---------------------------------------------------------------------------------

ID_LIMIT = 1 << 32  # uid_t and gid_t


class IdMap(NamedTuple):
    """cvmfs's CVMFS_UID_MAP or CVMFS_GID_MAP: the repository's owner IDs -> the ones a mount shows."""

    table: dict[int, int]
    default: int | None = None  # "* ID": what every ID the table does not name shows as

    def function(self) -> Callable[[int], int]:
        table, default = self.table, self.default
        if default is None:
            return lambda id_: table.get(id_, id_)
        return lambda id_: table.get(id_, default)


def parse_id_map(text: str, source: str) -> IdMap:
    """A map file as cvmfs reads one (its IntegerMap): a line is ``FROM TO`` (whole numbers, or ``*`` for
    FROM: every other ID), blank, or a ``#`` comment; a later line for the same ID wins. Anything else is a
    ConfigError naming ``source`` and the line, where cvmfs fails to mount."""
    table: dict[int, int] = {}
    default = None
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if len(words) != 2 or not _an_id(words[1]) or not (words[0] == "*" or _an_id(words[0])):
            raise ConfigError(f"{source}:{number}: {line.strip()!r} is not 'FROM TO'",
                              "a line of an owner map is two IDs (whole numbers), the first or '*' for every other one")
        if words[0] == "*":
            default = int(words[1])
        else:
            table[int(words[0])] = int(words[1])
    return IdMap(table, default)


def _an_id(word: str) -> bool:
    return word.isascii() and word.isdigit() and int(word) < ID_LIMIT


def read_id_map(path: str) -> IdMap:
    """The owner map in the file ``path`` (parse_id_map); one that cannot be read is a ConfigError."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as error:
        raise ConfigError(f"owner map {path} cannot be read: {error.strerror or error}") from None
    return parse_id_map(text, path)


# --- files --------------------------------------------------------------------------------------


def substitute(value: str, fqrn: str) -> str:
    """cvmfs's templates: ``@fqrn@`` is the repository name, ``@org@`` its first label."""
    return value.replace("@fqrn@", fqrn).replace("@org@", fqrn.split(".")[0])


def default_files(config_dir: str | os.PathLike[str], fqrn: str) -> list[Path]:
    """The files cvmfs reads for ``fqrn``, in order (missing ones are skipped when read)."""
    base = Path(config_dir)
    files = [base / "default.conf", *sorted((base / "default.d").glob("*.conf")), base / "default.local"]
    domain = fqrn.partition(".")[2]
    if domain:
        files += [base / "domain.d" / f"{domain}.conf", base / "domain.d" / f"{domain}.local"]
    if fqrn:
        files += [base / "config.d" / f"{fqrn}.conf", base / "config.d" / f"{fqrn}.local"]
    return files


def parse_text(text: str, values: dict[str, str], source: str = "<text>",
               environ: Mapping[str, str] = os.environ) -> None:
    """Apply the assignments in ``text`` to ``values``; ``$VAR`` sees earlier values, then ``environ``."""
    scope = ChainMap(values, dict(environ))  # ${VAR:=default} assigns into values
    blocks = _Blocks()
    for where, line in _logical_lines(text, source):
        if blocks.finished:
            break
        if blocks.step(line, scope, where) or not blocks.active:
            continue
        if _returns(line, scope, where):
            blocks.returned = True
            continue
        match = re.match(_ASSIGNMENT, line)
        if match is not None:
            values[match[1]] = _ShellWord(match[2], scope, where).parse()
        elif spaced := re.match(_SPACED_ASSIGNMENT, line):
            raise ConfigError(f"{where}: spaces around '=' make no assignment of {spaced[1]}",
                              f"write {spaced[1]}=value, without spaces")
    blocks.close(source)


def _logical_lines(text: str, source: str) -> Iterator[tuple[str, str]]:
    """The lines of ``text`` as the shell reads them, each with the FILE:LINE it starts at.

    A quote left open at the end of a line goes on over the next ones, its value holding their newlines,
    as the shell reads it: a site may write a long server or proxy list so, and cvmfs, which has the shell
    read its files, takes it. Read line by line instead, such a value would be cut short, or in a branch
    not taken its other lines read as lines of their own (a "fi" among them closing the block). A quote the
    file never closes is an error naming the line it opened on, where the shell's would name the file's end.
    A backslash ending a line outside single quotes joins the next line to it, both removed.
    """
    lines = text.splitlines()
    number = 0
    while number < len(lines):
        start, line = number, lines[number]
        number += 1
        while (end := _line_end(line)) and number < len(lines):
            line = (line[:-1] if end == "\\" else line + "\n") + lines[number]
            number += 1
        where = f"{source}:{start + 1}"
        if end in _QUOTES:
            raise ConfigError(f"{where}: unterminated {_QUOTES[end]} quote: the file ends before it is closed",
                              _SHELL_HINT)
        yield where, line


def _line_end(line: str) -> str | None:
    """How ``line`` goes on to the next one: in a quote (``'`` or ``"``), after a backslash, or not at all."""
    quote = ""
    word_start = True  # where "#" begins a comment
    i = 0
    while i < len(line):
        char = line[i]
        if quote == "'":
            quote = "" if char == "'" else quote
        elif char == "\\":
            if i == len(line) - 1:
                return char
            i += 1  # the character it escapes
        elif quote:
            quote = "" if char == '"' else quote
        elif char in _QUOTES:
            quote = char
        elif char == "#" and word_start:
            return None
        word_start = not quote and char in " \t;&|<>()"
        i += 1
    return quote or None


def parse_option(text: str) -> tuple[str, str]:
    """``KEY=value`` as given on a command line (no quoting: the value is literal)."""
    key, equals, value = text.partition("=")
    if not equals or not re.fullmatch(_NAME, key):
        raise ConfigError(f"bad option {text!r}", "options are KEY=VALUE, e.g. -o CVMFS_HTTP_PROXY=DIRECT")
    return key, value


def load_config(fqrn: str, *, config_dir: str | os.PathLike[str] | None = DEFAULT_CONFIG_DIR,
                files: Iterable[str | os.PathLike[str]] = (), overrides: Mapping[str, str] | None = None,
                environ: Mapping[str, str] = os.environ) -> FetcherConfig:
    """The configuration of repository ``fqrn``: cvmfs's files under ``config_dir`` (None: none),
    then ``files`` (each must exist), then ``overrides``."""
    values: dict[str, str] = {}
    scope = {**environ, "CVMFS_FQRN": fqrn}  # cvmfs exports CVMFS_FQRN to the shell
    for path in default_files(config_dir, fqrn) if config_dir is not None else []:
        if path.is_file():
            parse_text(_read(path), values, str(path), scope)
    for name in files:
        parse_text(_read(Path(name)), values, str(name), scope)
    values.update(overrides or {})
    return FetcherConfig.from_values({key: substitute(value, fqrn) for key, value in values.items()})


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as error:
        raise ConfigError(f"cannot read configuration file {path}: {error.strerror}") from None


def _returns(line: str, scope: MutableMapping[str, str], where: str) -> bool:
    """Whether ``line`` runs ``return``: alone, or after a condition and ``&&`` or ``||`` (``[ ... ] || return``)."""
    if not re.search(_RETURN, line):
        return False
    words = _ShellWord(line, scope, where).words()
    at = next((i for i, word in enumerate(words) if word == "return" and (i == 0 or words[i - 1] in ("&&", "||"))),
              None)
    if at is None:
        return False  # "return" as an argument
    status = words[at + 1:]
    if status[-1:] == [";"]:
        status.pop()
    if len(status) > 1 or not all(word and word.isdigit() for word in status):
        raise ConfigError(f"{where}: only a status may follow 'return'", _SHELL_HINT)
    return at == 0 or _condition(words[:at - 1], where) == (words[at - 1] == "&&")


class _Blocks:
    """The ``if`` blocks open at a line of a file, and whether the branch being read applies."""

    _KEYWORDS = ("if", "elif", "else", "fi", "then")

    def __init__(self) -> None:
        # Per open block: (this branch applies, a branch of the block applied already, where it began).
        self._stack: list[tuple[bool, bool, str]] = []
        self._then_due = ""  # where an "if"/"elif" without "; then" was: its "then" line comes next
        # A return was run: nothing applies from there on. The shell reads the blocks around it to their
        # "fi" before it runs them, so they are still followed (and a missing "fi" is still an error).
        self.returned = False

    @property
    def active(self) -> bool:
        return not self.returned and all(applies for applies, _, _ in self._stack)

    @property
    def finished(self) -> bool:
        """A return was run, and every block around it is closed: the rest of the file is not read."""
        return self.returned and not self._stack and not self._then_due

    def step(self, line: str, scope: MutableMapping[str, str], where: str) -> bool:
        """Follow ``line`` if it is a keyword line (True); an unexpected line is a ConfigError."""
        keyword, rest = [*line.split(None, 1), "", ""][:2]
        keyword = keyword.rstrip(";")
        if self._then_due and keyword != "then" and line.strip() and not line.lstrip().startswith("#"):
            raise ConfigError(f"{where}: 'then' expected after the condition at {self._then_due}", _SHELL_HINT)
        if keyword not in self._KEYWORDS:
            return False
        if keyword in ("if", "elif"):
            words = _ShellWord(rest, scope, where).words()
            then = words[-2:] == [";", "then"]
            if "then" in words and not then:
                raise ConfigError(f"{where}: put what follows 'then' on a line of its own", _SHELL_HINT)
            condition = words[:-2] if then else words[:-1] if words[-1:] == [";"] else words
            self._then_due = "" if then else where
            if keyword == "if":
                outer = self.active
                self._stack.append((outer and _condition(condition, where), not outer, where))
            else:
                _, done, start = self._open(keyword, where)
                self._stack[-1] = (not done and _condition(condition, where), done, start)
        elif keyword == "then":
            if not self._then_due:
                raise ConfigError(f"{where}: 'then' without 'if'", _SHELL_HINT)
            self._then_due = ""
        elif keyword == "else":
            _, done, start = self._open(keyword, where)
            self._stack[-1] = (not done, True, start)
        else:
            self._open(keyword, where)
            self._stack.pop()
        if rest.strip() and keyword in ("else", "fi", "then") and not rest.lstrip().startswith("#"):
            raise ConfigError(f"{where}: put what follows '{keyword}' on a line of its own", _SHELL_HINT)
        return True

    def _open(self, keyword: str, where: str) -> tuple[bool, bool, str]:
        if not self._stack:
            raise ConfigError(f"{where}: '{keyword}' without 'if'", _SHELL_HINT)
        applies, done, start = self._stack[-1]
        return applies, done or applies, start

    def close(self, source: str) -> None:
        if self._stack or self._then_due:
            raise ConfigError(f"{source}: the 'if' at {self._then_due or self._stack[-1][2]} has no 'fi'", _SHELL_HINT)


def _condition(words: list[str | None], where: str) -> bool:
    """An ``if`` condition: commands joined by ``&&``/``||`` (of equal precedence, from the left)."""
    result, joiner = True, "&&"
    command: list[str | None] = []
    for word in [*words, "&&"]:  # the added "&&" ends the last command
        if word not in ("&&", "||"):
            command.append(word)
            continue
        if (joiner == "&&") == result:  # the shell runs a command after && on success, after || on failure
            result = _command(command, where)
        joiner, command = word, []
    return result


def _command(words: list[str | None], where: str) -> bool:
    negate = words[:1] == ["!"]
    command = words[1:] if negate else words
    strings = [word for word in command if word is not None]
    result: bool | None = None
    if len(strings) == len(command):  # no pipe nor redirection
        if strings in (["true"], ["false"]):
            result = strings == ["true"]
        elif strings[:1] == ["["] and strings[-1:] == ["]"]:
            result = _test(strings[1:-1])
        elif strings[:1] == ["test"]:
            result = _test(strings[1:])
    if result is None:
        shown = " ".join(word or "|" for word in command)
        raise ConfigError(f"{where}: condition {shown!r} is not understood",
                          "conditions are [ ... ] or test with = != -z -n -eq -ne -lt -le -gt -ge, true, false")
    return result != negate


def _test(args: list[str]) -> bool | None:
    """``test``'s answer for string and integer comparisons (POSIX's rules by number of arguments);
    None for what is valid but not handled here (file tests, ``-a``, ``-o``). A malformed expression
    (``[ $UNSET = x ]`` is ``[ = x ]``) is false: the shell's test fails then, with an error nobody sees."""
    if len(args) < 2:
        return bool(args and args[0])
    if len(args) == 3 and args[1] in _BINARY_TESTS:
        return _BINARY_TESTS[args[1]](args[0], args[2])
    if args[0] == "!" and len(args) <= 4:
        inner = _test(args[1:])
        return None if inner is None else not inner
    if len(args) == 2 and args[0] in ("-z", "-n"):
        return (args[1] == "") == (args[0] == "-z")
    if len(args) == 2:
        return None if args[0] in _FILE_TESTS else False
    if len(args) == 3:
        return None if args[1] in ("-a", "-o", "-nt", "-ot", "-ef") else False
    return None


def _integers(compare: Callable[[int, int], bool]) -> Callable[[str, str], bool]:
    """An integer comparison; false for a side that is not an integer (test fails then)."""
    return lambda a, b: all(re.fullmatch(r"\s*-?\d+\s*", side) for side in (a, b)) and compare(int(a), int(b))


_BINARY_TESTS: dict[str, Callable[[str, str], bool]] = {
    "=": str.__eq__, "==": str.__eq__, "!=": str.__ne__,
    "-eq": _integers(int.__eq__), "-ne": _integers(int.__ne__), "-lt": _integers(int.__lt__),
    "-le": _integers(int.__le__), "-gt": _integers(int.__gt__), "-ge": _integers(int.__ge__),
}
_FILE_TESTS = frozenset("-b -c -d -e -f -g -h -k -p -r -s -t -u -w -x -G -L -N -O -S".split())
_SHELL_HINT = "configuration files hold KEY=value lines, bash-style"


class _ShellWord:
    """Shell words: quotes removed, backslashes and ``$`` expansions applied."""

    def __init__(self, text: str, scope: MutableMapping[str, str], where: str) -> None:
        self.text, self.scope, self.where, self.i = text, scope, where, 0

    def words(self) -> list[str | None]:
        """The words of a command line up to its comment; the operators ``;``, ``&&``, ``||`` as
        themselves, any other (``|``, ``&``, ``<``, ``>``) as None. An empty unquoted word (``$UNSET``)
        is no word at all, as in the shell."""
        found: list[str | None] = []
        text = self.text
        while True:
            while self.i < len(text) and text[self.i] in " \t":
                self.i += 1
            if self.i == len(text) or text[self.i] == "#":
                return found
            operator = next((op for op in (";", "&&", "||") if text.startswith(op, self.i)), None)
            if operator is None and text[self.i] in _WORD_END:
                self.i += 1
                found.append(None)
            elif operator is not None:
                self.i += len(operator)
                found.append(operator)
            else:
                start = self.i
                word = self.word()
                if word or any(quote in text[start:self.i] for quote in "'\""):
                    found.append(word)

    def parse(self) -> str:
        """One word, the value of an assignment; only a comment or ``;`` may follow it."""
        word = self.word()
        rest = self.text[self.i:].strip()
        if rest and not rest.startswith(("#", ";")):
            self._fail(f"unexpected {rest[:20]!r} after the value (quote values with spaces)")
        return word

    def word(self, stop: str = _WORD_END) -> str:
        out: list[str] = []
        text = self.text
        while self.i < len(text) and text[self.i] not in stop:
            char = text[self.i]
            if char == "'":
                end = text.find("'", self.i + 1)
                if end < 0:
                    self._fail("unterminated single quote")
                out.append(text[self.i + 1:end])
                self.i = end + 1
            elif char == '"':
                out.append(self._double_quoted())
            elif char == "\\":
                out.append(text[self.i + 1:self.i + 2])
                self.i += 2
            elif char == "$":
                out.append(self._expansion())
            elif char == "`":
                self._fail("command substitution `...` is not supported")
            else:
                out.append(char)
                self.i += 1
        return "".join(out)

    def _double_quoted(self) -> str:
        out: list[str] = []
        text = self.text
        self.i += 1
        while self.i < len(text):
            char = text[self.i]
            if char == '"':
                self.i += 1
                return "".join(out)
            if char == "\\" and text[self.i + 1:self.i + 2] in ('"', "\\", "$", "`"):
                out.append(text[self.i + 1])
                self.i += 2
            elif char == "$":
                out.append(self._expansion())
            elif char == "`":
                self._fail("command substitution `...` is not supported")
            else:
                out.append(char)
                self.i += 1
        return self._fail("unterminated double quote")

    def _expansion(self) -> str:
        text = self.text
        self.i += 1
        if text.startswith("{", self.i):
            end = text.find("}", self.i)
            if end < 0:
                self._fail("unterminated ${")
            inner = text[self.i + 1:end]
            self.i = end + 1
            braced = re.fullmatch(_BRACED, inner)
            if braced is None:
                self._fail(f"unsupported expansion ${{{inner}}}")
            name, operator, word = braced.groups()
            return self._braced(name, operator, word or "")
        match = re.compile(_NAME).match(text, self.i)
        if match is None:
            if text.startswith("(", self.i):
                self._fail("command substitution $(...) is not supported")
            return "$"
        self.i = match.end()
        return self.scope.get(match[0], "")

    def _braced(self, name: str, operator: str | None, word: str) -> str:
        """``${NAME}`` and the shell's ``${NAME-word}``, ``=``, ``+``: word when NAME is unset (``-``),
        then also assigned to it (``=``), or when it is set (``+``); with ``:``, empty counts as unset."""
        value = self.scope.get(name)
        if operator is None:
            return value or ""
        missing = value is None or (operator[0] == ":" and not value)
        if operator[-1] == "+":
            return "" if missing else self._word(word)
        if not missing:
            return value or ""
        value = self._word(word)
        if operator[-1] == "=":
            self.scope[name] = value
        return value

    def _word(self, text: str) -> str:
        """The word of a ``${NAME-word}``: quotes and expansions as in a value, blanks kept."""
        return _ShellWord(text, self.scope, self.where).word(stop="")

    def _fail(self, problem: str) -> Any:
        raise ConfigError(f"{self.where}: {problem}", _SHELL_HINT)
