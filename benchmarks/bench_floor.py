"""The boot floor: the Debian appliance from a local virtio disk, cold (first boot) and warm (second).

Usage: python benchmarks/bench_floor.py [--rounds 2] [--keep DIR]

Each round boots a fresh copy of the root disk twice with the same NoCloud seed. Figures are guest
uptime (s) at the markers the root prints (see integration/debian_os.py); under TCG they depend on
what else runs on the host, so the CPU time QEMU and other processes used during each boot is printed
too (QEMU's own CPU time is the boot's cost, nearly independent of the load).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "integration"))

from debian_guest import guest_context  # noqa: E402
from debian_os import build_root  # noqa: E402
from floor import FloorRun, boot_floor, floor_media, fresh_disk, seed_iso  # noqa: E402

MARKS = (("systemd-start", "kernel -> systemd"), ("multi-user.target", "kernel -> multi-user.target"),
         ("cloud-final", "kernel -> cloud-init done"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--keep", type=Path, help="keep disks and console logs in this directory")
    args = parser.parse_args()

    root = build_root(progress=print)
    info = root.info
    print(f"root {info.key}: {info.packages} packages, {info.entries} entries, {info.bytes / 1e6:.0f} MB, "
          f"built in {info.seconds} s; initrd {root.initrd.stat().st_size / 1e6:.1f} MB")
    media = floor_media(root)
    runs: dict[str, list[FloorRun]] = {"cold": [], "warm": []}
    with tempfile.TemporaryDirectory(prefix="bench-floor-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        seed = seed_iso(work / "seed.iso", guest_context())
        for number in range(args.rounds):
            disk = fresh_disk(media, work / f"root-{number}.ext4")
            for kind in ("cold", "warm"):
                run = boot_floor(media, disk, seed, serial_log=work / f"{kind}-{number}.log")
                if run.returncode != 0 or run.report.failed_checks:
                    print(f"{kind} boot {number} failed: QEMU {run.returncode}, checks {run.report.failed_checks}")
                    return 1
                runs[kind].append(run)
                marks = "  ".join(f"{run.report.marks[m]:6.2f}" for m, _ in MARKS)
                print(f"{kind} {number}: {marks}  host {run.host_seconds:6.2f} s; CPU s: QEMU "
                      f"{run.qemu_cpu_seconds:5.1f}, other processes {run.others_cpu_seconds:5.1f}")
            if not args.keep:
                (work / f"root-{number}.ext4").unlink()

    print(f"\nmedian of {args.rounds}, guest uptime (s), accel {runs['cold'][0].accel}:   cold     warm")
    for mark, label in MARKS:
        cold, warm = (statistics.median(r.report.marks[mark] for r in runs[k]) for k in ("cold", "warm"))
        print(f"  {label:36} {cold:7.2f}  {warm:7.2f}")
    for attribute, label in (("host_seconds", "host: QEMU start -> exit"), ("qemu_cpu_seconds", "host: CPU s of QEMU"),
                             ("others_cpu_seconds", "host: CPU s of other processes")):
        cold, warm = (statistics.median(getattr(r, attribute) for r in runs[k]) for k in ("cold", "warm"))
        print(f"  {label:36} {cold:7.2f}  {warm:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
