"""The CernVM-FS geo API: order a client's Stratum 1 servers (and fallback proxies), nearest first.

Request path (after ``/cvmfs/<fqrn>/api/v1.0/geo/``): ``<caching-string>/<h1>,<h2>,...`` with an
optional ``,+PXYSEP+,<p1>,<p2>,...`` tail of fallback proxies. The answer is the 1-based order of
every entry, e.g. ``2,1,3``; with ``+PXYSEP+`` the separator's own index comes last, so the count
always equals the input count (what the cvmfs client checks). Semantics follow the real server,
``cvmfs/webapi/cvmfs_geo.py``:

- the client is located at the caching string (normally the proxy's name) when that resolves, else
  at the last ``X-Forwarded-For`` address, else at the connecting address;
- with ``+PXYSEP+`` the proxies are ordered first, and the hosts are then ordered relative to the
  nearest locatable proxy instead of the client; the request splits at the first separator, and a
  later one is a proxy that cannot be located;
- the sort is stable (ties keep the given order) and servers that cannot be located go last;
- when no host can be located at all, the request is refused (400).

"Nearest" means great-circle distance when a :class:`GeoDatabase` is given; without one, the
longest common address prefix with the client (same host, then same subnet).
"""

from __future__ import annotations

import csv
import ipaddress
import math
import re
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Union

from ucernvm.errors import ConfigError

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
Location = object  # opaque to the sorter: whatever a Locator returns and compares

PROXY_SEPARATOR = "+PXYSEP+"
MAX_ENTRIES = 100  # each name may cost a resolver thread; real clients send about ten

# Characters of a name worth locating, as cvmfs_geo.py's ("paranoia", ':' for IPv6 literals, brackets
# around them). Any other name, or an empty one as a trailing comma makes, cannot be located: it goes
# last, as there.
_NAME_CHARS = re.compile(r"^[0-9A-Za-z.:\[\]-]{0,256}$")
_HOST_LABEL = re.compile(r"^[0-9A-Za-z]([0-9A-Za-z-]{0,61}[0-9A-Za-z])?$")
# The cvmfs client sends its UUID as the caching string when it has no proxy: never worth a lookup.
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


class GeoRequestError(Exception):
    """A geo request that gets ``400 Bad Request: <reason>``."""


# --- locating addresses -------------------------------------------------------------------------


class Locator(Protocol):
    def locate(self, addresses: Sequence[IPAddress]) -> Location | None: ...

    def distance(self, a: Location, b: Location) -> float: ...


class GeoDatabase:
    """CIDR networks mapped to (latitude, longitude), longest prefix wins.

    File format: CSV with a header row naming at least the columns ``network``, ``latitude`` and
    ``longitude`` (other columns are ignored, so MaxMind's GeoLite2 City "Blocks" CSV files load
    as they are); lines starting with ``#`` are comments; rows without coordinates are skipped::

        network,latitude,longitude
        192.0.2.0/24,46.2324,6.0502
        2001:db8::/32,41.7768,-88.4604
    """

    def __init__(self, networks: dict[str, tuple[float, float]] | None = None) -> None:
        # version -> prefix length -> network address (int) -> (lat, lon); a handful of dict
        # probes per lookup, whatever the table size.
        self._tables: dict[int, dict[int, dict[int, tuple[float, float]]]] = {4: {}, 6: {}}
        self._prefixes: dict[int, list[int]] = {4: [], 6: []}
        for network, location in (networks or {}).items():
            self.add(ipaddress.ip_network(network, strict=False), *location)

    @classmethod
    def load(cls, path: str | Path) -> GeoDatabase:
        db = cls()
        try:
            with open(path, newline="", encoding="utf-8") as stream:
                rows = csv.DictReader(line for line in stream if not line.startswith("#"))
                missing = {"network", "latitude", "longitude"} - set(rows.fieldnames or ())
                if missing:
                    raise ConfigError(
                        f"geo database {path}: missing column(s) {', '.join(sorted(missing))}",
                        "the first non-comment line must be a header: network,latitude,longitude",
                    )
                for row in rows:
                    if not row["latitude"] or not row["longitude"]:
                        continue
                    try:
                        network = ipaddress.ip_network(row["network"].strip(), strict=False)
                        latitude, longitude = float(row["latitude"]), float(row["longitude"])
                    except (ValueError, AttributeError) as error:
                        raise ConfigError(
                            f"geo database {path}: bad row {row['network']!r}: {error}",
                            "each row needs a CIDR network and decimal latitude and longitude",
                        ) from None
                    db.add(network, latitude, longitude)
        except OSError as error:
            raise ConfigError(f"cannot read geo database {path}: {error.strerror}") from None
        return db

    def add(self, network: ipaddress.IPv4Network | ipaddress.IPv6Network, latitude: float,
            longitude: float) -> None:
        if not (-90 <= latitude <= 90 and -180 <= longitude <= 180):
            raise ConfigError(f"geo database: {network} has coordinates out of range")
        tables = self._tables[network.version]
        if network.prefixlen not in tables:
            tables[network.prefixlen] = {}
            self._prefixes[network.version] = sorted(tables, reverse=True)
        tables[network.prefixlen][int(network.network_address)] = (latitude, longitude)

    def lookup(self, address: IPAddress) -> tuple[float, float] | None:
        bits = address.max_prefixlen
        value = int(address)
        tables = self._tables[address.version]
        for prefix in self._prefixes[address.version]:
            shift = bits - prefix
            found = tables[prefix].get(value >> shift << shift)
            if found is not None:
                return found
        return None

    # Locator: the first address found in the database (IPv4 first, as the resolver sorts them).
    def locate(self, addresses: Sequence[IPAddress]) -> Location | None:
        for address in addresses:
            found = self.lookup(address)
            if found is not None:
                return found
        return None

    def distance(self, a: Location, b: Location) -> float:
        return great_circle(*a, *b)  # type: ignore[misc]


