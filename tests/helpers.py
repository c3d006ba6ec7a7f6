"""Helpers for tests: running the command line, building source trees, comparing trees."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parents[1]


def run_cli(*args: object, check: bool = False, timeout: float = 300) -> subprocess.CompletedProcess[bytes]:
    """Run ``ucernvm`` as a user would, in a subprocess."""
    result = subprocess.run(
        [sys.executable, "-m", "ucernvm", *map(str, args)], capture_output=True, cwd=PROJECT, timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(f"ucernvm {' '.join(map(str, args))} failed:\n{result.stderr.decode()}")
    return result


def fuse_unusable() -> str | None:
    """Why FUSE file systems cannot be mounted here, or None when they can."""
    if os.geteuid() != 0:
        return "mounting FUSE file systems needs root"
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR))
    except OSError as error:
        return f"/dev/fuse is unusable: {error.strerror}"
    return None


def snapshot_tree(root: Path) -> dict[str, tuple]:
    """What a published tree must read back as: per path its type, mode, content or target, xattrs."""
    result: dict[str, tuple] = {}
    for directory, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = Path(directory) / name
            st = path.lstat()
            relative = "/" + str(path.relative_to(root))
            if path.is_symlink():
                result[relative] = ("link", st.st_mode, os.readlink(path))
            elif path.is_dir():
                result[relative] = ("dir", st.st_mode)
            elif path.is_file():
                result[relative] = ("file", st.st_mode, path.read_bytes())
            else:
                result[relative] = ("special", st.st_mode, st.st_rdev)
    return result


def daemon_statistics(mountpoint: Path, cache: Path) -> dict[str, Any]:
    """The statistics a `ucernvm mount` daemon appends to mount.log on SIGUSR1 (its latest line)."""
    log = cache / "mount.log"
    seen = len(_statistics_lines(log))
    os.kill(int(os.getxattr(mountpoint, "user.pid")), signal.SIGUSR1)
    for _ in range(200):
        lines = _statistics_lines(log)
        if len(lines) > seen:
            return json.loads(lines[-1].split("statistics ", 1)[1])
        time.sleep(0.05)
    raise AssertionError(f"the daemon wrote no statistics to {log}")


def _statistics_lines(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if "statistics " in line] if log.exists() else []


def serves_past_idle_connections(server: subprocess.Popen, port: int, answered: Callable[[], bool],
                                 count: int = 200) -> bool:
    """Whether ``server`` (a process listening on ``port`` with few descriptors) answers a client, as
    ``answered`` checks, while ``count`` idle connections are open, without spinning: a server whose
    accept() fails in a loop burns a whole CPU. The server process is killed afterwards."""
    idle: list[socket.socket] = []
    try:
        idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(count)]
        time.sleep(0.5)
        started, cpu = time.monotonic(), cpu_seconds(server.pid)
        served = answered()
        time.sleep(0.5)
        return served and cpu_seconds(server.pid) - cpu < (time.monotonic() - started) / 2
    finally:
        for sock in idle:
            sock.close()
        server.kill()
        server.wait()


def cpu_seconds(pid: int) -> float:
    """The user and system CPU time of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def closed_by_server(sock: socket.socket, within: float) -> bool:
    """Whether the server ends this connection within ``within`` seconds (reading what it sends)."""
    sock.settimeout(within)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except OSError:
        pass  # reset: closed as well
    return True
