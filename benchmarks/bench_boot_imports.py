"""What each boot stage's imports cost, natively and under QEMU's user-mode emulation.

Under TCG the boot's Python imports cost 8-15x their native time, mostly QEMU translating code the
interpreter runs for the first time; a QEMU system boot measures them only as a whole and with the
host's noise. ``qemu-x86_64`` (Debian's qemu-user package) runs the same interpreter under the same
translator without a VM: a fresh interpreter, as the image starts it (``-I -S``), imports PID 1's
modules and then each stage's in the boot's order, and reports the milliseconds of each.

    .venv/bin/python benchmarks/bench_boot_imports.py [--runs 3] [--importtime]

``--importtime`` also prints the modules of the emulated run that cost the most (``-X importtime``).
"""

from __future__ import annotations

import argparse
import shutil
import site
import statistics
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

CHILD = """
import sys, time
sys.path[:0] = sys.argv[1].split(":")
for module in sys.argv[2:]:
    started = time.perf_counter()
    __import__(module)
    print(module, (time.perf_counter() - started) * 1000)
"""


def timings(prefix: list[str], modules: list[str], extra: list[str] | None = None) -> tuple[dict[str, float], str]:
    search = ":".join([str(REPO_ROOT), *site.getsitepackages()])
    result = subprocess.run([*prefix, sys.executable, "-I", "-S", *(extra or []), "-c", CHILD, search, *modules],
                            capture_output=True, text=True, check=True)
    return {name: float(ms) for name, ms in (line.split() for line in result.stdout.splitlines())}, result.stderr


def main() -> int:
    from ucernvm.boot.stages import STAGES

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--importtime", action="store_true", help="list the costliest modules of an emulated run")
    args = parser.parse_args()
    emulator = shutil.which("qemu-x86_64")
    modules = ["ucernvm.boot.pid1", *dict.fromkeys(module for stage in STAGES for module in stage.modules)]
    runs: dict[str, list[dict[str, float]]] = {"native": [], "emulated": []}
    for _ in range(args.runs):
        runs["native"].append(timings([], modules)[0])
        if emulator:
            runs["emulated"].append(timings([emulator], modules)[0])
    columns = [kind for kind in runs if runs[kind]]
    print(f"| module | {' | '.join(f'{kind} ms (median of {len(runs[kind])})' for kind in columns)} |")
    print(f"|---|{'---|' * len(columns)}")
    for module in [*modules, "total"]:
        cells = []
        for kind in columns:
            values = [sum(run.values()) if module == "total" else run[module] for run in runs[kind]]
            cells.append(f"{statistics.median(values):.0f}")
        print(f"| {module} | {' | '.join(cells)} |")
    if not emulator:
        print("\nqemu-x86_64 not found (apt-get install qemu-user): native figures only")
    elif args.importtime:
        _, report = timings([emulator], modules, ["-X", "importtime"])
        costs = sorted(((int(line.split("|")[0].split(":")[1]), line.split("|")[2].strip())
                        for line in report.splitlines() if line.startswith("import time:") and "self [us]" not in line),
                       reverse=True)
        print("\nemulated, the costliest modules (self ms): "
              + ", ".join(f"{name} {us / 1000:.0f}" for us, name in costs[:20]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
