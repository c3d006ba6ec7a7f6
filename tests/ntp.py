"""A real NTP server for the tests: chronyd from Debian on a loopback port, serving its own clock and
never touching the host's (-x)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ucernvm.boot.clock import ask

CHRONYD = shutil.which("chronyd") or "/usr/sbin/chronyd"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def chronyd(base: Path, synchronised: bool) -> Iterator[int]:
    """A chronyd answering on 127.0.0.1:<port>; unsynchronised, it says so in every reply (leap 3)."""
    if not Path(CHRONYD).exists():
        pytest.skip("chrony is not installed (apt-get install chrony)")
    port = free_udp_port()
    directory = base / f"chronyd-{port}"  # two servers in one test: each its own files
    directory.mkdir()
    config = directory / "chrony.conf"
    config.write_text(f"port {port}\nbindaddress 127.0.0.1\nallow 127.0.0.1\ncmdport 0\n"
                      f"pidfile {directory}/chronyd.pid\n" + ("local stratum 8\n" if synchronised else ""))
    server = subprocess.Popen([CHRONYD, "-x", "-d", "-U", "-f", str(config)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while not _answers(port):
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                pytest.fail(f"chronyd did not answer: {server.communicate()[1].decode(errors='replace')}")
        yield port
    finally:
        server.terminate()
        server.wait(timeout=10)


def _answers(port: int) -> bool:
    answer = ask("127.0.0.1", port, 0.5)
    return answer.offset is not None or "not synchronised" in answer.problem
