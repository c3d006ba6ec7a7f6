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

from ucernvm.boot.clock import NTP_PORT, ask

CHRONYD = shutil.which("chronyd") or "/usr/sbin/chronyd"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def chronyd(base: Path, synchronised: bool, namespace: str | None = None, address: str = "127.0.0.1") -> Iterator[int]:
    """A chronyd answering on 127.0.0.1:<port>; unsynchronised, it says so in every reply (leap 3). In a
    network ``namespace`` it answers on ``address``, port 123, as a site's server would."""
    if not Path(CHRONYD).exists():
        pytest.skip("chrony is not installed (apt-get install chrony)")
    port = free_udp_port() if namespace is None else NTP_PORT
    directory = base / f"chronyd-{namespace or port}"  # two servers in one test: each its own files
    directory.mkdir()
    config = directory / "chrony.conf"
    config.write_text(f"port {port}\nbindaddress {address}\nallow {address}/16\ncmdport 0\n"
                      f"pidfile {directory}/chronyd.pid\n" + ("local stratum 8\n" if synchronised else ""))
    inside = ["ip", "netns", "exec", namespace] if namespace else []
    server = subprocess.Popen([*inside, CHRONYD, "-x", "-d", "-U", "-f", str(config)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while not (_answers(port) if namespace is None else _listens(namespace, address, port)):
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                pytest.fail(f"chronyd did not answer: {server.communicate()[1].decode(errors='replace')}")
            time.sleep(0.05)
        yield port
    finally:
        server.terminate()
        server.wait(timeout=10)


def _listens(namespace: str, address: str, port: int) -> bool:
    sockets = subprocess.run(["ip", "netns", "exec", namespace, "ss", "-Hnlu", f"src {address}:{port}"],
                             capture_output=True, text=True, timeout=10)
    return f"{address}:{port}" in sockets.stdout


def _answers(port: int) -> bool:
    answer = ask("127.0.0.1", port, 0.5)
    return answer.offset is not None or "not synchronised" in answer.problem
