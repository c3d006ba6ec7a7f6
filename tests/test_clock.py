"""The clock stage (boot/clock.py) against a real NTP server: chronyd from Debian on a loopback port,
serving its own clock and never touching the host's (-x). The stage only ever runs here with a
DryRunSystem, which records the clock change instead of making it; a machine whose clock is three hours
off is a process under libfaketime's LD_PRELOAD."""

from __future__ import annotations

import email.utils
import io
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import PROJECT
from ntp import chronyd, free_udp_port
from test_publish import FQRN, publish
from ucernvm.boot.clock import clock_stage, date_offset, parse_servers
from ucernvm.boot.servers import servers_stage
from ucernvm.boot.log import BootLog
from ucernvm.boot.state import BootState
from ucernvm.boot.system import DryRunSystem
from ucernvm.client.fetcher import ServerDate
from ucernvm.config import build_config
from ucernvm.errors import ConfigError
from ucernvm.server import StratumServer

FAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"


@pytest.fixture
def ntp_server(tmp_path: Path) -> Iterator[int]:
    yield from chronyd(tmp_path, synchronised=True)


@pytest.fixture
def unsynchronised_ntp_server(tmp_path: Path) -> Iterator[int]:
    yield from chronyd(tmp_path, synchronised=False)


def boot(ntp: str, timeout: str = "2") -> BootState:
    config, _ = build_config({"ntp": ntp, "ntp_timeout": timeout})
    state = BootState(DryRunSystem(), BootLog(io.StringIO()), config=config)
    clock_stage(state)
    return state


def test_servers_are_parsed_and_bad_ones_refused() -> None:
    assert parse_servers("pool.ntp.org, 10.0.2.2:1123,[::1]:124,[fe80::1]") == [
        ("pool.ntp.org", 123), ("10.0.2.2", 1123), ("::1", 124), ("fe80::1", 123)]
    assert parse_servers("off") == parse_servers("") == []
    for bad in ("host:port", "host:0", "[::1]x", ":123"):
        with pytest.raises(ConfigError):
            parse_servers(bad)


def test_a_clock_in_time_is_left_alone(ntp_server: int) -> None:
    state = boot(f"127.0.0.1:{ntp_server}")
    clock = state.facts["clock"]
    assert clock["server"] == f"127.0.0.1:{ntp_server}" and abs(clock["offset"]) < 0.5 and clock["set"] is False
    assert not state.system.actions and not state.warnings


def test_the_first_synchronised_answer_counts(ntp_server: int, unsynchronised_ntp_server: int) -> None:
    state = boot(f"127.0.0.1:{unsynchronised_ntp_server},127.0.0.1:{ntp_server}")
    assert state.facts["clock"]["server"] == f"127.0.0.1:{ntp_server}" and not state.warnings


def test_an_unsynchronised_server_is_not_believed(unsynchronised_ntp_server: int) -> None:
    state = boot(f"127.0.0.1:{unsynchronised_ntp_server}")
    assert not state.system.actions
    assert "not synchronised" in state.warnings[0] and "the clock reads" in state.warnings[0]


def test_garbage_a_dead_port_and_silence_leave_the_clock_with_a_warning() -> None:
    # A closed port is silence too: an unconnected UDP socket hears nothing of ICMP port unreachable.
    garbage = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    garbage.bind(("127.0.0.1", 0))
    silent.bind(("127.0.0.1", 0))

    def answer_garbage() -> None:
        _, peer = garbage.recvfrom(512)
        garbage.sendto(b"\x1c not an NTP packet", peer)

    threading.Thread(target=answer_garbage, daemon=True).start()
    servers = f"127.0.0.1:{garbage.getsockname()[1]},127.0.0.1:{free_udp_port()},127.0.0.1:{silent.getsockname()[1]}"
    started = time.monotonic()
    state = boot(servers, timeout="1")
    assert time.monotonic() - started < 2.5  # one timeout for all: one after the other would take 3 s
    assert not state.system.actions and len(state.warnings) == 1
    assert "no NTP server answered within 1 s" in state.warnings[0]
    assert state.facts["clock"]["failed"][f"127.0.0.1:{garbage.getsockname()[1]}"] == "Invalid NTP packet."
    garbage.close()
    silent.close()


def test_off_asks_nobody() -> None:
    state = boot("off")
    assert "clock" not in state.facts and not state.system.actions and not state.warnings


