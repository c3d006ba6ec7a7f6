"""``ucernvm umount MOUNTPOINT``: unmount a snapshot; its daemon then exits."""

from __future__ import annotations

import argparse
import errno
import os
import select
import sys
import threading

from ucernvm.client.fuse.kernel import mounted_file_system, unmount
from ucernvm.errors import MountError

# What fusermount -u unmounts: fuse and fuseblk mounts, with a subtype (fuse.cvmfs, fuseblk.ntfs) or without.
FUSE_TYPES = ("fuse", "fuseblk")
SNAPSHOT_TYPE = "fuse.cvmfs"  # a snapshot's mount, as cvmfs2's
ASK_WAIT = 2.0  # seconds the mount's daemon has to name itself (user.pid) before the unmount: a hung one is not waited for
EXIT_WAIT = 10.0  # seconds umount waits for the daemon of the mount to end once unmounted


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "umount",
        help="unmount a snapshot mounted by `ucernvm mount`",
        description="Unmount MOUNTPOINT; the FUSE daemon serving it stops, and the command returns once it has "
        f"ended (up to {EXIT_WAIT:g} s, then a warning): its cache is free for the next mount. With --lazy the "
        "mount is detached even while files are open, and the daemon, which serves them until they are closed, "
        "is not waited for. Only a FUSE file system is unmounted, as fusermount -u does: anything else mounted "
        "there is left alone.",
    )
    parser.add_argument("mountpoint", metavar="MOUNTPOINT")
    parser.add_argument("--lazy", action="store_true", help="detach now, even if busy")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # mountinfo names mount points without symlinks; realpath copes with a mount whose daemon is gone.
    path = os.path.realpath(args.mountpoint)
    mounted = mounted_file_system(path)
    if mounted is None:
        raise MountError(f"{args.mountpoint} is not a mount point")
    file_system_type = mounted[1]
    if file_system_type.split(".", 1)[0] not in FUSE_TYPES:
        raise MountError(f"{path} holds a {file_system_type} file system, not a snapshot mounted by ucernvm",
                         hint="umount(8) unmounts other file systems")
    # A snapshot's daemon, ucernvm's or cvmfs2, names itself (user.pid); another FUSE file system's attribute of
    # that name could name any process.
    daemon = _daemon(path) if file_system_type == SNAPSHOT_TYPE and not args.lazy else None
    try:
        _unmount(path, args.lazy)
        if daemon is not None and not _ended(daemon[1], EXIT_WAIT):
            print(f"ucernvm: umount: warning: the daemon of {path} (pid {daemon[0]}) still runs {EXIT_WAIT:g} s after "
                  "the unmount: its cache stays in use until it ends", file=sys.stderr)
    finally:
        if daemon is not None:
            os.close(daemon[1])
    return 0


def _unmount(path: str, lazy: bool) -> None:
    try:
        unmount(path, lazy=lazy)
    except MountError as error:
        if error.message.endswith(os.strerror(errno.EBUSY)) and not error.hint:
            error.hint = ("a process has a file or directory open there (its current directory counts): "
                          "end it, or detach the mount now with --lazy")
        raise


def _daemon(path: str) -> tuple[int, int] | None:
    """The pid of the daemon serving the snapshot mounted at ``path``, with a pidfd on it, taken while it serves
    so that a reused pid is never waited for; None for a daemon that does not answer within ASK_WAIT (hung: only
    unmounted, not waited for)."""
    answer: list[bytes] = []
    asking = threading.Thread(target=_ask_pid, args=(path, answer), daemon=True)
    asking.start()
    asking.join(ASK_WAIT)
    try:
        pid = int(answer[0]) if answer else 0
        return (pid, os.pidfd_open(pid)) if pid > 0 else None
    except (ValueError, OSError):  # no number, or gone already
        return None


def _ask_pid(path: str, answer: list[bytes]) -> None:
    try:
        answer.append(os.getxattr(path, "user.pid"))
    except OSError:  # no daemon serves the mount, or it keeps no attributes
        pass


def _ended(pidfd: int, timeout: float) -> bool:
    """Whether the process ended (its files, the cache's lock among them, closed) within ``timeout`` seconds."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(timeout * 1000))
