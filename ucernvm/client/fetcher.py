"""Fetching repository data over HTTP the way the cvmfs client does: servers, proxies, failover.

Each request runs cvmfs's loop (``download.cc`` ``VerifyAndFinalize``): an attempt through the
current proxy to the current server; on failure, per the failure's class (see
:mod:`ucernvm.client.transfer`):

- transfer errors (connect, timeout, short transfer) are retried on the same URL up to
  ``CVMFS_MAX_RETRIES`` times after a backoff (random in [0, BACKOFF_INIT], doubled each time,
  capped at BACKOFF_MAX; seconds in the configuration, as cvmfs's ``* 1000`` ms);
- data that does not match its content hash, or does not inflate (as it arrives, see
  :mod:`ucernvm.client.sinks`), is fetched once more with ``no-cache`` headers (so a proxy fetches it
  anew); a second failure is a server error. The hash covers the stored (compressed) bytes, so it
  also catches a truncated stream;
- a proxy error burns the proxy (:class:`ProxyChain`); when every proxy failed for this request,
  the proxies are reset and the next server is tried;
- a server error moves on to the next server, each server at most once per request; the first
  server is used again ``CVMFS_HOST_RESET_AFTER`` seconds after it was left.

Bodies stream into a sink (:mod:`ucernvm.client.sinks`), which starts over with each attempt and is
finished only by one whose body matched its content hash: corrupt everywhere is a VerificationError.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from functools import cached_property
from urllib.parse import urlsplit

from ucernvm.client.client_config import FetcherConfig, check_server_url, substitute
from ucernvm.client.lazylog import LazyLogger
from ucernvm.client.pac import resolve_proxy_description
from ucernvm.client.proxies import Proxy, ProxyChain, parse_proxy_list
from ucernvm.client.sinks import MAX_NAMED_BYTES, Checked, Memory, Sink
from ucernvm.client.sources import corrupt_object_error
from ucernvm.client.transfer import DIRECT, HASH_MISMATCH, Attempt, Failure, Transfer
from ucernvm.cvmfs.hashing import ContentHash, ObjectType
from ucernvm.errors import ConfigError, FetchError, UcernvmError
from ucernvm.records import NamedTuple

log = LazyLogger(__name__)

GEO_MAX_ATTEMPTS = 3  # cvmfs asks at most three random servers for the geo order
PROXY_SEPARATOR = "+PXYSEP+"


class ServerDate(NamedTuple):
    """A server's clock as a response told it: its Date and Age headers, and when (``clock()``) it came."""

    url: str
    date: str
    age: str
    received: float


def validate_geo_reply(reply: str, expected: int) -> list[int] | None:
    """The 0-based order in a geo API reply such as ``"2,1,3\\n"``, or None if it is not a
    permutation of 1..expected (cvmfs's ``ValidateGeoReply``, character rules included)."""
    if not reply or any(c not in "0123456789,\n" for c in reply):
        return None
    items = reply.replace("\n", "").split(",")
    if any(not item for item in items) or len(items) != expected:
        return None
    values = [int(item) for item in items]
    if sorted(values) != list(range(1, expected + 1)):
        return None
    return [value - 1 for value in values]


