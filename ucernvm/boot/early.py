"""The ``early`` stage: the kernel's virtual file systems, the command line, the first settings."""

from __future__ import annotations

import os

from ucernvm.boot.state import BootState
from ucernvm.boot.system import MS_NODEV, MS_NOEXEC, MS_NOSUID, MakeDirs, Mount
from ucernvm.config import build_config, kernel_values

_MOUNTS = (
    ("proc", "/proc", "proc", "", MS_NOSUID | MS_NODEV | MS_NOEXEC),
    ("sysfs", "/sys", "sysfs", "", MS_NOSUID | MS_NODEV | MS_NOEXEC),
    ("devtmpfs", "/dev", "devtmpfs", "mode=0755", MS_NOSUID),
    ("devpts", "/dev/pts", "devpts", "gid=5,mode=0620", MS_NOSUID | MS_NOEXEC),
    ("tmpfs", "/run", "tmpfs", "mode=0755", MS_NOSUID | MS_NODEV),
)


def early_stage(state: BootState) -> None:
    system = state.system
    if not system.dry_run:
        for source, target, fstype, options, flags in _MOUNTS:
            if not os.path.ismount(target):
                system.do(MakeDirs(target))
                system.do(Mount(source, target, fstype, options, flags))
        os.environ["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin"
        with open("/proc/cmdline") as handle:
            state.cmdline = handle.read().strip()
    for directory in ("/root.rw", "/root.ro", "/root", "/etc", "/tmp"):
        system.do(MakeDirs(str(system.path(directory))))
    state.config, warnings = build_config(kernel_values(state.cmdline))
    for warning in warnings:
        state.warn(warning)
    state.facts["cmdline"] = state.cmdline
