"""The ``#<PIN>`` console login: typing ``#123456`` at the login prompt pairs the machine by PIN.

CernVM did this with a PAM module (``pam_cernvm``). Here the console gettys get a login program
instead, through systemd drop-ins (no PAM module to build for each OS): ``pin-login.sh`` hands
every ordinary name to ``/bin/login`` and runs the pairing for ``#<PIN>``, asking for the secret of
an encrypted context and then whether to reboot.

The pairing runs the boot loader's own client, copied into the OS next to the hook (the OS need not
have ucernvm, only ``python3``, which Debian's cloud-init needs anyway, and OpenSSL's libcrypto, which
Python's ssl module links): the same source files, so there is no second implementation to keep in step.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from ucernvm import __version__
from ucernvm.boot.system import MakeDirs, System, WriteFile
from ucernvm.context.defaults import CONTEXT_DIR, SEED_DIR, SERVICE_URL
from ucernvm.errors import ContextError

LIB_DIR = "usr/lib/ucernvm"
HOOK = f"{LIB_DIR}/pin-login"
# The modules the hook runs, as files of the ucernvm package. The image must carry their .py
# sources (it compiles the package to .pyc): the OS's Python may be another version.
BUNDLED_SOURCES = ("errors.py", "utc.py", "context/defaults.py", "context/online.py", "context/pairing.py",
                   "context/userdata.py")
DROP_IN = "ucernvm-pin-login.conf"
# Debian 12's ExecStart lines (systemd 252), with the login program added.
GETTYS = {
    "getty@.service": r"--noclear - $TERM",
    "serial-getty@.service": r"--keep-baud 115200,57600,38400,9600 - $TERM",
    "console-getty.service": r"--noclear --keep-baud - 115200,38400,9600 $TERM",
}


def hook_files(service_url: str = SERVICE_URL) -> dict[str, tuple[bytes, int]]:
    """Path under the new root -> (content, mode) of everything the hook needs; ContextError if impossible."""
    package = Path(__file__).resolve().parent.parent  # the ucernvm package: files, never a zip
    script = package.joinpath("context/pin-login.sh").read_text()
    values = {"SERVICE_URL": service_url, "LIB_DIR": f"/{LIB_DIR}", "CONTEXT_DIR": CONTEXT_DIR, "SEED_DIR": SEED_DIR}
    for name, value in values.items():
        script = script.replace(f"@{name}@", shlex.quote(value))
    files = {HOOK: (script.encode(), 0o755)}
    for name in BUNDLED_SOURCES:
        try:
            source = package.joinpath(name).read_bytes()
        except OSError:
            raise ContextError(f"the #<PIN> login cannot be installed: this build has no source of ucernvm/{name}",
                               "the image must carry the .py files of login_hook.BUNDLED_SOURCES") from None
        files[f"{LIB_DIR}/python/ucernvm/{name}"] = (source, 0o644)
    # Stand-ins for the package files the bundled modules do not need (and whose imports they avoid).
    files[f"{LIB_DIR}/python/ucernvm/__init__.py"] = (f"__version__ = {__version__!r}\n".encode(), 0o644)
    files[f"{LIB_DIR}/python/ucernvm/context/__init__.py"] = (b"", 0o644)
    for unit, arguments in GETTYS.items():
        drop_in = ("# Written by the ucernvm boot loader: a login name \"#<PIN>\" pairs this machine with a\n"
                   "# CernVM Online context (see /" + HOOK + ").\n"
                   "[Service]\nExecStart=\n"
                   f"ExecStart=-/sbin/agetty --login-program /{HOOK} -o '-p -- \\\\u' {arguments}\n")
        files[f"etc/systemd/system/{unit}.d/{DROP_IN}"] = (drop_in.encode(), 0o644)
    return files


def install_login_hook(new_root: Path, system: System, files: dict[str, tuple[bytes, int]]) -> None:
    """Install the hook's *files* (``hook_files``) into the OS being booted (its writable layer)."""
    for path, (data, mode) in files.items():
        target = new_root / path
        system.do(MakeDirs(str(target.parent)))
        system.do(WriteFile(str(target), data, mode))
