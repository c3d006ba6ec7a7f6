"""Native import cost of the ways the network stage could use pyroute2, printed as one table.

Each candidate is imported by a fresh interpreter started as the image's /init starts it
(``python -I -S``), REPEAT times; the table shows the fastest and the median run, alone and on top
of the other boot stages (the modules ucernvm.boot.stages names besides the network stage: the cost
the candidate adds to a boot), with the number of modules each adds. Under QEMU TCG an import costs
20-30 times its native time on this machine (``--tcg`` below measured it; earlier runs found the
whole of pyroute2 at 2.6-4.3 s in a TCG guest against 0.2 s natively).

    .venv/bin/python benchmarks/bench_network_imports.py [--repeat 7] [--list-modules]
    .venv/bin/python benchmarks/bench_network_imports.py --tcg [--repeat 2]

pyroute2-minimal (no DHCP module) is installed into a temporary directory with pip for its row; the
row is skipped when pip cannot fetch it. ``--tcg`` measures instead of estimating: it builds an image
(kernel via apt, as ``ucernvm build``) whose /init is ``guest_main`` below, boots it under QEMU with
TCG, and prints the same rows as timed inside the guest (in the boot column), then the network stage
itself against QEMU's DHCP server. It takes minutes; numbers from a loaded host run high.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SITE_PACKAGES = sysconfig.get_path("purelib")
sys.path.insert(0, str(REPO_ROOT))

from ucernvm.boot.stages import MODULES as STAGE_MODULES  # noqa: E402
MINIMAL = "pyroute2-minimal==0.9.7"
GUEST_MARKER = "BENCH-NETWORK-IMPORTS"
# For the --tcg image: the whole package and pyroute2's client, which the guest imports in subprocesses
# (first, so that they load before the network stage defers pyroute2's __init__ in the build probe),
# then the boot loader with all its stages.
IMAGE_MODULES = ("pyroute2", "pyroute2.dhcp.client", "pyroute2.iproute.linux", "ucernvm.boot.pid1", *STAGE_MODULES)

NETWORK_STAGE = "ucernvm.boot.network"
FRAMEWORK = "import ucernvm.boot.state, ucernvm.boot.system, ucernvm.boot.log, ucernvm.config"
BYPASS = "from ucernvm.boot import net_pyroute2; net_pyroute2.load(); "
CANDIDATES = {
    "whole package (import pyroute2)": "import pyroute2",
    "pyroute2-minimal 0.9.7 package (no DHCP)": "import pyroute2",
    "DHCP client + AsyncIPRoute": "from pyroute2.dhcp.client import AsyncDHCPClient; "
                                  "from pyroute2.iproute.linux import AsyncIPRoute",
    "DHCP client + AsyncIPRoute, __init__ bypassed": BYPASS + "from pyroute2.dhcp.client import AsyncDHCPClient; "
                                                     "from pyroute2.iproute.linux import AsyncIPRoute",
    "message classes, __init__ run": "from pyroute2.dhcp.dhcp4msg import dhcp4msg; import pyroute2.protocols, "
                                     "pyroute2.ext.bpf, pyroute2.netlink.rtnl.ifinfmsg, pyroute2.netlink.rtnl.ifaddrmsg, "
                                     "pyroute2.netlink.rtnl.rtmsg",
    "the stage: message classes, __init__ bypassed": f"import {NETWORK_STAGE}",
    "floor: socket, struct, selectors (no pyroute2)": "import socket, struct, selectors",
}  # fmt: skip

_PROGRAM = """
import sys, time
sys.path[:0] = {paths!r}
{baseline}
before = set(sys.modules)
start = time.perf_counter()
{candidate}
print(time.perf_counter() - start, len(set(sys.modules) - before))
if {list_modules!r}:
    print(*sorted(set(sys.modules) - before), sep="\\n", file=sys.stderr)