def great_circle(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Central angle in radians between two points (haversine: stable for short distances)."""
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    h = (math.sin((phi2 - phi1) / 2) ** 2
         + math.cos(phi1) * math.cos(phi2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2)
    return 2 * math.asin(min(1.0, math.sqrt(h)))


class PrefixLocator:
    """Without a database: an address is "near" the client when it shares a long prefix."""

    def locate(self, addresses: Sequence[IPAddress]) -> Location | None:
        return tuple(addresses) or None

    def distance(self, a: Location, b: Location) -> float:
        best = 0
        for x in a:  # type: ignore[attr-defined]
            for y in b:  # type: ignore[attr-defined]
                if x.version == y.version:
                    best = max(best, x.max_prefixlen - (int(x) ^ int(y)).bit_length())
        return -best


# --- name resolution ----------------------------------------------------------------------------


def parse_address(text: str) -> IPAddress | None:
    """An IP literal (IPv6 possibly in brackets), IPv4-mapped IPv6 unwrapped; else None."""
    try:
        address = ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_host_name(name: str) -> bool:
    labels = name.rstrip(".").split(".")
    return len(name) <= 253 and all(_HOST_LABEL.match(label) for label in labels)


@dataclass
class _Lookup:
    done: threading.Event
    addresses: tuple[IPAddress, ...] = ()
    stamp: float = 0.0


class Resolver:
    """Names to addresses (IPv4 first), cached, resolved concurrently within a time budget.

    ``getaddrinfo`` cannot be cancelled, so each lookup runs in a daemon thread; a request waits
    at most ``budget`` seconds for all its names, and a slow lookup that finishes later still
    fills the cache for the next request. At most ``max_pending`` lookups run at once: requests
    full of names that no DNS server answers must not start threads without end; a name that
    finds no room is not located this time (and not cached: a later request tries it again).
    """

    def __init__(self, budget: float = 2.0, ttl: float = 300.0, max_entries: int = 10000,
                 max_pending: int = 64) -> None:
        self.budget = budget
        self.ttl = ttl
        self.max_entries = max_entries
        self.max_pending = max_pending
        self._lock = threading.Lock()
        self._cache: dict[str, _Lookup] = {}
        self._pending = 0

    def resolve(self, names: Sequence[str]) -> dict[str, tuple[IPAddress, ...]]:
        lookups: dict[str, _Lookup] = {}
        now = time.monotonic()
        for name in set(names):
            literal = parse_address(name)
            if literal is not None:
                lookups[name] = _Lookup(_done_event(), (literal,))
            elif is_host_name(name) and not _UUID.match(name):
                lookups[name] = self._lookup(name.lower(), now)
        deadline = now + self.budget
        for lookup in lookups.values():
            lookup.done.wait(max(0.0, deadline - time.monotonic()))
        return {name: lookup.addresses for name, lookup in lookups.items()}

    def _lookup(self, name: str, now: float) -> _Lookup:
        with self._lock:
            cached = self._cache.get(name)
            if cached is not None and (not cached.done.is_set() or now - cached.stamp < self.ttl):
                return cached
            if self._pending >= self.max_pending:
                return _Lookup(_done_event())
            if cached is None and len(self._cache) >= self.max_entries:
                self._cache.pop(next(iter(self._cache)))  # bound memory: drop the oldest entry
            lookup = _Lookup(threading.Event())
            self._cache[name] = lookup
            self._pending += 1
        try:
            threading.Thread(target=self._run, args=(name, lookup), daemon=True,
                             name=f"resolve {name}").start()
        except RuntimeError:  # no thread to be had: not located this time, nor cached
            with self._lock:
                self._pending -= 1
                self._cache.pop(name, None)
            lookup.done.set()
        return lookup

    def _run(self, name: str, lookup: _Lookup) -> None:
        try:
            infos = socket.getaddrinfo(name, None, 0, socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            infos = []
        found = {parse_address(str(info[4][0])) for info in infos}
        found.discard(None)
        lookup.addresses = tuple(sorted(found, key=lambda a: (a.version, int(a))))  # type: ignore
        lookup.stamp = time.monotonic()
        with self._lock:
            self._pending -= 1
        lookup.done.set()


def _done_event() -> threading.Event:
    event = threading.Event()
    event.set()
    return event


# --- the API ------------------------------------------------------------------------------------


def parse_request(path_info: str) -> tuple[str, list[str]]:
    """Split ``<caching-string>/<h1>,<h2>,...`` and check their number; raise GeoRequestError."""
    caching_string, slash, server_list = path_info.partition("/")
    if not slash:
        raise GeoRequestError("no slash in geo path")
    servers = server_list.split(",")
    if len(servers) > MAX_ENTRIES:
        raise GeoRequestError(f"more than {MAX_ENTRIES} servers")
    return caching_string, servers


class GeoSorter:
    """Answers geo requests: ``answer(path_info, remote_addr, forwarded_for)`` -> ``"2,1,3\\n"``."""

    def __init__(self, database: GeoDatabase | None = None) -> None:
        self.locator: Locator = database if database is not None else PrefixLocator()
        self.resolver = Resolver()
        self._unlocated = ("remote addr not found in database" if database is not None
                           else "remote addr unknown")
        self._no_server = ("no server addr found in database" if database is not None
                           else "no server name resolves")

    def answer(self, path_info: str, remote_addr: str, forwarded_for: str | None = None) -> str:
        caching_string, servers = parse_request(path_info)
        names = [name for name in [*servers, caching_string] if _NAME_CHARS.match(name)]  # not +PXYSEP+
        addresses = self.resolver.resolve(names)
        locations = {name: self.locator.locate(found) for name, found in addresses.items()}

        client = locations.get(caching_string)
        if client is None and forwarded_for:
            # The last element is the address our nearest reverse proxy saw (as cvmfs_geo.py).
            client = self._locate_literal(re.split(r"[ ,]", forwarded_for.strip())[-1])
        if client is None:
            client = self._locate_literal(remote_addr)
        if client is None:
            raise GeoRequestError(self._unlocated)

        if PROXY_SEPARATOR in servers:
            separator = servers.index(PROXY_SEPARATOR)
            proxies = servers[separator + 1:]
            located, proxy_order = self._sort(client, proxies, locations)
            if located:
                client = locations[proxies[proxy_order[0]]]
            located, order = self._sort(client, servers[:separator], locations)
            order += [separator + 1 + i for i in proxy_order] + [separator]
        else:
            located, order = self._sort(client, servers, locations)
        if not located:
            raise GeoRequestError(self._no_server)
        return ",".join(str(i + 1) for i in order) + "\n"

    def _locate_literal(self, text: str) -> Location | None:
        address = parse_address(text)
        return None if address is None else self.locator.locate((address,))

    def _sort(self, origin: Location, servers: Sequence[str],
              locations: dict[str, Location | None]) -> tuple[bool, list[int]]:
        """Stable nearest-first order of ``servers`` (0-based); unlocated ones go last."""
        distances = []
        for server in servers:
            location = locations.get(server)
            distances.append(math.inf if location is None else self.locator.distance(origin, location))
        order = sorted(range(len(servers)), key=distances.__getitem__)
        return any(d != math.inf for d in distances), order
