"""The rescue shell, the failure screen, and what a failed boot does next (``ucernvm.panic``)."""

from __future__ import annotations

import ctypes
import os
import select
import shlex
import time

from ucernvm.boot.pipeline import BootFailure
from ucernvm.boot.report import build_report, to_json
from ucernvm.boot.state import BootState
from ucernvm.boot.system import WriteFile

_RB_AUTOBOOT = 0x01234567
_RB_POWER_OFF = 0x4321FEDC
_SHELLS = (("/usr/bin/busybox", "setsid", "cttyhack", "sh"), ("/bin/sh",))
RESET_ROOT_PASSWORD = "/usr/bin/reset_root_password"
# µCernVM's command of its rescue shell, which the CernVM docs tell users to type: the OS's root password
# becomes 'password' (there a DES hash; here SHA-512, which every current libc accepts). The OS's root is
# the overlay the boot assembled, so the change lands in the writable layer on the scratch disk.
RESET_ROOT_PASSWORD_SCRIPT = """#!/usr/bin/busybox sh
# ucernvm: set the root password of the OS (assembled at {root}) to 'password'
bb=/usr/bin/busybox
root={root}
vault=$root/etc/shadow
[ -e "$vault" ] || [ -L "$vault" ] || vault=$root/etc/passwd
if [ -L "$vault" ]; then
    echo "$vault is a symbolic link: not followed, nothing changed" >&2
    exit 1
fi
if ! $bb grep -q '^root:' "$vault" 2>/dev/null; then
    echo "no OS root with a root account at $root (is it assembled yet?): nothing changed" >&2
    exit 1
fi
hash=$($bb mkpasswd -m sha512 password) || exit 1
$bb sed -i -e "s|^root:[^:]*|root:$hash|" "$vault" || exit 1
echo "root password is 'password': change it once logged in"
"""


def install_rescue_commands(state: BootState) -> None:
    """Put the rescue shell's own commands (reset_root_password) where its PATH finds them."""
    script = RESET_ROOT_PASSWORD_SCRIPT.format(root=shlex.quote(str(state.new_root)))
    try:
        state.system.do(WriteFile(str(state.system.path(RESET_ROOT_PASSWORD)), script.encode(), 0o755))
    except OSError as error:
        state.log.error(f"cannot install {RESET_ROOT_PASSWORD}: {error.strerror or error}")


def rescue_shell(state: BootState, reason: str) -> None:
    """An interactive shell on the console; the boot goes on when it exits."""
    state.log.warn(f"rescue shell: {reason}")
    if state.system.dry_run:
        state.system.actions.append(f"open a rescue shell ({reason})")
        return
    import subprocess  # see Run in system.py

    install_rescue_commands(state)
    state.log.info("rescue shell: reset_root_password sets the OS's root password to 'password'")

    for argv in _SHELLS:
        if os.path.exists(argv[0]):
            env = dict(os.environ, PS1="(ucernvm) ", HOME="/")
            try:
                subprocess.run(argv, env=env, check=False)
            except OSError as error:
                state.log.error(f"cannot start {argv[0]}: {error}")
            return
    state.log.error("no shell in the image")


def offer_rescue_shell(state: BootState, reason: str, seconds: float, console: int = 0) -> None:
    """The rescue shell if someone at the console presses Enter within ``seconds``; a console nobody watches
    (a cloud's serial log) does not hold the boot up for ever, as a shell waiting there would: a warning
    says it was not opened."""
    if state.system.dry_run:
        state.system.actions.append(f"offer a rescue shell for {seconds:g} s ({reason})")
        return
    state.log.warn(f"{reason}: press Enter within {seconds:g} s for a rescue shell")
    if console_answers(console, seconds):
        rescue_shell(state, reason)
    else:
        state.warn(f"{reason}: nobody pressed Enter at the console within {seconds:g} s; the boot goes on "
                   "without the rescue shell")


def console_answers(console: int, seconds: float) -> bool:
    """Whether a line comes from ``console`` within ``seconds`` (what was typed is taken); not at its end."""
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            ready, _, _ = select.select([console], [], [], remaining)
            if not ready:
                return False
            typed = os.read(console, 4096)
        except OSError:
            return False  # no console to read
        if not typed:
            return False
        if b"\n" in typed or b"\r" in typed:
            return True
    return False


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
