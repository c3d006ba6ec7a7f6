"""The shutdown hand-back: how the OS gives the machine back to the loader at power-off.

The OS's root is an overlay on the FUSE daemon's mount, so the OS cannot unmount it itself. As
µCernVM's ``80drtini`` (dracut's convention, which systemd follows): the loader leaves a static busybox
and a ``shutdown`` script in ``/run/initramfs``; at the end of a power-off, systemd-shutdown pivots into
that directory (the OS's root becomes ``/oldroot``) and runs ``/shutdown <verb>``. The script stops the
FUSE daemon (systemd spared it: its command line starts with '@'), detaches the root so that the scratch
disk's ext4 is unmounted cleanly, and powers off, reboots or halts.
"""

from __future__ import annotations

from ucernvm.boot.state import BootState
from ucernvm.boot.system import MS_NODEV, MS_NOSUID, MakeDirs, Mount, WriteFile

BUSYBOX = "/usr/bin/busybox"
ON_SCRATCH = "for the OS (its writable layer on the scratch disk)"  # where the new root's writes go

SHUTDOWN_SCRIPT = """#!/bin/busybox sh
# ucernvm: systemd-shutdown runs this after pivoting into /run/initramfs; the OS root is /oldroot.
PATH=/bin
export PATH
bb=/bin/busybox
$bb mkdir -p /proc /sys /dev
$bb mount -t proc proc /proc 2>/dev/null
$bb sync
$bb mount -o remount,ro /oldroot 2>/dev/null
for pid in $($bb cat /ucernvm.pids 2>/dev/null); do
    $bb kill -TERM "$pid" 2>/dev/null
done
$bb sleep 0.2
$bb umount -l /oldroot/mnt/.ro 2>/dev/null
$bb umount -l /oldroot 2>/dev/null
$bb sync
echo "ucernvm: root detached, scratch disk released; $1"
case "$1" in
    reboot) $bb reboot -f ;;
    halt) $bb halt -f ;;
    *) $bb poweroff -f ;;
esac
"""


def install_shutdown_handback(state: BootState) -> None:
    """Fill the new root's /run/initramfs, its own small tmpfs: pivot_root(2) needs a mount point."""
    system, new_root = state.system, state.new_root
    directory = new_root / "run" / "initramfs"
    system.do(MakeDirs(str(directory)))
    system.do(Mount("tmpfs", str(directory), "tmpfs", "mode=0755,size=16m", MS_NOSUID | MS_NODEV))
    system.do(MakeDirs(str(directory / "bin")))
    busybox = system.path(BUSYBOX)
    if busybox.exists():
        system.do(WriteFile(str(directory / "bin" / "busybox"), busybox.read_bytes(), 0o755))
    system.do(WriteFile(str(directory / "shutdown"), SHUTDOWN_SCRIPT.encode(), 0o755))
    pids = f"{state.fuse_pid}\n" if state.fuse_pid else ""
    system.do(WriteFile(str(directory / "ucernvm.pids"), pids.encode()))
    # µCernVM's file for the OS's own halt scripts (not systemd's): the processes they must not kill.
    state.do_or_warn(f"/.cvmfs_pids {ON_SCRATCH}",
                     WriteFile(str(new_root / ".cvmfs_pids"), pids.encode()))
