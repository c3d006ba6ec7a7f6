"""The ``servers`` stage: the Stratum 1 servers and proxies to use, in order.

The fetcher is configured as µCernVM configures cvmfs2 for the OS mount (fast failover, the geo API,
proxies from the settings or PAC files), and, when asked to, the boot waits for a proxy to answer
(``cvmfs_wait_on_squid``): as µCernVM, it probes through the real proxies only (DIRECT answering says
nothing of a squid still starting), but for a bounded time, which the original never had; past it the
boot goes on with a warning, and the fetcher's failover (a later group, DIRECT, or a pinned snapshot's
cache) takes over.
"""

from __future__ import annotations

import itertools
import time

from ucernvm.boot.clock import ntp_gave_no_answer, set_clock_from_date
from ucernvm.boot.state import BootState
from ucernvm.client.client_config import FetcherConfig
from ucernvm.client.fetcher import HttpSource, ServerDate
from ucernvm.client.sinks import MAX_NAMED_BYTES, Checked, Memory
from ucernvm.client.transfer import DIRECT, Transfer
from ucernvm.config import pac_url_list, server_urls, validate
from ucernvm.cvmfs import manifest
from ucernvm.errors import FetchError

# µCernVM's cvmfs settings for the OS mount: fail over fast, never give up on a proxy for long.
_BOOT_FETCHER = {
    "timeout": 5.0,
    "timeout_direct": 5.0,
    "max_retries": 0,
    "backoff_init": 2.0,
    "backoff_max": 12.0,
    "proxy_reset_after": 86400.0,
    "use_geoapi": True,
}


def fetcher_config(config: object) -> FetcherConfig:
    return FetcherConfig(
        server_urls=tuple(server_urls(config)),
        http_proxy=config.proxy,  # type: ignore[attr-defined]
        pac_urls=pac_url_list(config.pac_urls),  # type: ignore[attr-defined]
        **_BOOT_FETCHER,  # type: ignore[arg-type]
    )


def servers_stage(state: BootState) -> None:
    config = state.config
    validate(config)
    source = HttpSource.from_config(fetcher_config(config), config.repository)
    if config.wait_on_squid:
        wait_for_proxy(state, source, config.wait_on_squid)
    if ntp_gave_no_answer(state):
        set_clock_from_date(state, server_date(source))
    state.source = source
    groups = [" | ".join(group) for group in source.proxy_groups]
    state.facts["servers"] = {"order": source.hosts, "proxy_groups": source.proxy_groups}
    state.log.info(f"servers: {', '.join(source.hosts)}")
    state.log.info(f"proxies: {'; '.join(groups)}")


def server_date(source: HttpSource) -> ServerDate | None:
    """The Date of the first server's fresh manifest (of its last response, if one came already)."""
    if source.last_date is None:
        try:
            source.fetch_named(manifest.FILE_NAME)
        except FetchError:
            return None  # the snapshot stage reports the servers' state
    return source.last_date


def wait_for_proxy(state: BootState, source: HttpSource, seconds: float) -> None:
    """Probe the manifest through each real proxy until one answers, a server after the other in each round
    (as µCernVM), for at most ``seconds``; then a warning, and the boot goes on."""
    proxies = [proxy for group in source.proxy_groups for proxy in group if proxy != DIRECT]
    if not proxies:
        state.log.info("cvmfs_wait_on_squid: no proxy to wait for (DIRECT only)")
        return
    config = source.config
    transfer = Transfer(config.low_speed_limit, config.follow_redirects)
    deadline = time.monotonic() + seconds
    last = ""
    try:
        hosts = source.hosts_in_turn
        for round_ in itertools.count(1):
            host = hosts[(round_ - 1) % len(hosts)]
            for proxy in proxies:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    state.warn(f"cvmfs_wait_on_squid={seconds:g}: no proxy answered ({last}); the boot goes on "
                               "with the proxies' failover")
                    return
                failure = _probe(transfer, f"{host}/{manifest.FILE_NAME}", proxy, min(config.timeout, remaining))
                if not failure:
                    state.log.info(f"cvmfs_wait_on_squid: {proxy} answered (round {round_})")
                    return
                last = f"{proxy}: {failure}"
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    finally:
        transfer.close()


def _probe(transfer: Transfer, url: str, proxy: str, timeout: float) -> str:
    """Why ``url`` did not come through ``proxy`` within ``timeout``; empty when it did."""
    tried = transfer.get(url, proxy, timeout, Checked(Memory(MAX_NAMED_BYTES), None))
    return "" if tried.failure is None else tried.detail or tried.failure.value
