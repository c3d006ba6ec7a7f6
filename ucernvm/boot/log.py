"""The boot log: ``[INF]``/``[WRN]``/``[ERR]`` lines on the console, kept in memory for the boot's
``boot.log``; warnings and errors also go to the kernel log, where the OS's journal keeps them. (Not every
line: the kernel lets a /dev/kmsg writer log 10 lines per 5 s and drops the rest.)"""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

_KMSG_LEVEL = {"WRN": 4, "ERR": 3}


def uptime() -> float:
    """Seconds since the kernel started (what /proc/uptime and the kernel log count)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


class BootLog:
    def __init__(self, console: TextIO = sys.stdout, kmsg: str | None = None) -> None:
        self.console = console
        self.records: list[tuple[float, str, str]] = []
        self._kmsg = -1
        # PID 1 starts before devtmpfs is mounted: /dev/kmsg is opened at the first line after that.
        self._kmsg_path = kmsg

    def _write(self, level: str, message: str) -> None:
        self.records.append((uptime(), level, message))
        try:
            self.console.write(f"[{level}] {message}\n")
            self.console.flush()
        except OSError:
            pass  # a console that went away must not stop the boot
        if level not in _KMSG_LEVEL:
            return
        if self._kmsg_path is not None and self._kmsg < 0:
            try:
                self._kmsg = os.open(self._kmsg_path, os.O_WRONLY | os.O_CLOEXEC)
            except OSError:
                pass
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
