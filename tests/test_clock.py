"""The clock stage (boot/clock.py) against a real NTP server: chronyd from Debian on a loopback port,
serving its own clock and never touching the host's (-x). The stage only ever runs here with a
DryRunSystem, which records the clock change instead of making it; a machine whose clock is three hours
off is a process under libfaketime's LD_PRELOAD."""

from __future__ import annotations

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
from ucernvm.boot.clock import clock_stage, parse_servers
from ucernvm.boot.log import BootLog
from ucernvm.boot.state import BootState
from ucernvm.boot.system import DryRunSystem
from ucernvm.config import build_config
from ucernvm.errors import ConfigError

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
    assert "not synchronised" in state.warnings[0] and "the clock stays at" in state.warnings[0]


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
