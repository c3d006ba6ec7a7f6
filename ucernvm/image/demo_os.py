"""The demo and test operating system: a static busybox and a shell script as /sbin/init.

Published with ``ucernvm publish`` and booted by the image (``ucernvm demo``, the boot tests and the
boot benchmark), it proves that the OS's own init ran from the snapshot: it prints what it sees (guest
uptime, the writable root, the kernel modules, the boot report) between markers on the serial console,
then shuts down the way systemd does (pivot into /run/initramfs and run its /shutdown), which hands the
machine back to the loader.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from ucernvm.client.prefetch import PREFETCH_LIST
from ucernvm.errors import ConfigError
from ucernvm.image.elfdeps import elf_info, is_elf

BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static
_REPORT_RE = re.compile(r"UCERNVM-REPORT-BEGIN\s*\n(.*?)\n\s*UCERNVM-REPORT-END", re.DOTALL)
APPLETS = (
    "sh", "mount", "umount", "cat", "echo", "ls", "mkdir", "cut", "grep", "wc", "uname", "sync", "sleep",
    "poweroff", "reboot", "pivot_root", "chroot", "insmod", "modprobe", "lsmod", "df", "head", "tail", "stat",
    "dmesg", "date",
)  # fmt: skip

INIT = r"""#!/bin/sh
# The test OS's init: report what the booted OS sees, then shut down as systemd would.
export PATH=/bin:/sbin
mount -t proc proc /proc 2>/dev/null
echo "UCERNVM-OS-INIT $(cut -d' ' -f1 /proc/uptime)"
echo "UCERNVM-OS-DATE $(date -u +%s)"
echo "booted $(cut -d' ' -f1 /proc/uptime)" >> /var/boot-history
echo "UCERNVM-OS-BOOTS $(wc -l < /var/boot-history)"
echo "UCERNVM-OS-ROOT $(grep ' / ' /proc/mounts | head -n 1)"
echo "UCERNVM-OS-LAYERS $(grep -c -e ' /mnt/.rw ' -e ' /mnt/.ro ' /proc/mounts)"
echo "UCERNVM-OS-KERNEL $(uname -r)"
if [ -d "/lib/modules/$(uname -r)" ]; then echo "UCERNVM-OS-MODULES present"; fi
echo "UCERNVM-OS-FUSE-BGREQ $(cat /sys/module/fuse/parameters/max_user_bgreq 2>/dev/null)"
echo "UCERNVM-OS-SEED $(cat /var/lib/cloud/seed/nocloud/user-data 2>/dev/null | head -n 1)"
echo "UCERNVM-OS-NETWORK-CONFIG $(tr -d ' \n' < /var/lib/cloud/seed/nocloud/network-config 2>/dev/null)"
daemon=$(cat /run/initramfs/ucernvm.pids)
echo "UCERNVM-OS-DAEMON $(head -c 1 /proc/$daemon/cmdline)"
echo "UCERNVM-OS-CACHE-LOCKED $(grep -c "FLOCK.*:$(stat -c %i /mnt/.rw/cache/lock) " /proc/locks)"
# The initramfs, seen through the daemon's root (the old one), once the loader's child has emptied it of
# all but what the daemon reads there (name resolution and the CA file, under etc and usr)
for i in 1 2 3 4 5 6 7 8 9 10; do [ "$(ls -A /proc/$daemon/root | tr '\n' ' ')" = "etc usr " ] && break; sleep 0.5; done
echo "UCERNVM-OS-OLD-ROOT $(ls -A /proc/$daemon/root | tr '\n' ' ')"
echo "UCERNVM-REPORT-BEGIN"
cat /run/ucernvm/report.json
echo "UCERNVM-REPORT-END"
if [ -f /test-hook ]; then . /test-hook; fi
cd /run/initramfs && mkdir -p oldroot && pivot_root . oldroot && exec chroot . /shutdown poweroff
echo "UCERNVM-OS-SHUTDOWN-FAILED"
"""

# What its boot reads, in order, as a snapshot of a real OS lists it (client/prefetch.py; a real list is a
# cold boot's read-order.txt): a cold boot downloads busybox while the loader hands over, a later one
# reads both from the boot layer on the scratch disk instead of through the mount.
PREFETCH = "# the files the boot reads, in order\nsbin/init\nbin/busybox\n"


def make_demo_os(root: Path, init: str = INIT) -> Path:
    """Write the OS tree into *root* (created; existing files are replaced) and return *root*."""
    if not BUSYBOX.is_file() or not is_elf(BUSYBOX) or elf_info(BUSYBOX).interpreter is not None:
        raise ConfigError(f"{BUSYBOX} is not a static busybox", hint="apt-get install busybox-static")
    for directory in ("bin", "sbin", "etc", "proc", "sys", "dev", "run", "tmp", "mnt", "var", "root", "lib"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    for applet in APPLETS:
        link = root / "bin" / applet
        link.unlink(missing_ok=True)
        link.symlink_to("busybox")
    (root / "sbin" / "init").write_text(init)
    (root / "sbin" / "init").chmod(0o755)
    (root / "etc" / "os-release").write_text('NAME="ucernvm test OS"\nID=ucernvm-test\n')
    (root / PREFETCH_LIST).write_text(PREFETCH)
    return root


def console_marker(serial: str, name: str) -> str | None:
    """What the OS's init printed after *name* (e.g. ``UCERNVM-OS-INIT``) on the console, if it did."""
    match = re.search(rf"^{re.escape(name)} (.*)$", serial, re.MULTILINE)
    return match.group(1).strip() if match else None


def console_report(serial: str) -> dict[str, Any] | None:
    """The boot report (``/run/ucernvm/report.json``) the OS's init printed on the console, if it did."""
    match = _REPORT_RE.search(serial)
    return json.loads(match.group(1)) if match else None
