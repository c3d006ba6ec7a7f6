"""The rescue shell, the failure screen, and what a failed boot does next (``ucernvm.panic``)."""

from __future__ import annotations

import ctypes
import os
import time

from ucernvm.boot.pipeline import BootFailure
from ucernvm.boot.report import build_report, to_json
from ucernvm.boot.state import BootState
from ucernvm.boot.system import WriteFile

_RB_AUTOBOOT = 0x01234567
_RB_POWER_OFF = 0x4321FEDC
_SHELLS = (("/usr/bin/busybox", "setsid", "cttyhack", "sh"), ("/bin/sh",))


def rescue_shell(state: BootState, reason: str) -> None:
    """An interactive shell on the console; the boot goes on when it exits."""
    state.log.warn(f"rescue shell: {reason}")
    if state.system.dry_run:
        state.system.actions.append(f"open a rescue shell ({reason})")
        return
    import subprocess  # see Run in system.py

    for argv in _SHELLS:
        if os.path.exists(argv[0]):
            env = dict(os.environ, PS1="(ucernvm) ", HOME="/")
            try:
                subprocess.run(argv, env=env, check=False)
            except OSError as error:
                state.log.error(f"cannot start {argv[0]}: {error}")
            return
    state.log.error("no shell in the image")


def failure_screen(state: BootState, failure: BootFailure) -> str:
    rule = "=" * 72
    lines = [
        rule,
        f" ucernvm: the boot failed in stage '{failure.stage}'",
        f"   error: {failure.message}",
    ]
    if failure.hint:
        lines.append(f"   hint:  {failure.hint}")
    # What went wrong before, and was let pass, is often the cause: a network without a lease, say.
    lines += [f"   after: {record.name}: {record.message}" for record in state.stages if record.status == "warning"]
    lines.append(rule)
    return "\n".join(lines)


def save_logs(state: BootState, outcome: str) -> str | None:
    """Keep the log and the report on the scratch disk, when it is mounted; returns where."""
    if state.system.dry_run or state.scratch_device is None:
        return None
    directory = state.scratch / "ulogs"
    try:
        os.makedirs(directory, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S")
        # As every write to the scratch disk: never through what the OS left there (a FIFO would block).
        WriteFile(str(directory / f"boot-{stamp}.log"), state.log.text().encode()).apply()
        WriteFile(str(directory / "status.json"), to_json(build_report(state, outcome)).encode()).apply()
        os.sync()
    except OSError:
        return None
    return str(directory)


def panic(state: BootState) -> None:
    """Do what ``ucernvm.panic`` says; never returns as PID 1."""
    action = state.config.panic
    if action == "shell":
        rescue_shell(state, "the boot failed; exit the shell to power off")
    libc = ctypes.CDLL(None, use_errno=True)
    os.sync()
    state.log.info("rebooting" if action == "reboot" else "powering off")
    libc.reboot(_RB_AUTOBOOT if action == "reboot" else _RB_POWER_OFF)
    while True:  # reboot(2) does not return; if it did, PID 1 must not exit (the kernel would panic)
        time.sleep(3600)
