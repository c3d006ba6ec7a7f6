"""The ``servers`` stage: the Stratum 1 servers and proxies to use, in order.

The fetcher is configured as µCernVM configures cvmfs2 for the OS mount (fast failover, the geo API,
proxies from the settings or PAC files), and, when asked to, the boot waits for a proxy to answer
(``cvmfs_wait_on_squid``) — with a deadline, which the original never had.
"""

from __future__ import annotations

import time

from ucernvm.boot.clock import ntp_gave_no_answer, set_clock_from_date
from ucernvm.boot.state import BootState
from ucernvm.client.client_config import FetcherConfig
from ucernvm.client.fetcher import HttpSource, ServerDate
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
    """Probe the manifest until a server answers through the proxies, for at most ``seconds``."""
    deadline = time.monotonic() + seconds
    attempt = 0
    while True:
        attempt += 1
        try:
            source.fetch_named(manifest.FILE_NAME)
            state.log.info(f"a server answered after {attempt} attempt(s) through {source.current_proxy}")
            return
        except FetchError as error:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise FetchError(
                    f"no server answered within cvmfs_wait_on_squid={seconds:g} s: {error.message}",
                    "check the proxy (cvmfs_http_proxy) and the servers, or lower cvmfs_wait_on_squid",
                ) from None
            time.sleep(min(1.0, remaining))
