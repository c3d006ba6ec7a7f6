"""The proxy chain of the CernVM-FS client: load-balancing groups, burned proxies, fallback groups.

``CVMFS_HTTP_PROXY`` is a list of groups separated by ``;``, each a set of members separated by
``|``; ``DIRECT`` means no proxy. The rules are cvmfs's (``download.cc`` ``SetProxyChain``,
``SwitchProxy``, ``UpdateProxiesUnlocked``, ``RebalanceProxiesUnlocked``, ``SetUrlOptions``):

- every address a proxy name resolves to is a member of its own (IPv4 preferred);
- one random live member of the current group is in use (load balancing between clients);
- a failing member is burned: the next random live member is used; when the whole group is
  burned, the next group; with ``CVMFS_PROXY_RESET_AFTER`` seconds after leaving the first group
  the chain goes back to it, and burned members of a group come back after the same time;
- ``CVMFS_FALLBACK_PROXY`` groups come after the regular ones; when there are any, ``DIRECT`` is
  removed from both lists.

Every change of the member in use is a warning, as cvmfs's syslog has it ("switching proxy from X to
Y"), and lands in the mount's log and ``user.logbuffer`` beside the server switches.
"""

from __future__ import annotations

import ipaddress
import random
import socket
import threading
import time
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

from ucernvm.client.lazylog import LazyLogger
from ucernvm.client.transfer import DIRECT
from ucernvm.errors import ConfigError
from ucernvm.records import NamedTuple

log = LazyLogger(__name__)

AUTO = "auto"


class Proxy(NamedTuple):
    """One member: ``url`` is ``DIRECT`` or ``http://<address>:<port>``; ``name`` the configured host."""

    url: str
    name: str = ""

    def __str__(self) -> str:
        return self.url if not self.name or self.name in self.url else f"{self.url} ({self.name})"


def normalize_member(text: str, key: str = "CVMFS_HTTP_PROXY") -> str:
    """``DIRECT``, ``auto``, or the member as a URL with a scheme (cvmfs's ``AddDefaultScheme``)."""
    if text in (DIRECT, AUTO):
        return text
    url = text if "://" in text else f"http://{text}"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        port, parts = None, None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or port is None:
        raise ConfigError(f"{key}: bad proxy {text!r}", "a proxy is host:port or http://host:port, or DIRECT")
    return url.rstrip("/")


def parse_proxy_list(text: str, key: str = "CVMFS_HTTP_PROXY", allow_auto: bool = True) -> list[list[str]]:
    """Groups (``;``) of members (``|``); empty groups are dropped.

    ``auto`` stands for a whole group, where ``allow_auto`` (cvmfs resolves only such groups of
    CVMFS_HTTP_PROXY): anywhere else it would be taken for a proxy's name.
    """
    groups = []
    for group in text.split(";"):
        members = [normalize_member(member.strip(), key) for member in group.split("|") if member.strip()]
        if AUTO in members and (len(members) > 1 or not allow_auto):
            raise ConfigError(f"{key}: 'auto' is a proxy group of its own, of CVMFS_HTTP_PROXY only",
                              "e.g. CVMFS_HTTP_PROXY='auto;DIRECT': the PAC files of CVMFS_PAC_URLS name the proxies")
        if members:
            groups.append(members)
    return groups


def without_direct(groups: list[list[str]]) -> list[list[str]]:
    return [members for members in ([m for m in group if m != DIRECT] for group in groups) if members]


