"""``ucernvm umount MOUNTPOINT``: unmount a snapshot; its daemon then exits."""

from __future__ import annotations

import argparse
import errno
import os

from ucernvm.client.fuse.kernel import mounted_file_system, unmount
from ucernvm.errors import MountError

# What fusermount -u unmounts: fuse and fuseblk mounts, with a subtype (fuse.cvmfs, fuseblk.ntfs) or without.
FUSE_TYPES = ("fuse", "fuseblk")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "umount",
        help="unmount a snapshot mounted by `ucernvm mount`",
        description="Unmount MOUNTPOINT; the FUSE daemon serving it stops. With --lazy the mount is detached "
        "even while files are open. Only a FUSE file system is unmounted, as fusermount -u does: anything "
        "else mounted there is left alone.",
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
    try:
        unmount(path, lazy=args.lazy)
    except MountError as error:
        if error.message.endswith(os.strerror(errno.EBUSY)) and not error.hint:
            error.hint = ("a process has a file or directory open there (its current directory counts): "
                          "end it, or detach the mount now with --lazy")
        raise
    return 0