class HostChain:
    """The ordered servers and which one is in use; thread-safe (cvmfs's ``SwitchHostInfo``)."""

    def __init__(self, urls: Sequence[str], reset_after: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.reset_after = reset_after
        self._clock = clock
        self._lock = threading.Lock()
        self._urls = list(urls)
        self._current = 0
        self._backup_since: float | None = None
        self.failovers = 0

    @property
    def urls(self) -> list[str]:
        with self._lock:
            return list(self._urls)

    @property
    def selected(self) -> str:
        return self._urls[self._current]

    @property
    def in_turn(self) -> list[str]:
        """The servers in the order failovers go through them: the one in use first."""
        with self._lock:
            return self._urls[self._current:] + self._urls[:self._current]

    def current(self) -> tuple[int, str]:
        """Index and URL of the server for the next request, back to the first one when due."""
        with self._lock:
            if self._backup_since is not None and self._clock() > self._backup_since + self.reset_after:
                log.warning("switching back to server %s (reset after %g s)", self._urls[0], self.reset_after)
                self._current, self._backup_since = 0, None
            return self._current, self._urls[self._current]

    def fail(self, index: int, reason: str) -> None:
        """Move on from server ``index``, unless another request already did."""
        with self._lock:
            if len(self._urls) == 1 or index != self._current:
                return
            old = self._urls[self._current]
            self._current = (self._current + 1) % len(self._urls)
            self.failovers += 1
            log.warning("switching server from %s to %s (%s)", old, self._urls[self._current], reason)
            if self.reset_after > 0:
                if self._current != 0:
                    self._backup_since = self._backup_since or self._clock()
                else:
                    self._backup_since = None

    def replace(self, urls: Sequence[str]) -> None:
        with self._lock:
            self._urls, self._current, self._backup_since = list(urls), 0, None

    def describe(self) -> str:
        with self._lock:
            return ", ".join(f"[{url}]" if i == self._current else url for i, url in enumerate(self._urls))


class Counters(NamedTuple):
    requests: int = 0  # HTTP attempts, retries included
    bytes: int = 0  # body bytes received, failed transfers included
    retries: int = 0  # same-URL retries after a backoff
    nocache_retries: int = 0  # refetches after a content hash mismatch
    host_failovers: int = 0
    proxy_failovers: int = 0
    downloads: int = 0  # requests that brought their object or file, verified
    seconds: float = 0.0  # spent in transfers, failed ones included (with ``bytes``, the speed)


class _Job:
    """The per-request state of cvmfs's ``JobInfo``."""

    __slots__ = ("path", "expected", "object_type", "absolute", "used_hosts", "used_proxies", "retries",
                 "backoff", "nocache", "failures")

    def __init__(self, path: str, expected: ContentHash | None = None, object_type: ObjectType = ObjectType.FILE,
                 absolute: bool = False) -> None:
        self.path = path
        self.expected = expected
        self.object_type = object_type
        self.absolute = absolute
        self.used_hosts = 1
        self.used_proxies = 1
        self.retries = 0
        self.backoff = 0.0
        self.nocache = False  # the refetch after a hash mismatch is under way
        self.failures: list[Attempt] = []


class HttpSource:
    """A repository behind HTTP servers and proxies, cvmfs's client rules (see the module doc).

    ``HttpSource(urls)`` uses cvmfs's defaults and no proxy; :meth:`from_config` honours a whole
    :class:`FetcherConfig`. Safe to use from many threads at once.
    """

    def __init__(self, urls: Sequence[str], config: FetcherConfig | None = None, *, fqrn: str = "",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config = config or FetcherConfig()
        urls = [check_server_url(substitute(url, fqrn)) for url in urls]
        if not urls:
            raise ConfigError("no server URL given", "set CVMFS_SERVER_URL or give http://host/cvmfs/<fqrn>")
        self.fqrn = fqrn
        self.description = ";".join(urls)
        self._clock = clock
        self._hosts = HostChain(urls, config.host_reset_after, clock)
        self._transfer = Transfer(config.low_speed_limit, config.follow_redirects, clock)
        parse_proxy_list(config.http_proxy)  # checked before any PAC file is fetched
        fallback = parse_proxy_list(config.fallback_proxy, "CVMFS_FALLBACK_PROXY", allow_auto=False)
        proxies = resolve_proxy_description(config.http_proxy, config.pac_urls, urls, self._fetch_pac)
        if config.http_proxy and not proxies:
            raise FetchError(f"no proxy found for CVMFS_HTTP_PROXY={config.http_proxy!r}",
                             "no PAC file in CVMFS_PAC_URLS answered; add DIRECT or a proxy as a fallback group")
        self._proxies = ProxyChain(parse_proxy_list(proxies, allow_auto=False), fallback, config.proxy_reset_after,
                                   clock=clock)
        self._lock = threading.Lock()
        self._requests = self._bytes = self._retries = self._nocache_retries = self._downloads = 0
        self._seconds = 0.0
        self.last_date: ServerDate | None = None  # of the last successful response that had one

    @classmethod
    def from_config(cls, config: FetcherConfig, fqrn: str) -> HttpSource:
        """The fetcher ``config`` describes for repository ``fqrn``: geo-sorted when
        ``CVMFS_USE_GEOAPI=yes``, then cut to ``CVMFS_MAX_SERVERS``."""
        if not config.server_urls:
            raise ConfigError("CVMFS_SERVER_URL is not set", "set it to http://host/cvmfs/@fqrn@ (several: ';')")
        source = cls(config.server_urls, config, fqrn=fqrn)
        if config.use_geoapi:
            source.geosort()
        if config.max_servers and len(source.hosts) > config.max_servers:
            source._hosts.replace(source.hosts[:config.max_servers])
        return source

    # -- RepositorySource ----------------------------------------------------------------------

    def fetch_named(self, name: str) -> bytes:
        # Asked for as cvmfs asks (manifest_fetch.cc, whitelist.cc): a site's squid may answer from its copy
        # for the max-age the server sets (61 s), which spares the Stratum 1 a request from every client.
        return self._fetch_bytes(_Job(name))

    def fetch_object(self, content_hash: ContentHash, object_type: ObjectType, sink: Sink) -> None:
        self._fetch(_Job(content_hash.object_path(object_type), content_hash, object_type), sink)

    @cached_property
    def uuid(self) -> str:
        """The geo API's cache key when there is no proxy, as cvmfs's UUID (uuid is imported only for the geo
        API: it imports platform, ~30 ms under emulation, which a boot with one server does without)."""
        import uuid

        return str(uuid.uuid4())

    def load_for_later(self) -> None:
        """Import now what a request to any server through any proxy will need: the boot's daemon, which
        serves from the freed initramfs, can import nothing after the switch of root (a failover to an https
        server would fail)."""
        self._transfer.load_for(self.hosts, [proxy for group in self.proxy_groups for proxy in group])

    # -- observability -------------------------------------------------------------------------

    @property
    def current_host(self) -> str:
        return self._hosts.selected

    @property
    def current_proxy(self) -> str:
        return self._proxies.selected.url

    @property
    def hosts(self) -> list[str]:
        return self._hosts.urls

    @property
    def hosts_in_turn(self) -> list[str]:
        return self._hosts.in_turn

    @property
    def proxy_groups(self) -> list[list[str]]:
        return [[proxy.url for proxy in group] for group in self._proxies.groups]

    @property
    def counters(self) -> Counters:
        with self._lock:
            return Counters(self._requests, self._bytes, self._retries, self._nocache_retries,
                            self._hosts.failovers, self._proxies.failovers, self._downloads, self._seconds)

    def describe(self) -> str:
        c = self.counters
        return (f"servers {self._hosts.describe()}; proxies {self._proxies.describe()}; "
                f"{c.requests} requests, {c.bytes} bytes, {c.retries} retries, {c.nocache_retries} no-cache "
                f"refetches, {c.host_failovers} server and {c.proxy_failovers} proxy failovers")

    def close(self) -> None:
        self._transfer.close()

    # -- the request loop ----------------------------------------------------------------------

    def _fetch_bytes(self, job: _Job) -> bytes:
        body = Memory(MAX_NAMED_BYTES)
        self._fetch(job, body)
        return body.value()

    def _fetch(self, job: _Job, sink: Sink) -> None:
        host_index, host = self._hosts.current()
        proxy = self._proxies.current()
        while True:
            url = job.path if job.absolute else f"{host}/{job.path}"
            timeout = self.config.timeout_direct if proxy.url == DIRECT else self.config.timeout
            started = self._clock()
            body = Checked(sink, job.expected)
            attempt = self._transfer.get(url, proxy.url, timeout, body, nocache=job.nocache)
            with self._lock:
                self._requests += 1
                self._bytes += attempt.received
                self._seconds += self._clock() - started
                self._downloads += attempt.failure is None
            if attempt.failure is None:
                if attempt.date:
                    self.last_date = ServerDate(attempt.url, attempt.date, attempt.age, self._clock())
                body.finish()
                return
            if body.written:
                sink.restart()
            job.failures.append(attempt)
            same_url = self._same_url_retry(job, attempt.failure)
            failure = self._next_step(job, attempt.failure, same_url)
            if failure is None:
                raise self._error(job)
            job.nocache = False
            if failure is Failure.BAD_DATA:
                job.nocache = True
                with self._lock:
                    self._nocache_retries += 1
                continue
            if failure in (Failure.PROXY_RESOLVE, Failure.PROXY_HTTP) or (failure.is_proxy_transfer and not same_url):
                self._proxies.fail(proxy, f"{attempt.detail or failure.value} for {attempt.url}")
                job.used_proxies += 1
            elif failure in (Failure.HOST_RESOLVE, Failure.HOST_HTTP, Failure.HOST_AFTER_PROXY) or (
                    failure.is_host_transfer and not same_url):
                self._hosts.fail(host_index, f"{attempt.detail or failure.value} at {attempt.url}")
                job.used_hosts += 1
            else:
                self._backoff(job)
                continue
            # Another thread may have switched too: take whatever is current now.
            host_index, host = self._hosts.current()
            proxy = self._proxies.current()

    def _same_url_retry(self, job: _Job, failure: Failure) -> bool:
        """cvmfs's ``CanRetry``: transfer errors only, and not during the no-cache refetch."""
        return (not job.nocache and job.retries < self.config.max_retries
                and (failure.is_host_transfer or failure.is_proxy_transfer))

    def _next_step(self, job: _Job, failure: Failure, same_url: bool) -> Failure | None:
        """The failure as the failover sees it, or None when the request has failed for good."""
        more_hosts = not job.absolute and job.used_hosts < len(self._hosts.urls)
        try_again = False
        if failure is Failure.BAD_DATA:
            if not job.nocache:
                return failure
            failure = Failure.HOST_HTTP  # corrupt even without caches: the server's copy is bad
        if same_url or ((failure in (Failure.HOST_RESOLVE, Failure.HOST_HTTP) or failure.is_host_transfer)
                        and more_hosts):
            try_again = True
        if same_url or failure in (Failure.PROXY_RESOLVE, Failure.PROXY_HTTP) or failure.is_proxy_transfer:
            try_again = True
            if not same_url and job.used_proxies >= self._proxies.total:
                if more_hosts:
                    self._proxies.reset_for_host_failover()
                    job.used_proxies = 1
                    failure = Failure.HOST_AFTER_PROXY
                else:
                    try_again = False
        return failure if try_again else None

    def _backoff(self, job: _Job) -> None:
        job.retries += 1
        job.backoff = random.uniform(0, self.config.backoff_init) if job.backoff == 0 else job.backoff * 2
        job.backoff = min(job.backoff, self.config.backoff_max)
        with self._lock:
            self._retries += 1
        time.sleep(job.backoff)

    def _error(self, job: _Job) -> UcernvmError:
        corrupt = [a for a in job.failures if a.failure is Failure.BAD_DATA]
        if corrupt and job.expected is not None:
            where = ", ".join(dict.fromkeys(a.url.rsplit("/data/", 1)[0] for a in corrupt))
            reasons = "; ".join(dict.fromkeys(a.detail for a in corrupt if a.detail != HASH_MISMATCH))
            return corrupt_object_error(job.expected, job.object_type, where, reasons)
        details = "; ".join(
            f"{a.url}{'' if a.proxy == DIRECT else f' via {a.proxy}'}: {a.detail or a.failure.value}"  # type: ignore[union-attr]
            for a in job.failures[-8:])
        return FetchError(f"cannot fetch {job.path} from any server: {details}",
                          "check the server URLs, the proxies and that the servers are up")

    # -- configuration helpers -----------------------------------------------------------------

    def _fetch_pac(self, url: str) -> bytes:
        """A PAC file, fetched DIRECT (the proxies are not known yet), one attempt."""
        body = Memory(MAX_NAMED_BYTES)
        attempt = self._transfer.get(url, DIRECT, self.config.timeout_direct, Checked(body, None))
        if attempt.failure is not None:
            raise FetchError(attempt.detail or attempt.failure.value)  # the caller names the PAC file
        return body.value()

    def geosort(self) -> bool:
        """Order the servers (and fallback proxy groups) nearest first by the geo API of up to three
        random servers (cvmfs's ``ProbeGeo``); False, order unchanged, when none answered well."""
        hosts = sorted(self._hosts.urls, key=_host_name)  # sorted by name, as cvmfs (cache-friendly URL)
        names = [_host_name(url) for url in hosts]
        groups = self._proxies.groups
        fallback = groups[self._proxies.fallback_start:]
        if len(hosts) < 2 and len(fallback) < 2:
            return True
        if self._proxies.fallback_start == 0 and len(hosts) > 1:
            names.append(PROXY_SEPARATOR)  # all traffic goes through fallback proxies: sort from them
        names += [group[0].name or _host_name(group[0].url) for group in fallback]
        proxy = self._proxies.selected
        caching = self.uuid if proxy.url == DIRECT else (proxy.name or _host_name(proxy.url))
        for base in random.sample(hosts, min(GEO_MAX_ATTEMPTS, len(hosts))):
            url = f"{base}/api/v1.0/geo/{caching}/{','.join(names)}"
            try:
                reply = self._fetch_bytes(_Job(url, absolute=True))
            except FetchError as error:
                log.warning("geo API request failed: %s", error.message)
                continue
            order = validate_geo_reply(reply.decode("ascii", "replace"), len(names))
            if order is None:
                log.warning("invalid geo API reply from %s: %r", base, reply[:100])
                continue
            self._hosts.replace([hosts[i] for i in order if i < len(hosts)])
            first_fallback = len(names) - len(fallback)
            self._proxies.reorder_fallback([i - first_fallback for i in order if i >= first_fallback])
            log.info("geo order from %s: %s", base, ", ".join(self._hosts.urls))
            return True
        log.warning("no server answered the geo API; keeping the configured order")
        return False


def _host_name(url: str) -> str:
    """The bare host of a URL (cvmfs's ``dns::ExtractHost``), brackets kept for IPv6 literals."""
    host = urlsplit(url).hostname or url
    return f"[{host}]" if ":" in host else host


__all__ = ["Counters", "HostChain", "HttpSource", "Proxy", "validate_geo_reply"]
