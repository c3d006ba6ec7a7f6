"""The boot log: ``[INF]``/``[WRN]``/``[ERR]`` lines on the console and in the kernel log."""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

_KMSG_LEVEL = {"INF": 6, "WRN": 4, "ERR": 3}


def uptime() -> float:
    """Seconds since the kernel started (what /proc/uptime and the kernel log count)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


class BootLog:
    def __init__(self, console: TextIO = sys.stdout, kmsg: bool = False) -> None:
        self.console = console
        self.records: list[tuple[float, str, str]] = []
        self._kmsg = -1
        if kmsg:
            try:
                self._kmsg = os.open("/dev/kmsg", os.O_WRONLY | os.O_CLOEXEC)
            except OSError:
                self._kmsg = -1

    def _write(self, level: str, message: str) -> None:
        self.records.append((uptime(), level, message))
        try:
            self.console.write(f"[{level}] {message}\n")
            self.console.flush()
        except OSError:
            pass  # a console that went away must not stop the boot
        if self._kmsg >= 0:
            try:
                os.write(self._kmsg, f"<{_KMSG_LEVEL[level]}>ucernvm: {message}\n".encode(errors="replace")[:1000])
            except OSError:
                pass

    def info(self, message: str) -> None:
        self._write("INF", message)

    def warn(self, message: str) -> None:
        self._write("WRN", message)

    def error(self, message: str) -> None:
        self._write("ERR", message)

    def text(self) -> str:
        return "".join(f"{stamp:10.3f} [{level}] {message}\n" for stamp, level, message in self.records)
