"""The real-OS boot time: Debian 12 with systemd and cloud-init, streamed by the image vs the floor.

Usage: sudo .venv/bin/python integration/bench_debian.py [--rounds 1] [--no-prefetch] [--layer-ab N] [--cold-ab N]

In one run: the appliance root (integration/debian_os.py, cached) is published as a tagged snapshot and
served on 127.0.0.1 (with its prefetch list, debian_stream.py, unless --no-prefetch); the image boots it
isolated with a context ISO (the same #cloud-config as the floor,
plus a ucernvm part choosing the server and the tag), cold (empty scratch disk) and warm (second boot);
then the floor boots the same root from a local virtio disk with the distribution's own initramfs, cold
and warm. Prints guest seconds from kernel start to systemd, multi-user.target and cloud-init done, and
the ratios against the floor. Targets: CernVM's < 30 s to multi-user where KVM runs; under TCG the
streamed boot ≤ 1.6x the floor cold and ≤ 1.3x warm.

``--layer-ab N`` measures the boot layer instead: one cold boot, then N pairs of warm boots, each from a
copy of the cold boot's disk, with the layer on and off (``ucernvm.boot_layer=off``) in alternating order.
``--cold-ab N``: what building the layer costs the cold boot that builds it: N pairs of cold boots, each
on an empty disk, with the layer on and off in alternating order.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from boot_env import build_boot_image, new_disk  # noqa: E402
from debian_guest import guest_context  # noqa: E402
from debian_os import DebianRoot, build_root  # noqa: E402
from debian_stream import SCRATCH_SIZE, boot_streamed, context_iso, recorded_prefetch_list, served  # noqa: E402
from floor import boot_floor_twice  # noqa: E402

MARKS = ("systemd-start", "multi-user", "cloud-final")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--no-prefetch", action="store_true", help="publish the root without its prefetch list")
    parser.add_argument("--layer-ab", type=int, metavar="N", help="N pairs of warm boots, boot layer on and off")
    parser.add_argument("--cold-ab", type=int, metavar="N", help="N pairs of cold boots, boot layer on and off")
    args = parser.parse_args()
    root = build_root(progress=print)
    prefetch_list = None if args.no_prefetch else recorded_prefetch_list(root)
    if args.layer_ab or args.cold_ab:
        layer_ab(root, prefetch_list, args.layer_ab or args.cold_ab, "warm" if args.layer_ab else "cold")
        return
    rows: list[tuple[str, dict[str, float]]] = []
    with tempfile.TemporaryDirectory(dir="/var/tmp") as scratch:
        work = Path(scratch)
        with served(root, work, prefetch_list) as (keys, server):
            image = build_boot_image(work / "image", keys)
            iso = context_iso(work / "context.iso", guest_context(), server.port)
            accel = "?"
            for round_number in range(args.rounds):
                disk = new_disk(work / f"scratch{round_number}.raw", SCRATCH_SIZE)
                for name in ("cold", "warm"):
                    report, result = boot_streamed(image.output, disk, iso, work / f"{name}.log", server)
                    accel = result.vm.accel
                    rows.append((f"streamed {name}", report.marks if not report.problems() else {}))
                    if report.daemon:
                        print(f"streamed {name}: daemon {report.daemon}")
        for round_number in range(args.rounds):
            (work / f"floor{round_number}").mkdir()
            floor = boot_floor_twice(root, work / f"floor{round_number}")
            for name, run in (("cold", floor.cold), ("warm", floor.warm)):
                rows.append((f"floor {name}", run.report.marks if not run.report.problems() else {}))
    print(f"accelerator: {accel}; guest seconds since kernel start")
    print("| boot | systemd starts | multi-user.target | cloud-init done |")
    print("|---|---|---|---|")
    for name, marks in rows:
        print(f"| {name} | " + " | ".join(f"{marks[m]:.1f}" if m in marks else "failed" for m in MARKS) + " |")
    best = {name: min((marks.get("multi-user", 1e9) for n, marks in rows if n == name), default=1e9)
            for name in {n for n, _ in rows}}
    for kind, target in (("cold", 1.6), ("warm", 1.3)):
        ratio = best[f"streamed {kind}"] / best[f"floor {kind}"]
        print(f"multi-user, streamed / floor, {kind}: {ratio:.2f} (target <= {target})")


def layer_ab(root: DebianRoot, prefetch_list: Path | None, pairs: int, kind: str) -> None:
    """Pairs of ``kind`` boots with the boot layer on and off; warm ones from copies of one cold boot's disk."""
    print("| boot | systemd starts | multi-user.target | cloud-init done | requests to the daemon | of them READ |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(dir="/var/tmp") as scratch:
        work = Path(scratch)
        with served(root, work, prefetch_list) as (keys, server):
            image = build_boot_image(work / "image", keys).output
            iso = context_iso(work / "context.iso", guest_context(), server.port)
            cold = new_disk(work / "cold.raw", SCRATCH_SIZE)
            boots = [("cold", cold, "")] if kind == "warm" else []
            for pair in range(pairs):
                order = ("on", "off") if pair % 2 == 0 else ("off", "on")
                boots += [(f"{kind}, boot layer {mode}", work / f"{kind}.raw",
                           "ucernvm.boot_layer=off" if mode == "off" else "") for mode in order]
            for name, disk, options in boots:
                if kind == "cold":
                    disk.unlink(missing_ok=True)
                    new_disk(disk, SCRATCH_SIZE)
                elif disk != cold:
                    subprocess.run(["cp", "--sparse=always", str(cold), str(disk)], check=True)
                report, _ = boot_streamed(image, disk, iso, work / "boot.log", server, options)
                requests = (report.daemon or {}).get("requests", {})
                marks = report.marks if not report.problems() else {}
                print(f"| {name} | " + " | ".join(f"{marks[m]:.1f}" if m in marks else "failed" for m in MARKS)
                      + f" | {sum(requests.values())} | {requests.get('read', 0)} |", flush=True)


if __name__ == "__main__":
    main()
