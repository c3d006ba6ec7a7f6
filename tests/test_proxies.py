"""The proxy chain: groups, members, DIRECT, fallback groups, burning, resets (cvmfs's rules)."""

from __future__ import annotations

import random
import threading

import pytest

from ucernvm.client import logbuffer
from ucernvm.client.client_config import FetcherConfig, load_config
from ucernvm.client.fetcher import HttpSource
from ucernvm.client.proxies import Proxy, ProxyChain, expand_member, parse_proxy_list, resolve_addresses
from ucernvm.errors import ConfigError

A, B, C = "http://127.0.0.1:3128", "http://127.0.0.2:3128", "http://127.0.0.3:3128"
SETTING_FIELDS = {"CVMFS_HTTP_PROXY": "http_proxy", "CVMFS_FALLBACK_PROXY": "fallback_proxy"}


class Clock:
    """A clock the test moves by hand (the chain's notion of "now")."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def chain(text: str, fallback: str = "", reset_after: float = 300, clock: Clock | None = None,
          seed: int = 0) -> ProxyChain:
    return ProxyChain(parse_proxy_list(text), parse_proxy_list(fallback, "CVMFS_FALLBACK_PROXY"), reset_after,
                      clock=clock or Clock(), rng=random.Random(seed))


def test_parse_groups_members_and_default_scheme() -> None:
    assert parse_proxy_list("127.0.0.1:3128|http://127.0.0.2:3128; DIRECT") == [[A, B], ["DIRECT"]]
    assert parse_proxy_list("") == [] and parse_proxy_list(";;") == []
    assert parse_proxy_list("auto;DIRECT") == [["auto"], ["DIRECT"]]


@pytest.mark.parametrize("text", ["squid", "http://:3128", "ftp://squid:21", "squid:port", "squid:99999"])
def test_bad_member_names_the_key(text: str) -> None:
    with pytest.raises(ConfigError, match="CVMFS_FALLBACK_PROXY: bad proxy"):
        parse_proxy_list(text, "CVMFS_FALLBACK_PROXY")


def test_no_proxies_means_direct() -> None:
    proxies = chain("")
    assert proxies.current().url == "DIRECT" and proxies.total == 1


def test_fallback_groups_come_last_and_remove_direct() -> None:
    proxies = chain(f"{A}|DIRECT;DIRECT", fallback=f"{B};DIRECT")
    assert [[p.url for p in group] for group in proxies.groups] == [[A], [B]]
    assert proxies.fallback_start == 1


def test_burned_member_then_next_group_then_around() -> None:
    proxies = chain(f"{A}|{B};{C}")
    first = proxies.current()
    proxies.fail(first)
    second = proxies.current()
    assert {first.url, second.url} == {A, B} and proxies.current_group == 0
    proxies.fail(second)
    assert proxies.current().url == C and proxies.current_group == 1
    proxies.fail(proxies.current())
    assert proxies.current_group == 0 and proxies.current().url in (A, B)
    assert proxies.failovers == 3


def test_failing_a_proxy_that_is_not_live_changes_nothing() -> None:
    """Another request already burned it, or it belongs to another group."""
    proxies = chain(f"{A}|{B};{C}")
    first = proxies.current()
    proxies.fail(first)
    second = proxies.current()
    proxies.fail(first)
    assert proxies.current() is second and proxies.failovers == 1


def test_back_to_the_first_group_after_reset_time() -> None:
    clock = Clock()
    proxies = chain(f"{A};{B}", reset_after=10, clock=clock)
    proxies.fail(proxies.current())
    assert proxies.current().url == B
    clock.now += 10
    assert proxies.current().url == B  # not yet: strictly after reset_after seconds
    clock.now += 0.5
    assert proxies.current().url == A


def test_burned_members_come_back_after_reset_time() -> None:
    clock = Clock()
    proxies = chain(f"{A}|{B};{C}", reset_after=10, clock=clock)
    proxies.fail(Proxy(A))
    proxies.fail(Proxy(A))  # already burned: nothing happens
    clock.now += 11
    proxies.current()  # the group is rebalanced: nothing is burned any more
    proxies.fail(Proxy(B))
    assert proxies.current().url == A and proxies.current_group == 0


def test_no_reset_when_reset_after_is_zero() -> None:
    clock = Clock()
    proxies = chain(f"{A};{B}", reset_after=0, clock=clock)
    proxies.fail(proxies.current())
    clock.now += 1e6
    assert proxies.current().url == B


def test_reset_for_host_failover() -> None:
    proxies = chain(f"{A};{B}")
    proxies.fail(proxies.current())
    proxies.reset_for_host_failover()
    assert proxies.current().url == A and proxies.current_group == 0


def test_every_switch_of_the_proxy_in_use_is_a_warning_with_its_reason() -> None:
    """As cvmfs's "switching proxy from X to Y": kept for user.logbuffer, as a server switch is."""
    clock = Clock()
    proxies = chain(f"{A};{B}", reset_after=10, clock=clock)
    proxies.fail(proxies.current(), "cannot connect: Connection refused")
    clock.now += 11
    assert proxies.current().url == A
    lonely = chain(C)
    lonely.fail(lonely.current(), "HTTP 502")  # burned, and in use again: no switch
    lines = logbuffer.recent().splitlines()[-2:]
    assert lines[0].endswith(f"] switching proxy from {A} to {B} (cannot connect: Connection refused)")
    assert lines[1].endswith(f"] switching proxy from {B} to {A} (reset after 10 s)")


