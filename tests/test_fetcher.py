"""The HTTP fetcher against real servers: the stratum server, the fault-injecting server, squid.

Every scenario of cvmfs's failover: dead servers, HTTP errors, timeouts, stalls, redirects,
corrupt and truncated objects, proxy groups and DIRECT, proxy errors, geo ordering, resets,
squid caching a corrupt object, many threads.
"""

from __future__ import annotations

import random
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from faults import Fault, FaultServer
from helpers import run_cli
from squid import Squid, squid  # noqa: F401  (fixture)
from ucernvm.client.client_config import FetcherConfig
from ucernvm.client import fetcher
from ucernvm.client.fetcher import HttpSource, validate_geo_reply
from ucernvm.client.repository import Repository
from ucernvm.client.sinks import Memory
from ucernvm.cvmfs.hashing import ContentHash, ObjectType
from ucernvm.cvmfs.publisher import Publisher, PublishOptions
from ucernvm.cvmfs.trust import load_master_keys
from ucernvm.errors import ConfigError, FetchError, VerificationError
from ucernvm.server import StratumServer

FQRN = "test.cern.ch"
FAST = dict(timeout=0.4, timeout_direct=0.4, backoff_init=0.01, backoff_max=0.02)


@dataclass(frozen=True)
class StoredObject:
    content_hash: ContentHash
    object_type: ObjectType
    data: bytes

    @property
    def path(self) -> str:
        return self.content_hash.object_path(self.object_type)


@dataclass(frozen=True)
class Published:
    root: Path  # holds <fqrn>/, as a stratum server serves it
    keys: Path
    objects: list[StoredObject]

    @property
    def files(self) -> list[StoredObject]:
        return [o for o in self.objects if o.object_type is ObjectType.FILE and len(o.data) > 2000]


@pytest.fixture(scope="session")
def published(tmp_path_factory: pytest.TempPathFactory, keys_dir: Path) -> Published:
    tree = tmp_path_factory.mktemp("tree")
    rng = random.Random(7)
    for i in range(24):
        (tree / f"file{i:02}").write_bytes(rng.randbytes(3000 + 997 * i))
    (tree / "etc").mkdir()
    (tree / "etc" / "hostname").write_text("cernvm\n")
    root = tmp_path_factory.mktemp("stratum")
    Publisher(str(root / FQRN), FQRN, str(keys_dir), PublishOptions(workers=1)).publish(str(tree))
    objects = []
    for path in sorted((root / FQRN / "data").glob("??/*")):
        name = path.parent.name + path.name
        suffix = name[-1] if name[-1].isupper() else ""
        objects.append(StoredObject(ContentHash.parse(name.removesuffix(suffix)), ObjectType(suffix), path.read_bytes()))
    return Published(root, keys_dir, objects)


def repo_url(server: FaultServer | StratumServer) -> str:
    return f"{server.url}/cvmfs/{FQRN}"


