"""``ucernvm umount MOUNTPOINT``: unmount a snapshot; its daemon then exits."""

from __future__ import annotations

import argparse

from ucernvm.client.fuse.kernel import unmount


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "umount",
        help="unmount a snapshot mounted by `ucernvm mount`",
        description="Unmount MOUNTPOINT; the FUSE daemon serving it stops. With --lazy the mount is detached "
        "even while files are open.",
    )
    parser.add_argument("mountpoint", metavar="MOUNTPOINT")
    parser.add_argument("--lazy", action="store_true", help="detach now, even if busy")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    unmount(args.mountpoint, lazy=args.lazy)
    return 0
