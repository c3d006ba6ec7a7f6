"""A small PID 1 for the image smoke test (not the boot pipeline).

It mounts proc, sys and devtmpfs, logs through /dev/kmsg and reads the log back, loads a few kernel
modules with finit_module (order from the image's modules.dep), runs the packed tools, prints one
``UCERNVM-SMOKE {json}`` line with its findings and guest timings, and powers the VM off.

The module loader here is a test helper: the boot pipeline owns the real one.
"""

from __future__ import annotations

import time

STARTED = time.clock_gettime(time.CLOCK_BOOTTIME)  # first statement of the init program

import ctypes  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

from ucernvm.image.kmods import ModuleIndex  # noqa: E402

MARKER = "UCERNVM-SMOKE"
MODULES = ("virtio_pci", "virtio_net", "virtio_blk", "virtio_rng", "ahci", "sr_mod", "ext4", "overlay", "fuse",
           "loop", "isofs")
CONTEXT_FILE = "hello.txt"  # read from the CD-ROM when one is attached
KMSG_TEXT = "ucernvm-smoke: logging through /dev/kmsg"
_SYS_FINIT_MODULE = 313  # x86_64
_RB_POWER_OFF = 0x4321FEDC
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 2, 4, 8

libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def mount(source: str, target: str, fstype: str, flags: int = 0) -> None:
    os.makedirs(target, exist_ok=True)
    _check(libc.mount(source.encode(), target.encode(), fstype.encode(), flags, None), f"mount {target}")


def load_modules(release_dir: Path, names: tuple[str, ...]) -> list[str]:
    """finit_module each module in dependency order; the names that loaded (or already were)."""
    loaded = []
    index = ModuleIndex.load(release_dir)
    for name in index.load_order(names):
        fd = os.open(release_dir / index.paths[name], os.O_RDONLY | os.O_CLOEXEC)
        try:
            result = libc.syscall(_SYS_FINIT_MODULE, fd, b"", 0)
        finally:
            os.close(fd)
        if result != 0 and ctypes.get_errno() != 17:  # EEXIST: already loaded
            raise OSError(ctypes.get_errno(), f"finit_module {name}: {os.strerror(ctypes.get_errno())}")
        loaded.append(name)
    return loaded


def wait_for_block_devices(names: tuple[str, ...], timeout: float) -> list[str]:
    """The block devices present once all *names* appeared (disk probing is asynchronous) or time ran out."""
    deadline = time.monotonic() + timeout
    while not set(names) <= set(os.listdir("/sys/block")) and time.monotonic() < deadline:
        time.sleep(0.1)
    return sorted(os.listdir("/sys/block"))


def kmsg_records() -> list[tuple[float, str]]:
    """Every record of the kernel log: (seconds since boot, text)."""
    records = []
    fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    try:
        while True:
            try:
                raw = os.read(fd, 8192)
            except BlockingIOError:
                break
            except BrokenPipeError:  # a record was overwritten while reading: skip it
                continue
            prefix, _, text = raw.decode(errors="replace").partition(";")
            records.append((int(prefix.split(",")[2]) / 1e6, text.split("\n", 1)[0]))
    finally:
        os.close(fd)
    return records


def main() -> int:
    report: dict[str, object] = {"python_start": round(STARTED, 3)}
    try:
        mount("proc", "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
        mount("sysfs", "/sys", "sysfs", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
        mount("devtmpfs", "/dev", "devtmpfs", _MS_NOSUID)
        with open("/dev/kmsg", "w") as kmsg:
            kmsg.write(f"<6>{KMSG_TEXT}\n")

        release_dir = Path("/usr/lib/modules") / os.uname().release
        started = time.clock_gettime(time.CLOCK_BOOTTIME)
        report["loaded"] = load_modules(release_dir, MODULES)
        report["modules_seconds"] = round(time.clock_gettime(time.CLOCK_BOOTTIME) - started, 3)
        in_proc = {line.split()[0] for line in Path("/proc/modules").read_text().splitlines()}
        report["proc_modules"] = sorted(in_proc)
        report["eth0"] = Path("/sys/class/net/eth0").exists()
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
        report["cpu_flags"] = flags.partition(":")[2].split()
        report["block"] = wait_for_block_devices(("vda", "sr0"), timeout=10.0)
        if "sr0" in report["block"]:
            mount("/dev/sr0", "/mnt/cd", "iso9660", 1)  # MS_RDONLY
            report["context_text"] = (Path("/mnt/cd") / CONTEXT_FILE).read_text()

        records = kmsg_records()
        report["run_init"] = next((t for t, text in records if text.startswith("Run /init")), None)
        report["crng_ready"] = next((t for t, text in records if text.startswith("random: crng init done")), None)
        report["kmsg_logged"] = any(text == KMSG_TEXT for _, text in records)

        tools = {}
        for argv in (["/usr/bin/sh", "-c", "echo shell-ok"], ["/usr/sbin/mke2fs", "-V"]):
            done = subprocess.run(argv, capture_output=True, text=True)
            tools[argv[0]] = done.returncode == 0
        report["tools"] = tools
        report["python"] = sys.version.split()[0]
        report["ok"] = True
    except Exception:  # report whatever broke instead of crashing PID 1
        report["ok"] = False
        report["error"] = traceback.format_exc()
    report["marker"] = round(time.clock_gettime(time.CLOCK_BOOTTIME), 3)
    print(f"{MARKER} {json.dumps(report, sort_keys=True)}", flush=True)
    os.sync()
    libc.reboot(_RB_POWER_OFF)
    return 1  # only reached if the power-off was refused