def test_members_are_chosen_at_random_for_load_balancing() -> None:
    chosen = {chain(f"{A}|{B}|{C}", seed=seed).current().url for seed in range(40)}
    assert chosen == {A, B, C}


def test_names_expand_to_one_member_per_address() -> None:
    expanded = expand_member("http://squid.example:3128", lambda host: ["192.0.2.1", "2001:db8::1"])
    assert [p.url for p in expanded] == ["http://192.0.2.1:3128", "http://[2001:db8::1]:3128"]
    assert {p.name for p in expanded} == {"squid.example"}
    assert [p.url for p in expand_member("http://nowhere.invalid:3128", lambda host: [])] == ["http://nowhere.invalid:3128"]


def test_localhost_resolves_to_ipv4_first() -> None:
    assert resolve_addresses("localhost")[0] == "127.0.0.1"
    assert "127.0.0.1" in ProxyChain([["http://localhost:3128"]]).current().url


def test_reorder_fallback_groups() -> None:
    proxies = chain(A, fallback=f"{B};{C}")
    proxies.reorder_fallback([1, 0])
    assert [group[0].url for group in proxies.groups] == [A, C, B]


def test_concurrent_failures_keep_the_chain_consistent() -> None:
    members = "|".join(f"http://127.0.0.{i}:3128" for i in range(1, 9))
    proxies = chain(f"{members};DIRECT", reset_after=0)

    def worker() -> None:
        for _ in range(200):
            proxy = proxies.current()
            if proxy.url != "DIRECT":
                proxies.fail(proxy)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert proxies.failovers == 8 and proxies.current().url == "DIRECT"


def test_describe_marks_the_member_in_use() -> None:
    proxies = chain(f"{A};DIRECT")
    assert proxies.describe() == f"[{A}]; DIRECT"


@pytest.mark.parametrize(("key", "text"), [("CVMFS_HTTP_PROXY", f"auto|{A};DIRECT"),
                                           ("CVMFS_FALLBACK_PROXY", "auto"), ("CVMFS_FALLBACK_PROXY", f"{A};auto")])
def test_auto_only_as_a_group_of_its_own_of_the_http_proxy(key: str, text: str) -> None:
    """Anywhere else "auto" would be taken for a proxy's name, and a request through it fail without failover."""
    with pytest.raises(ConfigError, match=f"{key}: 'auto' is a proxy group of its own"):
        load_config("test.cern.ch", config_dir=None,
                    overrides={"CVMFS_SERVER_URL": "http://127.0.0.1:8000/cvmfs/@fqrn@", key: text})
    with pytest.raises(ConfigError, match=f"{key}: 'auto' is a proxy group of its own"):
        HttpSource(["http://127.0.0.1:8000/cvmfs/test.cern.ch"], FetcherConfig(**{SETTING_FIELDS[key]: text}))