"""


def other_stages() -> list[str]:
    """The modules of the boot stages, except the network stage."""
    return [module for module in STAGE_MODULES if module != NETWORK_STAGE]


def baseline_statement(modules: list[str], paths: list[str]) -> str:
    """``import`` of *modules*; of the stage framework alone when those do not import here."""
    statement = f"import {', '.join(modules)}"
    probe = f"import sys; sys.path[:0] = {paths!r}; {statement}"
    result = subprocess.run([sys.executable, "-I", "-S", "-c", probe], capture_output=True, text=True)
    if result.returncode != 0:
        error = (result.stderr.strip().splitlines() or ["?"])[-1]
        print(f"note: the other stages do not import ({error}); measuring on top of the stage framework only\n")
        return FRAMEWORK
    return statement


def measure(candidate: str, paths: list[str], baseline: str, repeat: int) -> tuple[list[float], int]:
    seconds, added = [], 0
    program = _PROGRAM.format(paths=paths, baseline=baseline, candidate=candidate, list_modules=False)
    for _ in range(repeat):
        result = subprocess.run([sys.executable, "-I", "-S", "-c", program], capture_output=True, text=True, check=True)
        elapsed, count = result.stdout.split()
        seconds.append(float(elapsed))
        added = int(count)
    return seconds, added


def minimal_package(directory: Path) -> Path | None:
    result = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(directory), MINIMAL],
                            capture_output=True, text=True)  # fmt: skip
    return directory if result.returncode == 0 and (directory / "pyroute2").is_dir() else None


def guest_main() -> int:
    """/init of the --tcg image: the candidates timed in the guest, the network stage run, power off."""
    from ucernvm.boot.early import early_stage
    from ucernvm.boot.kmod import modules_stage
    from ucernvm.boot.log import BootLog
    from ucernvm.boot.rescue import panic
    from ucernvm.boot.state import BootState
    from ucernvm.boot.system import RealSystem

    state = BootState(RealSystem(), BootLog(sys.stdout, kmsg=True))
    result: dict[str, object] = {}
    try:
        early_stage(state)
        modules_stage(state)
        words = dict(word.partition("=")[::2] for word in state.cmdline.split())
        repeat = int(words.get("bench.repeat", "2"))
        baseline = baseline_statement(other_stages(), [])
        measure("import pyroute2", [], baseline, 1)  # warm the translation cache of the interpreter itself
        for name, candidate in CANDIDATES.items():
            if "minimal" not in name:
                result[name] = measure(candidate, [], baseline, repeat)
        start = time.perf_counter()
        from ucernvm.boot.network import network_stage

        imported = time.perf_counter()
        network_stage(state)
        result["stage import in the init, s"] = imported - start
        result["stage run, s"] = time.perf_counter() - imported
        result["lease"] = state.facts.get("network")
    except Exception as error:  # noqa: BLE001 - reported to the host, which fails the run
        result["error"] = repr(error)
    print(f"{GUEST_MARKER} {json.dumps(result)}", flush=True)
    panic(state)
    return 1


def run_in_guest(repeat: int) -> int:
    from ucernvm.image.builder import BuildOptions, build_image
    from ucernvm.launch.qemu import LaunchOptions, Vm

    with tempfile.TemporaryDirectory(prefix="bench-network-imports-") as scratch:
        image = Path(scratch) / "image"
        print("building the image...", flush=True)
        build_image(BuildOptions(output=image, init="bench_network_imports:guest_main", init_paths=(REPO_ROOT / "benchmarks",)))
        print("booting it...", flush=True)
        with Vm(LaunchOptions(image=image, cmdline=f"quiet ucernvm.panic=poweroff bench.repeat={repeat}")) as vm:
            vm.wait(timeout=1800)
    found = re.search(rf"^{GUEST_MARKER} (.*)$", vm.serial, re.MULTILINE)
    if found is None:
        print(vm.serial[-3000:], file=sys.stderr)
        return 1
    result = json.loads(found.group(1))
    print(f"\nin the guest (accel {vm.accel}), {repeat} runs each, on top of the other boot stages:")
    for name, value in result.items():
        if isinstance(value, list) and len(value) == 2 and isinstance(value[0], list):
            seconds, modules = value
            print(f"{name:48} {min(seconds):7.2f} s fastest {statistics.median(seconds):7.2f} s median {modules:5d} modules")
        else:
            print(f"{name:48} {value}")
    return 1 if "error" in result else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, help="fresh interpreters per figure (default 7; 2 with --tcg)")
    parser.add_argument("--list-modules", action="store_true", help="also list the modules the stage adds to the boot")
    parser.add_argument("--tcg", action="store_true", help="measure inside a QEMU TCG guest instead (minutes)")
    args = parser.parse_args()
    if args.tcg:
        return run_in_guest(args.repeat or 2)
    args.repeat = args.repeat or 7

    base = [str(REPO_ROOT), SITE_PACKAGES]
    baseline = baseline_statement(other_stages(), base)
    print(f"python {sys.version.split()[0]} -I -S, {args.repeat} runs each; ms = fastest / median; "
          f"'+mods' = modules added; TCG estimate = 20-30 x the fastest run in the boot (the ratio --tcg measured here)\n")  # fmt: skip
    header = f"{'candidate':48} {'alone ms':>15} {'+mods':>6} {'in the boot ms':>19} {'+mods':>6} {'TCG est. s':>11}"
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory(prefix="bench-pyroute2-minimal-") as scratch:
        minimal = minimal_package(Path(scratch))
        for name, candidate in CANDIDATES.items():
            paths = base
            if "minimal" in name:
                if minimal is None:
                    print(f"{name:48} skipped: pip could not install {MINIMAL}")
                    continue
                paths = [str(REPO_ROOT), str(minimal), SITE_PACKAGES]  # ahead of the full pyroute2
            alone, alone_modules = measure(candidate, paths, "", args.repeat)
            after, after_modules = measure(candidate, paths, baseline, args.repeat)
            fastest = min(after)
            print(f"{name:48} {min(alone) * 1e3:6.1f} / {statistics.median(alone) * 1e3:6.1f} {alone_modules:6d} "
                  f"{fastest * 1e3:8.1f} / {statistics.median(after) * 1e3:8.1f} {after_modules:6d} "
                  f"{fastest * 20:5.2f}-{fastest * 30:4.2f}")  # fmt: skip
    if args.list_modules:
        program = _PROGRAM.format(paths=base, baseline=baseline, candidate=f"import {NETWORK_STAGE}", list_modules=True)
        result = subprocess.run([sys.executable, "-I", "-S", "-c", program], capture_output=True, text=True, check=True)
        print(f"\nmodules `import {NETWORK_STAGE}` adds to the other stages:")
        print(result.stderr, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
