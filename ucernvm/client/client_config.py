"""cvmfs-style client configuration: ``KEY=value`` files in cvmfs's order, then explicit overrides.

Files are read in the order of cvmfs's ``OptionsManager::ParseDefault``, later ones overriding
earlier ones: ``default.conf``, ``default.d/*.conf``, ``default.local``,
``domain.d/<domain>.conf|.local``, ``config.d/<fqrn>.conf|.local``; then files named
explicitly, then ``-o KEY=value`` overrides (taken literally). In values, ``@fqrn@`` becomes the
repository name and ``@org@`` its first label. The result is one frozen :class:`FetcherConfig`,
every value checked; a bad one is a ConfigError that names its key.

cvmfs sources these files with bash. A boot image has no shell, so the assignments are parsed
here (hand-written: shlex knows quotes but not ``$VAR`` expansion): ``[export|readonly] KEY=word``
with single and double quotes, backslashes, ``#`` comments and ``$VAR``, ``${VAR}``,
``${VAR:-default}``. Lines that are not assignments (``if``/``fi``, functions) are skipped, as
cvmfs's own fast parser does, so an assignment inside an ``if`` always applies.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ucernvm.client.proxies import parse_proxy_list
from ucernvm.cvmfs.hashing import ContentHash
from ucernvm.errors import ConfigError, FormatError
from ucernvm.records import NamedTuple

DEFAULT_CONFIG_DIR = Path("/etc/cvmfs")

_ASSIGNMENT = re.compile(r"^\s*(?:(?:export|readonly)\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_WORD_END = " \t;&|<>"


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
    parse_proxy_list(value, key)  # checks every member; the text is kept ("auto" is resolved later)
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
    quota_limit: int = 4000
    keys_dir: str = "/etc/cvmfs/keys"
    public_key: tuple[str, ...] = ()
    repository_tag: str | None = None
    root_hash: ContentHash | None = None

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
}


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
    for number, line in enumerate(text.splitlines(), 1):
        match = _ASSIGNMENT.match(line)
        if match is None:
            continue
        where = f"{source}:{number}"
        values[match[1]] = _ShellWord(match[2], lambda name: values.get(name, environ.get(name, "")), where).parse()


def parse_option(text: str) -> tuple[str, str]:
    """``KEY=value`` as given on a command line (no quoting: the value is literal)."""
    key, equals, value = text.partition("=")
    if not equals or not _NAME.fullmatch(key):
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


class _ShellWord:
    """The value of one shell word: quotes removed, backslashes and ``$`` expansions applied."""

    def __init__(self, text: str, lookup: Callable[[str], str], where: str) -> None:
        self.text, self.lookup, self.where, self.i = text, lookup, where, 0

    def parse(self) -> str:
        out: list[str] = []
        text = self.text
        while self.i < len(text) and text[self.i] not in _WORD_END:
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
            else:
                out.append(char)
                self.i += 1
        rest = text[self.i:].strip()
        if rest and not rest.startswith(("#", ";")):
            self._fail(f"unexpected {rest[:20]!r} after the value (quote values with spaces)")
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
            name, default_sep, default = inner.partition(":-")
            if not _NAME.fullmatch(name):
                self._fail(f"unsupported expansion ${{{inner}}}")
            return (self.lookup(name) or default) if default_sep else self.lookup(name)
        match = _NAME.match(text, self.i)
        if match is None:
            if text.startswith("(", self.i):
                self._fail("command substitution $(...) is not supported")
            return "$"
        self.i = match.end()
        return self.lookup(match[0])

    def _fail(self, problem: str) -> Any:
        raise ConfigError(f"{self.where}: {problem}", "configuration files hold KEY=value lines, bash-style")
