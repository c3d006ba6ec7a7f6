"""A real squid (Debian's ``squid`` package) for tests, on a free 127.0.0.1 port.

The configuration lives in a temporary directory: memory cache only, loopback clients only, no
DNS server but 127.0.0.1 (tests use IP literals), no other ports. ``squid -N`` runs in the
foreground as a child process and is always stopped by the fixture.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

SQUID = shutil.which("squid") or ("/usr/sbin/squid" if os.path.exists("/usr/sbin/squid") else None)
START_TIMEOUT = 20.0

CONFIG = """\
http_port 127.0.0.1:{port}
pid_filename {dir}/squid.pid
cache_log {dir}/cache.log
access_log stdio:{dir}/access.log
cache_store_log none
coredump_dir {dir}
cache_mem 16 MB
maximum_object_size_in_memory 4 MB
memory_cache_shared off
acl loopback src 127.0.0.0/8
http_access allow loopback
http_access deny all
visible_hostname ucernvm-test
dns_nameservers 127.0.0.1
negative_ttl 0 seconds
shutdown_lifetime 0 seconds
pinger_enable off
netdb_filename none
icp_port 0
htcp_port 0
logfile_rotate 0
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


class Squid:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def access_log(self) -> str:
        path = self.directory / "access.log"
        return path.read_text() if path.exists() else ""

    def start(self) -> Squid:
        # Started as root, squid drops to its own user, which must write its logs here.
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.chmod(0o777)
        for _ in range(3):  # the free port may be taken between probing and binding
            self.port = _free_port()
            config = self.directory / "squid.conf"
            config.write_text(CONFIG.format(port=self.port, dir=self.directory))
            with open(self.directory / "stderr", "wb") as stderr:
                self._process = subprocess.Popen([SQUID, "-N", "-f", str(config)], stdin=subprocess.DEVNULL,
                                                 stdout=stderr, stderr=stderr)
            deadline = time.monotonic() + START_TIMEOUT
            while time.monotonic() < deadline and self._process.poll() is None:
                if _accepts(self.port):
                    return self
                time.sleep(0.05)
            self.stop()
        log = (self.directory / "cache.log")
        tail = log.read_text()[-2000:] if log.exists() else ""
        raise RuntimeError(f"squid did not start:\n{(self.directory / 'stderr').read_text()}{tail}")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(3)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def squid() -> Iterator[Squid]:
    """One squid for the session (tests use distinct server ports, so their URLs never collide)."""
    if SQUID is None:
        pytest.skip("squid is not installed (apt-get install -y squid)")
    # Not under pytest's temporary directory: squid's own user could not reach into it.
    directory = Path(tempfile.mkdtemp(prefix="ucernvm-squid-"))
    proxy = Squid(directory)
    try:
        yield proxy.start()
    finally:
        proxy.stop()
        shutil.rmtree(directory, ignore_errors=True)
