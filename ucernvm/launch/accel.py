"""Choosing between KVM and TCG.

An accessible /dev/kvm is not proof that KVM works: on a nested host whose KVM is ``kvm_pvm``
QEMU either aborts (``-cpu host``) or a stock kernel hangs right after "Probing EDD". So "auto"
runs a short canary boot under KVM (the image's kernel, no initrd: it must reach the "Kernel panic
... Unable to mount root fs" line and exit) once per host, caches the verdict, and falls back to TCG.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ucernvm.errors import ConfigError
from ucernvm.image.cache import cache_dir
from ucernvm.image.tools import find_tool

ACCELS = ("auto", "kvm", "tcg")
CANARY_TIMEOUT = 20.0
_CANARY_OK = ("Kernel panic", "Run /init")


@dataclass(frozen=True)
class AccelChoice:
    accel: str  # "kvm" or "tcg"
    reason: str


def choose_accel(requested: str, bzimage: Path) -> AccelChoice:
    if requested not in ACCELS:
        raise ConfigError(f"unknown accelerator {requested!r}", hint="use auto, kvm or tcg")
    if requested != "auto":
        return AccelChoice(requested, "requested")
    if not bzimage.is_file():  # a canary failing for this reason must not be cached as "no KVM"
        raise ConfigError(f"{bzimage} does not exist", hint="build the image first: ucernvm build")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return AccelChoice("tcg", "no usable /dev/kvm")
    verdict_file = cache_dir("accel") / f"{_host_fingerprint()}.json"
    if verdict_file.exists():
        verdict = json.loads(verdict_file.read_text())
    else:
        verdict = kvm_canary(bzimage)
        verdict_file.write_text(json.dumps(verdict) + "\n")
    if verdict["kvm"]:
        return AccelChoice("kvm", f"KVM canary booted in {verdict['seconds']} s (cached: {verdict_file})")
    return AccelChoice("tcg", f"KVM canary failed: {verdict['detail']} (cached: {verdict_file})")


def kvm_canary(bzimage: Path) -> dict[str, object]:
    """Boot *bzimage* under KVM without an initrd; KVM works if the kernel panics on the missing root."""
    argv = [
        find_tool("qemu-system-x86_64"), "-accel", "kvm", "-cpu", "host", "-m", "256", "-nodefaults",
        "-no-user-config", "-display", "none", "-serial", "stdio", "-no-reboot",
        "-kernel", str(bzimage), "-append", "console=ttyS0 panic=-1",
    ]
    started = time.monotonic()
    try:
        result = subprocess.run(argv, capture_output=True, timeout=CANARY_TIMEOUT, stdin=subprocess.DEVNULL,
                                check=False)
    except subprocess.TimeoutExpired as expired:
        tail = (expired.stdout or b"").decode(errors="replace").strip().splitlines()[-1:]
        return {"kvm": False, "seconds": CANARY_TIMEOUT,
                "detail": f"no kernel panic within {CANARY_TIMEOUT:.0f} s (last line: {tail[0] if tail else 'none'})"}
    seconds = round(time.monotonic() - started, 2)
    console = result.stdout.decode(errors="replace")
    if any(marker in console for marker in _CANARY_OK):
        return {"kvm": True, "seconds": seconds, "detail": "ok"}
    errors = result.stderr.decode(errors="replace").strip().splitlines()
    return {"kvm": False, "seconds": seconds,
            "detail": f"QEMU exited {result.returncode}: {errors[-1] if errors else 'no kernel output'}"}


def _host_fingerprint() -> str:
    """Host kernel, QEMU version and CPU flags: what decides whether KVM can run a stock guest."""
    qemu = subprocess.run([find_tool("qemu-system-x86_64"), "--version"], capture_output=True, check=False)
    flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    text = "\0".join([*platform.uname(), qemu.stdout.decode(errors="replace"), flags])
    return hashlib.sha256(text.encode()).hexdigest()[:24]
