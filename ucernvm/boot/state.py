"""What the stages of one boot share: the system, the settings, the log, and each stage's results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ucernvm.boot.log import BootLog
from ucernvm.boot.system import Action, System
from ucernvm.config import BootConfig


class StageRecord:
    __slots__ = ("name", "start", "end", "status", "message", "imports")

    def __init__(self, name: str, start: float) -> None:
        self.name = name
        self.start = start  # seconds since the kernel started
        self.end = 0.0
        self.status = "running"  # ok, warning, failed, skipped
        self.message = ""
        self.imports = 0.0  # of the seconds, those spent importing the stage's code (a cost of the image)

    @property
    def seconds(self) -> float:
        return max(0.0, self.end - self.start)


class BootState:
    __slots__ = ("system", "log", "cmdline", "config", "warnings", "stages", "facts", "scratch_device",
                 "scratch_fresh", "user_data", "context_source", "found_context", "source", "repository",
                 "fuse_pid", "scratch_moved_to", "keys_dir", "media", "background")

    def __init__(self, system: System, log: BootLog, cmdline: str = "", config: Any = None,
                 keys_dir: Path | None = None) -> None:
        self.system = system
        self.log = log
        self.cmdline = cmdline
        self.config: Any = BootConfig() if config is None else config
        self.keys_dir = keys_dir  # a dry run's --keys, trusted in place of the image's /etc/cvmfs/keys (None)
        self.warnings: list[str] = []
        self.stages: list[StageRecord] = []
        self.facts: dict[str, Any] = {}  # what the boot report shows

        # results of the stages, for the stages after them
        self.scratch_device: str | None = None
        self.scratch_fresh = False
        self.user_data: bytes | None = None
        self.context_source = "(none)"
        self.found_context: Any = None  # what the context stage's search found (extras, meta-data)
        self.source: Any = None  # the HTTP fetcher chosen by the servers stage
        self.repository: Any = None
        self.fuse_pid: int | None = None
        self.scratch_moved_to: Path | None = None  # where the mount stage moved the scratch disk
        self.media: list[Any] | None = None  # local disks' file systems, probed once before the storage stage
        self.background: Any = None  # the stages running in a child process (background.Background), if any

    @property
    def scratch(self) -> Path:
        """The scratch disk's mount point (µCernVM's /root.rw, then /root/mnt/.rw once moved)."""
        return self.scratch_moved_to or self.system.path("/root.rw")

    @property
    def read_only(self) -> Path:
        """Where the repository is mounted (/root.ro, later /mnt/.ro)."""
        return self.system.path("/root.ro")

    @property
    def new_root(self) -> Path:
        """Where the OS root is assembled before switch_root."""
        return self.system.path("/root")

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        self.log.warn(message)

    def do_or_warn(self, what: str, *actions: Action) -> bool:
        """Apply *actions* (writes the OS can do without); where one fails for want of space or a failing
        disk, a warning naming *what* instead of a failed boot. Whether all were applied."""
        try:
            for action in actions:
                self.system.do(action)
        except OSError as error:
            self.warn(f"{what} not written: {error.strerror or error}")
            return False
        return True
