"""``ucernvm launch``: boot an image in QEMU with disks, a context CD and user networking."""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
from pathlib import Path

from ucernvm.context.iso import read_user_data, write_context_iso
from ucernvm.launch.accel import ACCELS
from ucernvm.launch.media import is_iso9660, parse_size
from ucernvm.launch.qemu import BASE_CMDLINE, MACHINES, LaunchError, LaunchOptions, Vm

TIMEOUT_EXIT = 124  # as timeout(1)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "launch",
        help="boot an image in QEMU",
        description="Boot a `ucernvm build` image in QEMU: serial console on stdout, user networking "
                    "(the host is 10.0.2.2 for the guest; with --isolated only the --guest-forward services "
                    "are), virtio disks, an optional context CD-ROM. "
                    "Under TCG the PVH vmlinux is booted, with KVM the bzImage. The exit status is "
                    f"QEMU's ({TIMEOUT_EXIT} after --timeout). QEMU ends with the launcher, even one that is killed.",
    )
    parser.add_argument("--image", type=Path, required=True, metavar="DIR", help="a `ucernvm build` output")
    parser.add_argument("--disk", type=Path, action="append", default=[], metavar="PATH",
                        help="a disk image attached as virtio-blk (repeatable; raw, or qcow2 by suffix)")
    parser.add_argument("--disk-size", metavar="SIZE",
                        help="create missing --disk files as sparse raw disks of SIZE (e.g. 20G) once the rest was checked; "
                             "without --disk, a temporary disk deleted afterwards")
    parser.add_argument("--context", type=Path, metavar="USER_DATA|ISO",
                        help="user-data (a public-contexts .context file is converted), written to a context ISO "
                        "in the cernvm-launch layout as `ucernvm context` writes it, or such an ISO; attached as a "
                        "CD-ROM")
    parser.add_argument("--cmdline", default="quiet",
                        help=f"kernel parameters after '{BASE_CMDLINE}' (default: %(default)s)")
    parser.add_argument("--serial-log", type=Path, metavar="FILE", help="also write the console to FILE")
    parser.add_argument("-q", "--quiet", action="store_true", help="do not echo the console on stdout")
    parser.add_argument("--memory", type=int, default=1024, metavar="MB", help="guest RAM (default: %(default)s)")
    parser.add_argument("--smp", type=int, default=2, metavar="N", help="guest CPUs (default: %(default)s)")
    parser.add_argument("--machine", choices=MACHINES, default=LaunchOptions.machine,
                        help="QEMU machine type (default: %(default)s, without its SATA controller unless --context "
                        "needs it for the CD-ROM; pc is the older i440FX)")
    parser.add_argument("--cpu", metavar="MODEL",
                        help="QEMU CPU model (default: the host's under KVM; under TCG qemu64 with RDRAND, "
                        "x86-64-v1: an OS that needs x86-64-v2, such as the EL9 family, wants Nehalem,+rdrand)")
    parser.add_argument("--accel", choices=ACCELS, default="auto",
                        help="auto: KVM if a canary boot works on this host (cached), else TCG")
    parser.add_argument("--timeout", type=float, metavar="S", help="kill QEMU after S seconds")
    parser.add_argument("--net-forward", action="append", default=[], metavar="PROTO:HOSTPORT:GUESTPORT",
                        help="forward 127.0.0.1:HOSTPORT to the guest (repeatable), e.g. tcp:8022:22")
    parser.add_argument("--isolated", action="store_true",
                        help="the guest gets a DHCP lease and reaches nothing but its --guest-forward services "
                             "(no default route, no DNS; the DHCP server moves to 10.0.2.1)")
    parser.add_argument("--guest-forward", action="append", default=[], metavar="GUEST_IP:PORT=HOST_IP:PORT",
                        help="relay the guest's TCP connections to GUEST_IP:PORT to HOST_IP:PORT on the host "
                             "(repeatable), e.g. 10.0.2.2:8000=127.0.0.1:8000 (10.0.2.2 needs --isolated)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Killed by a signal's default action, the launcher would leave its temporary disk and context ISO
    # behind (QEMU itself ends with it in any case): an exit unwinds, stopping QEMU and removing them.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _exit_on_signal)
    with tempfile.TemporaryDirectory(prefix="ucernvm-launch-") as scratch:
        disk_size = parse_size(args.disk_size) if args.disk_size else None
        disks = args.disk or ([Path(scratch) / "scratch.raw"] if disk_size else [])
        options = LaunchOptions(
            image=args.image,
            disks=tuple(disks),
            disk_size=disk_size,
            context=_context_iso(args.context, Path(scratch)),
            cmdline=args.cmdline,
            memory=args.memory,
            smp=args.smp,
            machine=args.machine,
            cpu=args.cpu,
            accel=args.accel,
            net_forwards=tuple(args.net_forward),
            isolated=args.isolated,
            guest_forwards=tuple(args.guest_forward),
            serial_log=args.serial_log,
            interactive=not args.quiet and sys.stdin.isatty(),
        )
        with Vm(options, echo=None if args.quiet else sys.stdout) as vm:
            assert vm.choice is not None
            print(f"ucernvm: launch: accel {vm.accel} ({vm.choice.reason})", file=sys.stderr, flush=True)
            try:
                code = vm.wait(args.timeout)
            except LaunchError as error:
                print(f"ucernvm: launch: {error.message}", file=sys.stderr)
                return TIMEOUT_EXIT
        if code != 0 and vm.stderr.strip():
            print(f"ucernvm: launch: QEMU exited {code}: {vm.stderr.strip().splitlines()[-1]}", file=sys.stderr)
        return code


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # the shell's status for a process ended by the signal


def _context_iso(context: Path | None, scratch: Path) -> Path | None:
    """The ISO to attach for ``--context``: the file itself if it is one, else one made of its user-data (as
    cernvm-launch makes one of the user-data it is given)."""
    if context is None or not context.is_file() or is_iso9660(context):
        return context  # the launcher's checks name a missing file
    user_data, warnings = read_user_data(context)
    for warning in warnings:
        print(f"ucernvm: launch: warning: {warning}", file=sys.stderr)
    iso = scratch / "context.iso"
    label = write_context_iso(iso, user_data)
    print(f"ucernvm: launch: context {context} ({len(user_data)} bytes of user-data) on a CD labelled {label}",
          file=sys.stderr)
    return iso
