"""``ucernvm demo``: the whole chain on embedded defaults, in one work directory.

Creates the demo repository's keys, publishes the demo OS (a static busybox whose init prints the boot
report) as a tagged snapshot, serves it with the embedded stratum server on 127.0.0.1, checks it over
HTTP with the verified client, builds the boot image with the repository's public key, and boots it in
QEMU on an empty scratch disk. The VM is isolated: it reaches the stratum server (as 10.0.2.2) and
nothing else. Prints the boot timeline the OS found in /run/ucernvm/report.json and the accelerator.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ucernvm.boot.report import render_text, to_json
from ucernvm.client.fetcher import HttpSource
from ucernvm.client.repository import Repository
from ucernvm.cvmfs.publisher import Publisher, PublishOptions
from ucernvm.cvmfs.signing import generate_repository_keys
from ucernvm.cvmfs.trust import load_master_keys
from ucernvm.image.builder import BuildOptions, build_image
from ucernvm.image.demo_os import console_marker, console_report, make_demo_os
from ucernvm.image.kernel_source import DEFAULT_SOURCE_PACKAGE
from ucernvm.launch.accel import ACCELS
from ucernvm.launch.media import create_sparse_disk
from ucernvm.launch.qemu import LaunchError, LaunchOptions, Vm
from ucernvm.launch.usernet import HOST_ADDRESS, loopback_forwards
from ucernvm.server import StratumServer

FQRN = "demo.cern.ch"
TAG = "demo"
DISK_SIZE = 4 << 30
BOOT_TIMEOUT = 600.0  # seconds; a TCG boot on a loaded two-core machine takes about a minute


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="publish a demo OS, serve it, build the image and boot it in QEMU",
                                   description=__doc__.replace("``", "`"))
    parser.add_argument(
        "--workdir", type=Path,
        default=Path(os.path.expanduser("~")) / ".cache" / "ucernvm" / "demo",
        help="keys, OS tree, repository, image, disk, console log and report (default: %(default)s)",
    )
    parser.add_argument("--port", type=int, default=0, help="port of the stratum server (default: any free port)")
    parser.add_argument("--accel", choices=ACCELS, default="auto",
                        help="auto: KVM if a canary boot works on this host (cached), else TCG")
    parser.add_argument("--keep", action="store_true",
                        help="after the boot, keep serving the repository (for `ucernvm repo`) until Ctrl-C")
    parser.add_argument("-q", "--quiet", action="store_true", help="do not echo the VM's console")
    parser.add_argument("--kernel-source", nargs="?", const=DEFAULT_SOURCE_PACKAGE, metavar="PACKAGE",
                        help="boot the ucernvm kernel with an LZ4 initramfs (ucernvm build --kernel-source "
                        "--compression lz4): about half the boot time under emulation; the first run builds "
                        "the kernel (13-17 min on 2 cores)")
    parser.set_defaults(func=run)


class _Phases:
    """Host wall time of each step of the demo, printed at the end."""

    def __init__(self) -> None:
        self.times: list[tuple[str, float]] = []

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        print(f"== {name}", flush=True)
        started = time.monotonic()
        yield
        self.times.append((name, time.monotonic() - started))

    def table(self) -> str:
        rows = [f"  {name:<32} {seconds:7.2f} s" for name, seconds in self.times]
        rows.append(f"  {'total':<32} {sum(seconds for _, seconds in self.times):7.2f} s")
        return "\n".join(rows)


class _ConsoleEcho:
    """The VM's console on stdout, line by line, without the report JSON (rendered as a table afterwards)."""

    def __init__(self) -> None:
        self._partial = ""
        self._in_report = False

    def write(self, text: str, /) -> int:
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            if "UCERNVM-REPORT-BEGIN" in line:
                self._in_report = True
                print("  (boot report: see below)")
            elif "UCERNVM-REPORT-END" in line:
                self._in_report = False
            elif not self._in_report:
                print(f"  | {line.rstrip()}")
        return len(text)

    def flush(self) -> None:
        sys.stdout.flush()