@pytest.mark.skipif(not Path(FAKETIME).exists(), reason="libfaketime is not installed (apt-get install faketime)")
def test_a_clock_three_hours_behind_is_set_forward(ntp_server: int) -> None:
    """The stage in a process whose clock is three hours behind: the dry run records the change."""
    script = (
        "import io, json, time\n"
        "from ucernvm.boot.clock import clock_stage\n"
        "from ucernvm.boot.log import BootLog\n"
        "from ucernvm.boot.state import BootState\n"
        "from ucernvm.boot.system import DryRunSystem\n"
        "from ucernvm.config import build_config\n"
        f"config, _ = build_config({{'ntp': '127.0.0.1:{ntp_server}'}})\n"
        "state = BootState(DryRunSystem(), BootLog(io.StringIO()), config=config)\n"
        "clock_stage(state)\n"
        "print(json.dumps({'facts': state.facts['clock'], 'actions': state.system.actions, 'now': time.time()}))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=PROJECT, timeout=60,
                            env={"LD_PRELOAD": FAKETIME, "FAKETIME": "-3h", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["now"] < time.time() - 3 * 3600 + 60  # the process did live three hours back
    assert abs(seen["facts"]["offset"] - 3 * 3600) < 5 and seen["facts"]["set"] is True
    assert seen["actions"] == [f"set the clock forward by {seen['facts']['offset']:.1f} s (NTP server 127.0.0.1:{ntp_server})"]


# --- without NTP: a server's Date ------------------------------------------------------------------


def test_a_date_and_its_age_give_the_servers_clock() -> None:
    now = time.monotonic()
    in_time = ServerDate("http://s", email.utils.formatdate(time.time(), usegmt=True), "", now)
    assert abs(date_offset(in_time, now)) < 1.5
    three_hours_on = ServerDate("http://s", email.utils.formatdate(time.time() + 3 * 3600, usegmt=True), "", now - 2)
    assert abs(date_offset(three_hours_on, now) - (3 * 3600 + 2)) < 1.5  # and 2 s since it came
    kept_by_a_proxy = ServerDate("http://s", email.utils.formatdate(time.time() - 600, usegmt=True), "600", now)
    assert abs(date_offset(kept_by_a_proxy, now)) < 1.5
    assert date_offset(ServerDate("http://s", "yesterday", "", now), now) is None


@pytest.fixture
def stratum(tmp_path: Path, keys_dir: Path) -> Iterator[str]:
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "hostname").write_text("cernvm\n")
    publish(tree, tmp_path / "stratum" / FQRN, keys_dir)
    with StratumServer(tmp_path / "stratum") as server:
        yield f"{server.url}/cvmfs/@fqrn@"


def boot_offset(skew: str, ntp_port: int, server_url: str) -> dict:
    """The clock and servers stages in a process whose clock is ``skew`` off (libfaketime), NTP dead."""
    script = (
        "import io, json\n"
        "from ucernvm.boot.clock import clock_stage\n"
        "from ucernvm.boot.servers import servers_stage\n"
        "from ucernvm.boot.log import BootLog\n"
        "from ucernvm.boot.state import BootState\n"
        "from ucernvm.boot.system import DryRunSystem\n"
        "from ucernvm.config import build_config\n"
        f"config, _ = build_config({{'ntp': '127.0.0.1:{ntp_port}', 'ntp_timeout': '0.5', 'repository': '{FQRN}',\n"
        f"                           'server_url': '{server_url}', 'proxy': 'DIRECT'}})\n"
        "state = BootState(DryRunSystem(), BootLog(io.StringIO()), config=config)\n"
        "clock_stage(state)\n"
        "servers_stage(state)\n"
        "print(json.dumps({'facts': state.facts['clock'], 'actions': state.system.actions, 'warnings': state.warnings}))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=PROJECT, timeout=60,
                            env={"LD_PRELOAD": FAKETIME, "FAKETIME": skew, "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.skipif(not Path(FAKETIME).exists(), reason="libfaketime is not installed (apt-get install faketime)")
def test_without_ntp_a_clock_behind_the_servers_date_is_set_forward(stratum: str) -> None:
    seen = boot_offset("-3h", free_udp_port(), stratum)
    facts = seen["facts"]
    assert abs(facts["offset"] - 3 * 3600) < 5 and facts["set"] is True
    assert facts["date_of"].startswith(stratum.replace("@fqrn@", FQRN))
    assert seen["actions"] == [f"set the clock forward by {facts['offset']:.1f} s (the Date of {facts['date_of']})"]


@pytest.mark.skipif(not Path(FAKETIME).exists(), reason="libfaketime is not installed (apt-get install faketime)")
def test_without_ntp_a_clock_ahead_of_the_servers_date_is_not_set_back(stratum: str) -> None:
    """A Date is not signed: believed, a clock set back would make an expired whitelist valid again."""
    seen = boot_offset("+3h", free_udp_port(), stratum)
    assert seen["actions"] == [] and seen["facts"]["set"] is False and abs(seen["facts"]["offset"] + 3 * 3600) < 5
    assert any("ahead of the Date" in warning and "not set back" in warning for warning in seen["warnings"])


def test_with_ntp_in_time_no_date_is_asked(ntp_server: int, stratum: str) -> None:
    config, _ = build_config({"ntp": f"127.0.0.1:{ntp_server}", "repository": FQRN, "server_url": stratum, "proxy": "DIRECT"})
    state = BootState(DryRunSystem(), BootLog(io.StringIO()), config=config)
    clock_stage(state)
    servers_stage(state)
    assert "date_of" not in state.facts["clock"] and state.source.counters.requests == 0