def resolve_addresses(host: str) -> list[str]:
    """A host's addresses, IPv4 ones only when there are any (cvmfs's default IP preference)."""
    try:
        infos = socket.getaddrinfo(host, None, 0, socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return []
    found = list(dict.fromkeys(str(info[4][0]) for info in infos))
    v4 = [a for a in found if ":" not in a]
    return v4 or found


def expand_member(url: str, resolve: Callable[[str], list[str]]) -> list[Proxy]:
    """One proxy per resolved address; an unresolvable name stays as it is (and fails when used)."""
    if url == DIRECT:
        return [Proxy(DIRECT)]
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        ipaddress.ip_address(host)
        return [Proxy(url)]
    except ValueError:
        pass
    addresses = resolve(host)
    if not addresses:
        return [Proxy(url, host)]
    return [Proxy(f"{parts.scheme}://{_bracket(a)}:{parts.port}", host) for a in addresses]


def _bracket(address: str) -> str:
    return f"[{address}]" if ":" in address else address


class ProxyChain:
    """The groups of proxies and which member is in use; every change happens under one lock."""

    def __init__(self, groups: Sequence[Sequence[str]] = (), fallback: Sequence[Sequence[str]] = (),
                 reset_after: float = 300.0, *, resolve: Callable[[str], list[str]] = resolve_addresses,
                 clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None) -> None:
        regular, extra = [list(g) for g in groups], [list(g) for g in fallback]
        if extra:  # fallback proxies replace DIRECT (cvmfs's StripDirect)
            regular, extra = without_direct(regular), without_direct(extra)
        if not regular and not extra:
            regular = [[DIRECT]]
        self.reset_after = reset_after
        self._clock = clock
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._groups = [[p for url in group for p in expand_member(url, resolve)] for group in regular + extra]
        self.fallback_start = len(regular)
        self.failovers = 0
        self._current = 0
        self._burned = 0
        self._backup_since: float | None = None  # when the chain left the first group
        self._failover_since: float | None = None  # when the first member of this group was burned
        self._selected = self._groups[0][0]
        self._rebalance()

    @property
    def total(self) -> int:
        return sum(len(group) for group in self._groups)

    @property
    def groups(self) -> list[list[Proxy]]:
        with self._lock:
            return [list(group) for group in self._groups]

    @property
    def selected(self) -> Proxy:
        """The member in use, as it stands (no reset applied)."""
        return self._selected

    @property
    def current_group(self) -> int:
        return self._current

    def current(self) -> Proxy:
        """The member to use for the next request, after the reset rules were applied."""
        with self._lock:
            now, old = self._clock(), self._selected
            if self._backup_since is not None and now > self._backup_since + self.reset_after:
                self._current, self._backup_since = 0, None
                self._rebalance()
            if self._failover_since is not None and now > self._failover_since + self.reset_after:
                self._rebalance()
            self._report_switch(old, f"reset after {self.reset_after:g} s")
            return self._selected

    def fail(self, proxy: Proxy, reason: str = "") -> None:
        """Burn ``proxy`` if it is still live in the current group (another thread may have done so);
        ``reason``, why it failed, goes into the warning."""
        with self._lock:
            group = self._groups[self._current]
            alive = len(group) - self._burned
            failed = 0
            for i in range(alive):
                if i < len(group) - self._burned and group[i].url == proxy.url:
                    self._burned += 1
                    last = len(group) - self._burned
                    group[i], group[last] = group[last], group[i]
                    failed += 1
            if not failed:
                return
            self.failovers += failed
            if self._burned == len(group):
                self._burned = 0
                if len(self._groups) > 1:
                    self._current = (self._current + 1) % len(self._groups)
                    if self.reset_after > 0:
                        if self._current > 0:
                            self._backup_since = self._backup_since or self._clock()
                        else:
                            self._backup_since = None
                        self._failover_since = None
            elif self.reset_after > 0 and self._failover_since is None:
                self._failover_since = self._clock()
            self._select()
            self._report_switch(proxy, reason)

    def reset_for_host_failover(self) -> None:
        """Every proxy failed for a request: back to the first group before the next server is tried."""
        with self._lock:
            if self._current > 0 or self._burned > 0:
                old = self._selected
                self._current, self._backup_since = 0, None
                self._rebalance()
                self._report_switch(old, "every proxy failed, the next server is tried")

    def reorder_fallback(self, order: Sequence[int]) -> None:
        """Put the fallback groups in ``order`` (indices among the fallback groups), as the geo API said."""
        with self._lock:
            fallback = self._groups[self.fallback_start:]
            self._groups[self.fallback_start:] = [fallback[i] for i in order]
            if self._current >= self.fallback_start:
                old = self._selected
                self._burned = 0
                self._select()
                self._report_switch(old, "geo order")

    def _rebalance(self) -> None:
        self._failover_since = None
        self._burned = 0
        self._select()

    def _select(self) -> None:
        group = self._groups[self._current]
        self._selected = group[self._rng.randrange(len(group) - self._burned)]

    def _report_switch(self, old: Proxy, reason: str) -> None:
        """A warning when the member in use is no longer ``old`` (a lone proxy burned stays in use)."""
        if self._selected.url != old.url:
            log.warning("switching proxy from %s to %s%s", old, self._selected, f" ({reason})" if reason else "")

    def describe(self) -> str:
        with self._lock:
            parts = []
            for index, group in enumerate(self._groups):
                members = "|".join(f"[{p}]" if p is self._selected else str(p) for p in group)
                parts.append(("fallback " if index >= self.fallback_start else "") + members)
            return "; ".join(parts)