def run(args: argparse.Namespace) -> int:
    work: Path = args.workdir.resolve()
    keys, tree, stratum, image = work / "keys", work / "os", work / "stratum", work / "image"
    phase = _Phases()

    with phase("keys and the demo OS"):
        if not (keys / f"{FQRN}.pub").exists():
            generate_repository_keys(FQRN, keys)
        make_demo_os(tree)
        print(f"keys in {keys}; OS tree in {tree}")
    with phase("publish"):
        # A new repository each run: a tag names one revision for good, and the demo's is always "demo".
        shutil.rmtree(stratum / FQRN, ignore_errors=True)
        result = Publisher(str(stratum / FQRN), FQRN, str(keys), PublishOptions(tag=TAG)).publish(str(tree))
        print(f"published {FQRN} revision {result.revision} tagged {TAG!r} ({result.files} files) into {stratum}")
    with StratumServer(stratum, port=args.port) as server:
        url = f"{server.url}/cvmfs/{FQRN}"
        with phase("serve and verify over HTTP"):
            repository = Repository(HttpSource([url]), FQRN, load_master_keys(keys / f"{FQRN}.pub"), tag=TAG)
            print(f"serving {stratum} on {server.url}; verified revision {repository.revision}, "
                  f"root catalog {repository.root_hash}")
        with phase("build the image" + (" (the ucernvm kernel)" if args.kernel_source else " (kernel via apt)")):
            options = BuildOptions(output=image, keys=keys, kernel_source=args.kernel_source,
                                   compression="lz4" if args.kernel_source else BuildOptions.compression)
            built = build_image(options,
                                progress=lambda step: print(f"  build: {step}", flush=True))
            print(f"wrote {built.output} (only {FQRN}.pub is packed from {keys})")
        with phase("boot in QEMU"):
            report, vm = _boot(work, image, server.port, args)
        print(f"\naccelerator: {vm.accel} ({vm.choice.reason if vm.choice else ''})")
        print(render_text(report), end="")
        os_init = console_marker(vm.serial, "UCERNVM-OS-INIT")
        print(f"the demo OS's init ran {os_init} s after the kernel started "
              f"({vm.line_time('UCERNVM-OS-INIT') or 0:.1f} s after QEMU started)")
        (work / "report.json").write_text(to_json(report))
        print(f"report: {work / 'report.json'} (`ucernvm report` draws its timeline); console: {work / 'console.log'}")
        print(f"\nhost time per step:\n{phase.table()}")
        if args.keep:
            _keep_serving(url, keys / f"{FQRN}.pub")
    return 0


def _boot(work: Path, image: Path, port: int, args: argparse.Namespace) -> tuple[dict, Vm]:
    disk = work / "scratch.raw"
    disk.unlink(missing_ok=True)  # an empty disk: a first boot, which picks the newest revision
    create_sparse_disk(disk, DISK_SIZE)
    url = f"http://{HOST_ADDRESS}:{port}/cvmfs/{FQRN}"
    # The VM reaches nothing but the stratum server: no context to look for, no NTP server to ask.
    cmdline = (f"quiet cvmfs_repos={FQRN} cvmfs_url={url} cvmfs_proxy=DIRECT ucernvm.context=none "
               "ucernvm.ntp=off ucernvm.panic=poweroff")
    options = LaunchOptions(image=image, disks=(disk,), cmdline=cmdline, accel=args.accel, isolated=True,
                            guest_forwards=loopback_forwards(port), serial_log=work / "console.log")
    print(f"kernel options: {cmdline}\nnetwork: isolated; 10.0.2.2:{port} is the stratum server", flush=True)
    with Vm(options, echo=None if args.quiet else _ConsoleEcho()) as vm:
        code = vm.wait(timeout=BOOT_TIMEOUT)
    report = console_report(vm.serial)
    if code != 0 or report is None:
        raise LaunchError(f"the demo OS did not boot (QEMU exited {code})",
                          hint=f"the console is in {work / 'console.log'}")
    return report, vm


def _keep_serving(url: str, key: Path) -> None:
    print(f"\nserving {url} until Ctrl-C; try:\n  ucernvm repo ls '{url}' -R -l --key {key}")
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
