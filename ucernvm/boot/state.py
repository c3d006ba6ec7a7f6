"""What the stages of one boot share: the system, the settings, the log, and each stage's results."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ucernvm.boot.log import BootLog
from ucernvm.boot.system import System
from ucernvm.config import BootConfig


@dataclass
class StageRecord:
    name: str
    start: float  # seconds since the kernel started
    end: float = 0.0
    status: str = "running"  # ok, warning, failed, skipped
    message: str = ""
    imports: float = 0.0  # of the seconds, those spent importing the stage's code (a cost of the image)

    @property
    def seconds(self) -> float:
        return max(0.0, self.end - self.start)


@dataclass
class BootState:
    system: System
    log: BootLog
    cmdline: str = ""
    config: Any = field(default_factory=BootConfig)
    warnings: list[str] = field(default_factory=list)
    stages: list[StageRecord] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)  # what the boot report shows

    # results of the stages, for the stages after them
    scratch_device: str | None = None
    scratch_fresh: bool = False
    user_data: bytes | None = None
    context_source: str = "(none)"
    found_context: Any = None  # what the context stage's search found (extras, meta-data)
    source: Any = None  # the HTTP fetcher chosen by the servers stage
    repository: Any = None
    fuse_pid: int | None = None
    scratch_moved_to: Path | None = None  # where the mount stage moved the scratch disk
    keys_dir: Path | None = None  # trusted master keys; None: the image's /etc/cvmfs/keys

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
