"""Boot benchmark: the image boots the demo OS from the embedded stratum server under QEMU.

Builds the image with the test keys, publishes the busybox demo OS, serves it on 127.0.0.1 and boots it
isolated (the guest reaches only the stratum server, as 10.0.2.2), ``ucernvm.context=none``: per run a
cold boot (empty scratch disk) and a warm one (the second boot on that disk). Then the same pipeline
natively on this host: ``ucernvm --dry-run`` against the same server, timed with the child's rusage.

Usage: python integration/bench_boot.py [--runs N] [--accel auto|kvm|tcg] [--workdir DIR]
                                       [--kernel PATH | --kernel-source [PACKAGE]] [--compression C]
                                       [--machine q35|pc]

Every time is in seconds. Guest times are the guest kernel's clock (0 = kernel start): the kernel's own
steps come from its log (the OS prints it with dmesg after the measured boot, so the boot stays
``quiet``), the stages from the boot report, "OS init" from the OS's own init. Host times count from
QEMU's start.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from boot_env import (BOOT_TIME_GOAL, FQRN, BootRepository, BootResult, boot, build_boot_image, make_repository,
                      new_disk)
from ucernvm.image.builder import BuildOptions
from ucernvm.image.compress import COMPRESSORS
from ucernvm.image.kernel_source import DEFAULT_SOURCE_PACKAGE
from ucernvm.launch import LaunchOptions
from ucernvm.launch.qemu import MACHINES

STAGES = ("early", "modules", "network", "clock", "context", "storage", "servers", "snapshot", "mount", "handoff")
# After the figures are on the console, the OS prints its kernel log (the demo OS runs /test-hook).
KMSG_HOOK = "dmesg | while read -r line; do echo \"UCERNVM-KMSG $line\"; done\n"
_KMSG_RE = re.compile(r"^UCERNVM-KMSG \[\s*(\d+\.\d+)\] (.*)$", re.MULTILINE)
KERNEL_STEPS = (  # (figure, first kernel log line starting with one of these texts); in boot order
    ("kernel: initramfs unpack starts", ("Trying to unpack rootfs image as initramfs", "Unpacking initramfs")),
    ("kernel: initramfs unpacked", ("Freeing initrd memory",)),
    ("kernel: Run /init", ("Run /init as init process",)),
)
COUNTS = ("bytes fetched", "requests")


@dataclass
class Figures:
    label: str
    values: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def boot_figures(label: str, result: BootResult) -> Figures:
    if result.code != 0 or result.marker("UCERNVM-OS-INIT") is None:
        raise SystemExit(f"{label}: the boot failed (QEMU exit {result.code}):\n{result.tail}")
    report = result.report
    stages = {stage["name"]: stage for stage in report["stages"]}
    os_init = float(result.marker("UCERNVM-OS-INIT") or "nan")
    kmsg = [(float(stamp), text) for stamp, text in _KMSG_RE.findall(result.serial)]
    values: dict[str, float] = {}
    for figure, prefixes in KERNEL_STEPS:
        values[figure] = next((stamp for stamp, text in kmsg if text.startswith(prefixes)), float("nan"))
    run_init_at = values["kernel: Run /init"]
    values["/init → first stage"] = report["stages"][0]["start"] - run_init_at
    for name in STAGES:
        stage = stages.get(name)
        if stage is None:
            continue
        # The report is written during the handoff: it ends when the OS's init runs.
        values[f"stage {name}"] = os_init - stage["start"] if name == "handoff" else stage["seconds"]
    # PID 1 imports the code of the stages after the background ones while those run (ahead of them).
    background = report.get("background", {})
    ahead = background.get("imported_ahead", {}).get("seconds", 0.0)
    values["of the stages: importing their code"] = sum(stage.get("imports", 0.0) for stage in report["stages"]) + ahead
    values["of which imported ahead, alongside the background stages"] = ahead
    values["PID 1 waiting for the background stages, after that"] = background.get("waited", float("nan"))
    host_os_init = result.vm.line_time("UCERNVM-OS-INIT") or float("nan")
    values |= {
        "/init → OS init (the loader's work)": os_init - run_init_at,
        "kernel start → OS init": os_init,
        "host: QEMU start → OS init": host_os_init,
        "host: before the kernel (wall − guest clock)": host_os_init - os_init,
        "bytes fetched": report.get("transfer", {}).get("bytes_fetched", 0),
        "requests": report.get("transfer", {}).get("requests", 0),
    }
    modules = report.get("modules", {})
    notes = [f"snapshot {report['snapshot'].get('tag')}; slowest modules: {modules.get('slowest')}; "
             f"module phases: {modules.get('phases')}; slowest actions: {report.get('slowest_actions')}"]
    return Figures(label, values, notes)


def native_figures(label: str, repository: BootRepository, keys: Path, cmdline: str) -> Figures:
    """The pipeline as ``ucernvm --dry-run`` on the host, against the same server (over loopback)."""
    native = cmdline.replace(repository.url(), repository.url("127.0.0.1"))
    argv = [sys.executable, "-m", "ucernvm", "--dry-run", "--json", "--keys", str(keys), "--cmdline", native]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    result = subprocess.run(argv, capture_output=True, check=False)
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"the dry run failed:\n{result.stderr.decode()[-3000:]}\n{result.stdout.decode()[-2000:]}")
    report = json.loads(result.stdout)
    values = {f"stage {stage['name']}": stage["seconds"] for stage in report["stages"]}
    values |= {
        "host: process CPU (user+sys)": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "host: process wall": wall,
        "bytes fetched": report.get("transfer", {}).get("bytes_fetched", 0),
    }
    return Figures(label, values)


def table(columns: list[Figures]) -> str:
    """One column per run, then per kind (cold, warm, native) the mean and the best (per row) of the runs."""
    kinds = [(kind, [c for c in columns if c.label.startswith(kind)]) for kind in ("cold", "warm", "native")]
    rows: list[str] = []
    for column in columns:
        rows += [key for key in column.values if key not in rows]
    header = ["figure", *(c.label for c in columns)]
    header += [f"{kind} {how}" for kind, group in kinds if group for how in ("mean", "best")]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        count = row in COUNTS
        cells = [_cell(c.values.get(row), count) for c in columns]
        for _, group in kinds:
            if group:
                present = [c.values[row] for c in group if row in c.values]
                cells.append(_cell(statistics.fmean(present) if present else None, count))
                cells.append(_cell(min(present) if present else None, count))
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(value: float | None, count: bool) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if count else f"{value:.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=2, help="cold+warm boot pairs (default: %(default)s)")
    parser.add_argument("--accel", default="auto", choices=("auto", "kvm", "tcg"))
    parser.add_argument("--workdir", type=Path, help="keep everything here (default: a temporary directory)")
    kernel = parser.add_mutually_exclusive_group()
    kernel.add_argument("--kernel", type=Path, metavar="PATH", help="as `ucernvm build --kernel`")
    kernel.add_argument("--kernel-source", nargs="?", const=DEFAULT_SOURCE_PACKAGE, metavar="PACKAGE",
                        help="as `ucernvm build --kernel-source`: the ucernvm kernel, every boot driver built in")
    parser.add_argument("--compression", choices=sorted(COMPRESSORS), default=BuildOptions.compression,
                        help="as `ucernvm build --compression` (default: %(default)s)")
    parser.add_argument("--machine", choices=MACHINES, default=LaunchOptions.machine,
                        help="QEMU machine type (default: %(default)s)")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-boot-") as scratch:
        work = (args.workdir or Path(scratch)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        repository = make_repository(Path(tempfile.mkdtemp(prefix="repo-", dir=work)))
        try:
            (repository.os_tree / "test-hook").write_text(KMSG_HOOK)
            repository.publish("bench")
            started = time.monotonic()
            image = build_boot_image(work / "image", repository.keys, kernel=args.kernel,
                                     kernel_source=args.kernel_source, compression=args.compression)
            print(f"image built in {time.monotonic() - started:.1f} s: {image.output}", flush=True)
            cmdline = repository.cmdline("ucernvm.context=none")
            columns: list[Figures] = []
            accels = set()
            for run in range(1, args.runs + 1):
                disk = work / f"disk-{run}.raw"
                disk.unlink(missing_ok=True)
                new_disk(disk)
                for kind in ("cold", "warm"):
                    label = f"{kind} {run}"
                    result = boot(image.output, disk, cmdline, work / f"{kind}-{run}.log", ports=repository.ports,
                                  accel=args.accel, machine=args.machine)
                    columns.append(boot_figures(label, result))
                    accels.add(f"{result.vm.accel} ({result.vm.choice.reason if result.vm.choice else ''})")
                    print(f"{label}: OS init at {columns[-1].values['kernel start → OS init']:.2f} s guest", flush=True)
            for run in range(1, args.runs + 1):
                columns.append(native_figures(f"native {run}", repository, image.output.parent / "image-keys",
                                              cmdline))
        finally:
            repository.server.stop()
    print(f"\naccelerator: {'; '.join(sorted(accels))}")
    print(f"load average (1 min) before {load_before:.2f}, after {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print(f"machine: {args.machine}; image: {image.manifest['kernel']['source']}, initramfs {args.compression}")
    print(f"kernel options: {cmdline}\n")
    print(table(columns))
    loader = statistics.fmean(c.values["/init → OS init (the loader's work)"] for c in columns if c.label.startswith("cold"))
    native_cpu = statistics.fmean(c.values["host: process CPU (user+sys)"] for c in columns if c.label.startswith("native"))
    print(f"\ncold /init → OS init {loader:.2f} s in the guest against {native_cpu:.2f} s of CPU for the same "
          f"pipeline natively (with interpreter start-up): {loader / native_cpu:.1f}x")
    for kind, goal in BOOT_TIME_GOAL.items():
        times = [c.values["kernel start → OS init"] for c in columns if c.label.startswith(kind)]
        met = sum(seconds <= goal for seconds in times)
        print(f"{kind}: kernel start → OS init within the {goal:.0f} s goal in {met} of {len(times)} boots")
    for column in columns:
        for note in column.notes:
            print(f"{column.label}: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
