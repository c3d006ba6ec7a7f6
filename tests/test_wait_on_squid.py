"""cvmfs_wait_on_squid: the boot waits for a real proxy (never for DIRECT), and past its time goes on."""

from __future__ import annotations

import io
import socket
import time
from pathlib import Path

from squid import Squid, squid  # noqa: F401  (fixture)
from test_snapshot import boot, pin, served  # noqa: F401  (fixture)


def refusing_proxy() -> str:
    """A proxy that is not up yet: nothing listens on its port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


def test_a_proxy_not_up_is_waited_for_though_direct_answers_then_the_boot_goes_on(tmp_path: Path, keys_dir: Path,
                                                                                      served) -> None:
    url, hashes = served
    started = time.monotonic()
    state = boot(tmp_path, keys_dir, url, proxy=f"{refusing_proxy()};DIRECT", wait_on_squid=1.5)
    assert time.monotonic() - started >= 1.5
    assert [w for w in state.warnings if w.startswith("cvmfs_wait_on_squid=1.5: no proxy answered")]
    assert pin(state)[0] == hashes["v2"]  # DIRECT, through the failover


def test_a_squid_that_answers_ends_the_wait(tmp_path: Path, keys_dir: Path, served, squid: Squid) -> None:
    url, _ = served
    log = io.StringIO()
    started = time.monotonic()
    state = boot(tmp_path, keys_dir, url, log, proxy=f"{squid.url};DIRECT", wait_on_squid=30)
    assert time.monotonic() - started < 10
    assert f"cvmfs_wait_on_squid: {squid.url} answered" in log.getvalue()
    assert not state.warnings


def test_direct_alone_has_nothing_to_wait_for(tmp_path: Path, keys_dir: Path, served) -> None:
    url, _ = served
    log = io.StringIO()
    started = time.monotonic()
    state = boot(tmp_path, keys_dir, url, log, proxy="DIRECT", wait_on_squid=30)
    assert time.monotonic() - started < 10
    assert "cvmfs_wait_on_squid: no proxy to wait for (DIRECT only)" in log.getvalue()
    assert not state.warnings


def test_a_pinned_boot_without_network_starts_from_its_cache_after_the_wait(tmp_path: Path, keys_dir: Path,
                                                                             served) -> None:
    url, hashes = served
    boot(tmp_path, keys_dir, url)
    down = f"{refusing_proxy()}/cvmfs/cernvm-prod.cern.ch"
    state = boot(tmp_path, keys_dir, down, proxy=refusing_proxy(), wait_on_squid=1)
    assert state.repository.offline
    assert state.repository.root_hash.hex == hashes["v2"]
    assert [w for w in state.warnings if w.startswith("cvmfs_wait_on_squid=1: no proxy answered")]