def dead_url() -> str:
    """A server URL on a port where nothing listens (connection refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}/cvmfs/{FQRN}"


def source(urls: list[str], **settings: object) -> HttpSource:
    return HttpSource(urls, FetcherConfig(**{**FAST, **settings}))  # type: ignore[arg-type]


def fetch(src: HttpSource, obj: StoredObject) -> bytes:
    """The object's stored bytes as the fetcher streams them, every failed attempt's pieces forgotten."""
    body = Memory()
    src.fetch_object(obj.content_hash, obj.object_type, body)
    return body.value()


@pytest.fixture
def servers(published: Published):
    """Two fault servers over the published repository."""
    with FaultServer(published.root) as one, FaultServer(published.root) as two:
        yield one, two


# --- plain operation ------------------------------------------------------------------------------


def test_every_object_verified_and_named_files(published: Published) -> None:
    with StratumServer(published.root) as server:
        src = HttpSource([repo_url(server)])
        for obj in published.objects:
            assert fetch(src, obj) == obj.data
        assert src.fetch_named(".cvmfspublished") == (published.root / FQRN / ".cvmfspublished").read_bytes()
        assert src.counters.requests == len(published.objects) + 1
        assert src.counters.host_failovers == src.counters.proxy_failovers == 0


def test_repository_reads_through_the_fetcher(published: Published) -> None:
    with StratumServer(published.root) as server:
        src = HttpSource.from_config(FetcherConfig(server_urls=(f"{server.url}/cvmfs/@fqrn@",)), FQRN)
        repository = Repository(src, FQRN, load_master_keys(published.keys / f"{FQRN}.pub"))
        assert repository.read("/etc/hostname") == b"cernvm\n"
        assert src.current_host == repo_url(server)


def test_repository_asks_for_whitelist_and_manifest_together(published: Published, servers) -> None:
    """One round trip of waiting, not two: the server answers each of the two only once the other's
    request has arrived as well (a client asking in turn gets 503s)."""
    one, _ = servers
    one.inject(".cvmfspublished", Fault.wait_for(".cvmfswhitelist"))
    one.inject(".cvmfswhitelist", Fault.wait_for(".cvmfspublished"))
    repository = Repository(HttpSource([repo_url(one)]), FQRN, load_master_keys(published.keys / f"{FQRN}.pub"))
    assert repository.read("/etc/hostname") == b"cernvm\n"
    assert one.count(".cvmfspublished") == one.count(".cvmfswhitelist") == 1  # each answered the first time


def test_request_headers_as_cvmfs(published: Published, servers) -> None:
    one, _ = servers
    src = HttpSource([repo_url(one)])
    fetch(src, published.files[0])
    src.fetch_named(".cvmfswhitelist")
    obj_request, named_request = one.requests
    assert obj_request.headers["user-agent"].startswith("cvmfs ")
    assert obj_request.headers["connection"].lower() == "keep-alive"
    for request in (obj_request, named_request):  # manifests too: cvmfs lets a squid keep them for their max-age
        assert request.headers["pragma"] == "" and "cache-control" not in request.headers


def test_connections_are_reused(published: Published, servers) -> None:
    one, _ = servers
    src = HttpSource([repo_url(one)])
    for obj in published.files[:5]:
        fetch(src, obj)
    assert one.count() == 5 and one.connections == 1


# --- server failover ------------------------------------------------------------------------------


def test_first_server_dead_next_one(published: Published, servers) -> None:
    _, good = servers
    src = source([dead_url(), repo_url(good)])
    obj = published.files[0]
    assert fetch(src, obj) == obj.data
    assert src.current_host == repo_url(good)
    counters = src.counters
    assert (counters.requests, counters.retries, counters.host_failovers) == (3, 1, 1)  # one retry, then failover


@pytest.mark.parametrize("status", [404, 400, 500, 503])
def test_http_error_goes_to_next_server(published: Published, servers, status: int) -> None:
    bad, good = servers
    bad.inject("/data/", Fault.status_code(status))
    src = source([repo_url(bad), repo_url(good)])
    obj = published.files[1]
    assert fetch(src, obj) == obj.data
    assert bad.count() == 1  # HTTP errors are not retried on the same server
    assert src.current_host == repo_url(good) and src.counters.host_failovers == 1


def test_other_status_without_proxy_is_a_server_error(published: Published, servers) -> None:
    bad, good = servers
    bad.inject("/data/", Fault.status_code(403))
    src = source([repo_url(bad), repo_url(good)])
    assert fetch(src, published.files[1]) == published.files[1].data
    assert src.current_host == repo_url(good)


def test_429_is_retried_then_next_server(published: Published, servers) -> None:
    bad, good = servers
    bad.inject("/data/", Fault.status_code(429))
    src = source([repo_url(bad), repo_url(good)], max_retries=2)
    assert fetch(src, published.files[2]) == published.files[2].data
    assert bad.count() == 3 and src.counters.retries == 2


def test_timeout_before_headers(published: Published, servers) -> None:
    slow, good = servers
    slow.inject("/data/", Fault.hang())
    src = source([repo_url(slow), repo_url(good)], timeout_direct=0.3, max_retries=0)
    started = time.monotonic()
    assert fetch(src, published.files[3]) == published.files[3].data
    assert 0.3 <= time.monotonic() - started < 2
    assert src.current_host == repo_url(good)


def test_stall_in_the_middle_of_the_body(published: Published, servers) -> None:
    slow, good = servers
    slow.inject("/data/", Fault.stall())
    src = source([repo_url(slow), repo_url(good)], timeout_direct=0.3, max_retries=0)
    started = time.monotonic()
    assert fetch(src, published.files[4]) == published.files[4].data
    assert time.monotonic() - started < 2
    assert src.counters.bytes > len(published.files[4].data)  # half a body came in before the stall


def test_transfer_below_the_low_speed_limit_is_aborted(published: Published, servers) -> None:
    slow, good = servers
    slow.inject("/data/", Fault.trickle())  # about 200 bytes/s: the whole object would take ~20 s
    src = source([repo_url(slow), repo_url(good)], timeout_direct=0.3, max_retries=0, low_speed_limit=1024)
    started = time.monotonic()
    assert fetch(src, published.files[-1]) == published.files[-1].data
    assert time.monotonic() - started < 2


def test_trickle_above_the_limit_is_accepted(published: Published, servers) -> None:
    slow, _ = servers
    slow.inject("/data/", Fault.trickle(4000))
    obj = min(published.files, key=lambda o: len(o.data))
    src = source([repo_url(slow)], timeout_direct=0.3, max_retries=0, low_speed_limit=1024)
    assert fetch(src, obj) == obj.data


def test_truncated_object_goes_to_next_server(published: Published, servers) -> None:
    short, good = servers
    short.inject("/data/", Fault.truncate())
    src = source([repo_url(short), repo_url(good)])
    assert fetch(src, published.files[5]) == published.files[5].data
    assert short.count() == 2  # a short transfer is retried once on the same URL, then failed over
    assert src.current_host == repo_url(good)


def test_all_servers_down(published: Published) -> None:
    src = source([dead_url(), dead_url()])
    with pytest.raises(FetchError, match="cannot fetch data/"):
        fetch(src, published.files[0])
    # the same-URL retry budget is per request (cvmfs's JobInfo), spent on the first server
    assert (src.counters.requests, src.counters.retries) == (3, 1)


def test_a_named_file_without_end_is_refused(published: Published, servers, monkeypatch: pytest.MonkeyPatch) -> None:
    """A manifest larger than any real one (here: than 100 bytes) is not read on into memory."""
    monkeypatch.setattr(fetcher, "MAX_NAMED_BYTES", 100)
    one, two = servers
    src = source([repo_url(one), repo_url(two)])
    with pytest.raises(FetchError, match="more than the 100 bytes"):
        src.fetch_named(".cvmfspublished")
    assert one.count(".cvmfspublished") == two.count(".cvmfspublished") == 2  # refetched without caches, then the next


# --- redirects ------------------------------------------------------------------------------------


def test_redirect_not_followed_by_default(published: Published, servers) -> None:
    redirecting, target = servers
    obj = published.files[6]
    redirecting.inject("/data/", Fault.redirect(302, f"{repo_url(target)}/{obj.path}"))
    with pytest.raises(FetchError, match="HTTP 302"):
        fetch(source([repo_url(redirecting)]), obj)
    assert target.count() == 0


@pytest.mark.parametrize("status", [301, 302, 303, 307])
def test_redirect_followed_when_enabled(published: Published, servers, status: int) -> None:
    redirecting, target = servers
    obj = published.files[6]
    redirecting.inject("/data/", Fault.redirect(status, f"{repo_url(target)}/{obj.path}"))
    src = source([repo_url(redirecting)], follow_redirects=True)
    assert fetch(src, obj) == obj.data
    assert target.count() == 1


def test_redirect_loop_gives_up(published: Published, servers) -> None:
    looping, _ = servers
    obj = published.files[6]
    looping.inject("/data/", Fault.redirect(302, f"/cvmfs/{FQRN}/{obj.path}"))
    src = source([repo_url(looping)], follow_redirects=True, max_retries=0)
    with pytest.raises(FetchError, match="more than 4 redirects"):
        fetch(src, obj)
    assert looping.count() == 5


# --- integrity ------------------------------------------------------------------------------------


def test_corrupt_once_is_fixed_by_the_no_cache_refetch(published: Published, servers) -> None:
    flaky, _ = servers
    flaky.inject("/data/", Fault.corrupt(), times=1)
    src = source([repo_url(flaky)])
    assert fetch(src, published.files[7]) == published.files[7].data
    first, second = flaky.requests
    assert "cache-control" not in first.headers and second.headers["cache-control"] == "no-cache"
    assert src.counters.nocache_retries == 1 and src.counters.host_failovers == 0


def test_corrupt_on_one_server_good_on_the_next(published: Published, servers) -> None:
    bad, good = servers
    bad.inject("/data/", Fault.corrupt())
    src = source([repo_url(bad), repo_url(good)])
    assert fetch(src, published.files[8]) == published.files[8].data
    assert bad.count() == 2 and src.current_host == repo_url(good)


def test_corrupt_everywhere_is_a_verification_error(published: Published, servers) -> None:
    for server in servers:
        server.inject("/data/", Fault.corrupt())
    src = source([repo_url(server) for server in servers])
    with pytest.raises(VerificationError, match="does not match its content hash"):
        fetch(src, published.files[9])
    assert [server.count() for server in servers] == [2, 2]


# --- resets ---------------------------------------------------------------------------------------


def test_first_server_used_again_after_host_reset(published: Published, servers) -> None:
    first, second = servers
    a, b, c = published.files[10:13]
    first.inject(a.path, Fault.status_code(404), times=1)
    src = source([repo_url(first), repo_url(second)], host_reset_after=0.3)
    assert fetch(src, a) == a.data and src.current_host == repo_url(second)
    assert fetch(src, b) == b.data and first.count(b.path) == 0
    time.sleep(0.35)
    assert fetch(src, c) == c.data and first.count(c.path) == 1
    assert src.current_host == repo_url(first)


def test_no_host_reset_when_zero(published: Published, servers) -> None:
    first, second = servers
    a, b = published.files[10:12]
    first.inject(a.path, Fault.status_code(404), times=1)
    src = source([repo_url(first), repo_url(second)], host_reset_after=0)
    fetch(src, a)
    time.sleep(0.05)
    fetch(src, b)
    assert first.count(b.path) == 0


# --- proxies --------------------------------------------------------------------------------------


def test_proxy_group_failover_then_direct(published: Published, servers) -> None:
    _, good = servers
    dead = [dead_url().rsplit("/cvmfs/", 1)[0] for _ in range(2)]
    src = source([repo_url(good)], http_proxy=f"{dead[0]}|{dead[1]};DIRECT")
    assert fetch(src, published.files[0]) == published.files[0].data
    assert src.current_proxy == "DIRECT"
    counters = src.counters
    # the first dead proxy: an attempt and the request's one retry, then burned; the second:
    # one attempt (the retry budget is per request, as cvmfs's JobInfo), burned; then DIRECT
    assert (counters.requests, counters.retries, counters.proxy_failovers) == (4, 1, 2)
    assert counters.host_failovers == 0


@pytest.mark.parametrize("header", [{"X_Squid_Error": "ERR_CONNECT_FAIL 111"},
                                    {"Proxy_Status": "squid; error=connection_refused"}])
def test_error_page_of_the_proxy_burns_the_proxy(published: Published, servers, header: dict) -> None:
    proxy, good = servers
    proxy.inject("", Fault.status_code(503, **header))
    src = source([repo_url(good)], http_proxy=f"{proxy.url};DIRECT")
    assert fetch(src, published.files[0]) == published.files[0].data
    assert proxy.count() == 1 and src.current_proxy == "DIRECT"
    assert src.counters.host_failovers == 0


def test_server_error_through_a_proxy_is_a_server_error(published: Published, servers) -> None:
    proxy, _ = servers
    with StratumServer(published.root) as other:
        proxy.inject(f":{servers[1].port}/", Fault.status_code(503))  # the first server fails behind the proxy
        src = source([repo_url(servers[1]), repo_url(other)], http_proxy=proxy.url)
        assert fetch(src, published.files[0]) == published.files[0].data
        assert src.current_proxy == proxy.url and src.current_host == repo_url(other)


def test_every_proxy_failed_moves_to_the_next_server(published: Published, servers) -> None:
    proxy, first = servers
    with StratumServer(published.root) as second:
        proxy.inject(f":{first.port}/", Fault.status_code(502, X_Squid_Error="ERR_READ_ERROR 0"))
        src = source([repo_url(first), repo_url(second)], http_proxy=proxy.url)
        assert fetch(src, published.files[0]) == published.files[0].data
        assert src.current_host == repo_url(second) and src.current_proxy == proxy.url
        assert first.count() == 0


def test_first_proxy_group_used_again_after_proxy_reset(published: Published, servers) -> None:
    proxy, good = servers
    proxy.inject("", Fault.status_code(502, X_Squid_Error="ERR_CONNECT_FAIL 111"), times=1)
    src = source([repo_url(good)], http_proxy=f"{proxy.url};DIRECT", proxy_reset_after=0.3)
    a, b = published.files[:2]
    assert fetch(src, a) == a.data and src.current_proxy == "DIRECT"
    time.sleep(0.35)
    assert fetch(src, b) == b.data
    assert proxy.count(b.path) == 1 and src.current_proxy == proxy.url


def test_proxy_and_direct_timeouts_are_separate(published: Published, servers) -> None:
    proxy, good = servers
    proxy.inject("", Fault.hang())
    src = source([repo_url(good)], http_proxy=f"{proxy.url};DIRECT", timeout=0.2, timeout_direct=5, max_retries=0)
    started = time.monotonic()
    assert fetch(src, published.files[0]) == published.files[0].data
    assert time.monotonic() - started < 1.5 and src.current_proxy == "DIRECT"


def test_fallback_proxy_replaces_direct(published: Published, servers) -> None:
    proxy, good = servers
    src = source([repo_url(good)], http_proxy="DIRECT", fallback_proxy=proxy.url)
    assert src.proxy_groups == [[proxy.url]]
    assert fetch(src, published.files[0]) == published.files[0].data
    assert proxy.count() == 1


# --- geo API --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "count", "order"),
    [("2,1,3\n", 3, [1, 0, 2]), ("1", 1, [0]), ("3,1,2", 3, [2, 0, 1]), ("1,2\n3", 2, None),
     ("1,2,3\n", 2, None), ("1,1,2\n", 3, None), ("0,1,2\n", 3, None), ("1, 2,3\n", 3, None),
     ("", 0, None), ("1,,2\n", 3, None), ("2,3,4\n", 3, None), ("a,b\n", 2, None)],
)
def test_validate_geo_reply(reply: str, count: int, order: list[int] | None) -> None:
    assert validate_geo_reply(reply, count) == order


@pytest.fixture
def spread_servers(published: Published):
    """Stratum servers on three loopback addresses, listed farthest first from 127.0.0.1."""
    with StratumServer(published.root, bind="127.1.2.3") as far, \
            StratumServer(published.root, bind="127.0.0.2") as near, \
            StratumServer(published.root, bind="127.0.0.1") as local:
        yield [repo_url(far), repo_url(near), repo_url(local)]


def test_geo_api_orders_the_servers(published: Published, spread_servers: list[str]) -> None:
    # Without a geo database the server sorts by the longest address prefix shared with the
    # client (127.0.0.1): 127.0.0.1 (32 bits), 127.0.0.2 (30), 127.1.2.3 (15).
    config = FetcherConfig(server_urls=tuple(spread_servers), use_geoapi=True, **FAST)
    src = HttpSource.from_config(config, FQRN)
    assert src.hosts == list(reversed(spread_servers))
    assert fetch(src, published.files[0]) == published.files[0].data


def test_geo_api_asks_another_server_when_one_is_down(spread_servers: list[str]) -> None:
    urls = [dead_url(), *spread_servers]
    src = HttpSource.from_config(FetcherConfig(server_urls=tuple(urls), use_geoapi=True, **FAST), FQRN)
    # Up to three servers are asked, so one that is down costs nothing; it is on 127.0.0.1 too
    # and sorts next to the local one (the geo API sees host names, not ports).
    assert src.hosts == [urls[0], spread_servers[2], spread_servers[1], spread_servers[0]]


def test_geo_api_failure_keeps_the_order(servers) -> None:
    one, two = servers
    for server in servers:
        server.inject("/api/", Fault.status_code(400))
    urls = (repo_url(two), repo_url(one))
    src = HttpSource.from_config(FetcherConfig(server_urls=urls, use_geoapi=True, **FAST), FQRN)
    assert src.hosts == list(urls)


def test_invalid_geo_reply_keeps_the_order(servers) -> None:
    one, two = servers
    for server in servers:
        server.inject("/api/", Fault.status_code(200))  # "injected error\n" is no permutation
    src = HttpSource([repo_url(two), repo_url(one)], FetcherConfig(**FAST))
    assert src.geosort() is False and src.hosts == [repo_url(two), repo_url(one)]


def test_max_servers_cuts_after_geo_sort(spread_servers: list[str]) -> None:
    config = FetcherConfig(server_urls=tuple(spread_servers), use_geoapi=True, max_servers=2, **FAST)
    assert HttpSource.from_config(config, FQRN).hosts == list(reversed(spread_servers))[:2]


# --- squid ----------------------------------------------------------------------------------------


def test_squid_caches_objects(published: Published, servers, squid: Squid) -> None:
    origin, _ = servers
    src = source([repo_url(origin)], http_proxy=squid.url)
    obj = published.files[14]
    assert fetch(src, obj) == obj.data
    assert fetch(src, obj) == obj.data
    assert origin.count() == 1 and src.current_proxy == squid.url


def test_squid_answers_every_client_after_the_first_from_its_copy_of_the_manifest(published: Published, servers,
                                                                                     squid: Squid) -> None:
    """A fleet booting at once asks the Stratum 1 for the manifest and whitelist once per max-age (61 s)."""
    origin, _ = servers
    for _ in range(3):
        repository = Repository(source([repo_url(origin)], http_proxy=squid.url), FQRN,
                                load_master_keys(published.keys / f"{FQRN}.pub"))
        assert repository.read("/etc/hostname") == b"cernvm\n"
    assert origin.count(".cvmfspublished") == origin.count(".cvmfswhitelist") == 1


def test_squid_cached_corrupt_object_is_refetched_with_no_cache(published: Published, servers, squid: Squid) -> None:
    origin, _ = servers
    obj = published.files[15]
    origin.inject(obj.path, Fault.corrupt(), times=1)
    src = source([repo_url(origin)], http_proxy=squid.url)
    assert fetch(src, obj) == obj.data
    assert origin.count() == 2  # squid passed the no-cache refetch through to the server
    assert origin.requests[1].headers.get("cache-control") == "no-cache"
    # squid now holds the good copy: a new client gets it without asking the server
    assert fetch(source([repo_url(origin)], http_proxy=squid.url), obj) == obj.data
    assert origin.count() == 2


def test_squid_error_for_a_dead_server_fails_over(published: Published, servers, squid: Squid) -> None:
    _, good = servers
    src = source([dead_url(), repo_url(good)], http_proxy=squid.url)
    assert fetch(src, published.files[16]) == published.files[16].data
    assert src.current_host == repo_url(good) and src.current_proxy == squid.url


def test_dead_proxy_then_squid(published: Published, servers, squid: Squid) -> None:
    _, good = servers
    dead = dead_url().rsplit("/cvmfs/", 1)[0]
    src = source([repo_url(good)], http_proxy=f"{dead};{squid.url}")
    assert fetch(src, published.files[17]) == published.files[17].data
    assert src.current_proxy == squid.url


# --- threads --------------------------------------------------------------------------------------


def test_many_threads_get_correct_bytes(published: Published, servers, squid: Squid) -> None:
    flaky, good = servers
    flaky.inject("/data/", Fault.corrupt(), times=20)
    flaky.inject("/data/", Fault.truncate(), times=10)
    src = source([repo_url(flaky), repo_url(good)], http_proxy=f"{squid.url}|DIRECT", max_retries=1)
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        objects = list(published.objects)
        random.Random(seed).shuffle(objects)
        try:
            for obj in objects:
                assert fetch(src, obj) == obj.data
        except BaseException as error:  # reported below, in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors[0]
    assert src.counters.requests >= 8 * len(published.objects)


# --- observability --------------------------------------------------------------------------------


def test_describe_and_counters(published: Published, servers) -> None:
    one, two = servers
    src = source([repo_url(one), repo_url(two)], http_proxy="DIRECT")
    fetch(src, published.files[0])
    text = src.describe()
    assert f"[{repo_url(one)}]" in text and "[DIRECT]" in text and "1 requests" in text
    assert src.counters.bytes == len(published.files[0].data)


def test_backoff_doubles_and_is_capped(published: Published, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("ucernvm.client.fetcher.random.uniform", lambda low, high: high)
    src = source([dead_url()], max_retries=2, backoff_init=0.2, backoff_max=0.25)
    started = time.monotonic()
    with pytest.raises(FetchError):
        fetch(src, published.files[0])
    elapsed = time.monotonic() - started
    assert src.counters.retries == 2 and 0.45 <= elapsed < 1.5  # 0.2 s, then 0.4 capped to 0.25 s


def test_constructor_checks_urls() -> None:
    with pytest.raises(ConfigError, match="not an HTTP URL"):
        HttpSource(["ftp://example/x"])
    with pytest.raises(ConfigError, match="no server URL"):
        HttpSource([])
    with pytest.raises(ConfigError, match="CVMFS_SERVER_URL is not set"):
        HttpSource.from_config(FetcherConfig(), FQRN)


@pytest.mark.parametrize("bad", ["http://127.0.0.1:abc/cvmfs/@fqrn@", "http://127.0.0.1:99999/cvmfs/@fqrn@",
                                 "http://[::1/cvmfs/@fqrn@", "http:///cvmfs/@fqrn@"])
def test_malformed_server_url_is_a_config_error_before_any_request(bad: str) -> None:
    """Not a traceback once the failover reaches it: the setting and the URL are named at once."""
    with pytest.raises(ConfigError, match=r"CVMFS_SERVER_URL: bad server URL 'http://"):
        HttpSource.from_config(FetcherConfig(server_urls=(dead_url(), bad), **FAST), FQRN)  # type: ignore[arg-type]
    ipv6 = HttpSource.from_config(FetcherConfig(server_urls=("http://[::1]:8000/cvmfs/@fqrn@/",)), FQRN)
    assert ipv6.hosts == [f"http://[::1]:8000/cvmfs/{FQRN}"]


# --- the repo command -----------------------------------------------------------------------------


def test_repo_command_through_a_proxy(published: Published, servers) -> None:
    proxy, origin = servers
    result = run_cli("repo", "cat", repo_url(origin), "/etc/hostname", "--key", published.keys,
                     "--proxy", f"{proxy.url};DIRECT", check=True)
    assert result.stdout == b"cernvm\n"
    assert proxy.count() > 0 and origin.count() == 0


def test_repo_command_options_and_config_file(published: Published, servers, tmp_path: Path) -> None:
    proxy, origin = servers
    config = tmp_path / "client.conf"
    config.write_text(f'CVMFS_HTTP_PROXY="{proxy.url}"\nCVMFS_TIMEOUT=2\n')
    result = run_cli("repo", "cat", repo_url(origin), "/etc/hostname", "--key", published.keys,
                     "--config", config, "-o", "CVMFS_MAX_RETRIES=0", check=True)
    assert result.stdout == b"cernvm\n" and proxy.count() > 0
    bad = run_cli("repo", "ls", repo_url(origin), "--key", published.keys, "-o", "CVMFS_TIMEOUT=soon")
    assert bad.returncode != 0 and b"CVMFS_TIMEOUT" in bad.stderr and b"Traceback" not in bad.stderr


@pytest.mark.parametrize(("servers", "proxy", "loaded"), [
    ("http://127.0.0.1:1/cvmfs/@fqrn@", "DIRECT", False),
    ("http://127.0.0.1:1/cvmfs/@fqrn@;https://127.0.0.1:2/cvmfs/@fqrn@", "DIRECT", True),
    ("http://127.0.0.1:1/cvmfs/@fqrn@", "http://127.0.0.1:3;https://127.0.0.1:4", True),
], ids=["plain", "an https server", "an https proxy"])
def test_what_later_requests_need_is_loaded_before_the_root_is_freed(servers: str, proxy: str, loaded: bool) -> None:
    # A fresh interpreter: whether urllib3 is imported is the point (the boot's daemon can import nothing later).
    script = f"""
import sys
from ucernvm.client.client_config import FetcherConfig
from ucernvm.client.fetcher import HttpSource
source = HttpSource({servers!r}.split(";"), FetcherConfig(http_proxy={proxy!r}), fqrn="test.cern.ch")
before = "urllib3" in sys.modules
source.load_for_later()
print(before, "urllib3" in sys.modules)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", str(loaded)]
