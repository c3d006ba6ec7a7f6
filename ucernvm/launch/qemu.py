"""Running an image in QEMU: the command line, and a ``Vm`` handle that watches the serial console.

The guest's serial port is QEMU's stdout; a reader thread timestamps each line (host monotonic
time since start), keeps it, echoes it and appends it to a log. ``-no-reboot`` with ``panic=-1``
makes every guest ending (power off, init crash, kernel panic) a QEMU exit, and a timeout kills
QEMU, so a run can never hang.
"""

from __future__ import annotations

import codecs
import ctypes
import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TextIO

from ucernvm.errors import ConfigError, UcernvmError
from ucernvm.image.tools import find_tool
from ucernvm.launch.accel import AccelChoice, choose_accel
from ucernvm.launch.media import check_context, check_disk, create_disks, disk_format, qemu_path
from ucernvm.launch.usernet import netdev

# libata.force=nodbdelay: before it reads a SATA link's state, libata waits 200 ms for the PHY to settle
# after waking it; QEMU's AHCI (q35 has one, with six ports) has no PHY, and its empty ports held up
# the kernel's start (or the ahci module's load) by 0.2-0.3 s under TCG.
BASE_CMDLINE = "console=ttyS0 panic=-1 libata.force=nodbdelay"
MACHINES = ("q35", "pc")
_PRINTK_RE = re.compile(r"^\[\s*(\d+\.\d+)\]")
# The first line of the guest kernel's report of a lockup, stall or crash: where a hung guest's console
# is read from, since its last lines only repeat the watchdog's complaint.
_KERNEL_TROUBLE_RE = re.compile(r"^\[\s*\d+\.\d+\] (?:watchdog: BUG|BUG:|Oops|Kernel panic|rcu: INFO:)", re.M)
TROUBLE_LINES = 80
PR_SET_PDEATHSIG = 1  # prctl(2)'s request for a signal when the parent ends


def _ends_with_its_parent() -> Callable[[], None] | None:
    """What QEMU's child runs before exec: the kernel sends QEMU SIGTERM (it then flushes its disks and
    exits) when the thread that started it ends, so a launcher or test run that is killed, even by
    SIGKILL, leaves no VM running. prctl(2) has no wrapper in the standard library: ctypes, resolved
    here, before the fork. None where there is no prctl (not Linux)."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except AttributeError:
        return None
    parent = os.getpid()

    def request() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent ended before the request: no signal will come
            os._exit(1)

    return request


def console_hint(serial: str, stderr: str = "", lines: int = 15) -> str:
    """What to show of a guest that failed or hung: the kernel's first report of trouble (a lockup's
    or an oops's backtrace), if any, then the console's last *lines*, and QEMU's last complaint."""
    console = serial.strip()
    every = console.split("\n")
    last = max(0, len(every) - lines)
    text = ""
    trouble = _KERNEL_TROUBLE_RE.search(console)
    if trouble is not None:
        first = console.count("\n", 0, trouble.start())
        text = "the guest kernel reported trouble:\n" + "\n".join(every[first:first + TROUBLE_LINES]) + "\n"
        last = max(last, first + TROUBLE_LINES)
    if console and last < len(every):
        text += "last console lines:\n" + "\n".join(every[last:])
    text = text.rstrip("\n") or "no console output"
    if stderr.strip():
        text += "\nQEMU: " + stderr.strip().splitlines()[-1]
    return text


class Echo(Protocol):
    """Where the console is echoed as it comes (sys.stdout, or a filter in front of it)."""

    def write(self, text: str, /) -> object: ...

    def flush(self) -> object: ...


class LaunchError(UcernvmError):
    """QEMU could not start, or the guest did not do what was awaited in time."""


@dataclass(frozen=True)
class LaunchOptions:
    image: Path  # a `ucernvm build` output directory
    disks: tuple[Path, ...] = ()
    context: Path | None = None  # an ISO image, attached as a CD-ROM (AHCI on q35, IDE on pc)
    cmdline: str = "quiet"  # appended to BASE_CMDLINE
    memory: int = 1024  # MiB
    smp: int = 2
    # q35, not QEMU's older default "pc" (i440FX): there every PCI device's legacy interrupt is routed
    # through an ACPI link whose setup took 0.3 s per device under TCG (0.8 s of the kernel's 2.2 s).
    machine: str = "q35"
    accel: str = "auto"
    net_forwards: tuple[str, ...] = ()  # "tcp:HOSTPORT:GUESTPORT", bound to 127.0.0.1
    isolated: bool = False  # the guest reaches nothing but its guest_forwards (see usernet.py)
    guest_forwards: tuple[str, ...] = ()  # "GUEST_IP:PORT=HOST_IP:PORT"
    serial_log: Path | None = None
    interactive: bool = False  # hand our stdin to the guest console
    clock_base: str | None = None  # the guest's clock at power-on, UTC "YYYY-MM-DDTHH:MM:SS" (default: now)
    cpu: str | None = None  # QEMU CPU model (default: the host's under KVM, TCG_CPU under TCG)
    # Bytes of the missing disks, made sparse once everything else was checked, just before QEMU starts.
    disk_size: int | None = None


# QEMU's default CPU model without RDRAND leaves a kernel that trusts the CPU's generator (Debian's does)
# with no entropy until its jitter loop or a hardware RNG driver fills the pool, and the first process
# to read /dev/urandom (the init's interpreter, seeding its hashes) waits for that: 1.2 s under TCG.
# Still x86-64-v1: an OS built for v2 (the EL9 family) needs `--cpu Nehalem,+rdrand` or later, on
# which the loader itself boots slower under TCG (docs/benchmarks.md, "Boot").
TCG_CPU = "qemu64,+rdrand"


def qemu_command(options: LaunchOptions, accel: str) -> list[str]:
    """The qemu-system-x86_64 argv for *options* under *accel* ("kvm" or "tcg")."""
    image = options.image
    initrd = image / "initrd.img"
    kernel = image / "vmlinuz"
    if accel == "tcg" and _pvh(image):
        kernel = image / "vmlinux"  # PVH entry: no firmware, no in-guest decompression
    for needed in (kernel, initrd):
        if not needed.is_file():
            raise ConfigError(f"{needed} does not exist", hint=f"build the image first: ucernvm build -o {image}")
    argv = [
        find_tool("qemu-system-x86_64"),
        "-machine", _machine(options), "-accel", accel,
        "-cpu", options.cpu or ("host" if accel == "kvm" else TCG_CPU),
        "-m", str(options.memory), "-smp", str(options.smp),
        "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio", "-no-reboot",
        "-kernel", str(kernel), "-initrd", str(initrd),
        "-append", f"{BASE_CMDLINE} {options.cmdline}".strip(),
        "-netdev", netdev(options.net_forwards, options.guest_forwards, options.isolated),
        "-device", "virtio-net-pci,netdev=net0",
        "-device", "virtio-rng-pci",
    ]
    if options.clock_base:
        argv += ["-rtc", f"base={options.clock_base}"]
    creatable = options.disk_size is not None
    for number, disk in enumerate(options.disks):
        drive = f"file={qemu_path(check_disk(disk, creatable))},if=none,id=disk{number},format={disk_format(disk)}"
        argv += ["-drive", drive, "-device", f"virtio-blk-pci,drive=disk{number}"]
    if options.context is not None:
        argv += ["-drive", f"file={qemu_path(check_context(options.context))},if=ide,index=2,media=cdrom,"
                           "readonly=on,format=raw"]
    return argv


def _machine(options: LaunchOptions) -> str:
    """q35 without its SATA controller unless the context CD-ROM needs it: the disks are virtio, and the
    kernel's probe of the controller's six empty ports held up its start by 0.1-0.2 s under TCG."""
    return "q35,sata=off" if options.machine == "q35" and options.context is None else options.machine


def _pvh(image: Path) -> bool:
    manifest = image / "manifest.json"
    if not (image / "vmlinux").is_file() or not manifest.is_file():
        return False
    return bool(json.loads(manifest.read_text()).get("kernel", {}).get("pvh"))


class Vm:
    """One QEMU run of an image. Use as a context manager, or call start() and stop()."""

    def __init__(self, options: LaunchOptions, echo: Echo | None = None) -> None:
        self.options = options
        self.echo = echo
        self.choice: AccelChoice | None = None
        self.argv: list[str] = []
        self.lines: list[tuple[float, str]] = []  # (host seconds since start, serial line)
        self._partial = ""
        self._stderr: list[str] = []
        self._process: subprocess.Popen[bytes] | None = None
        self._started = 0.0
        self.exited_after: float | None = None  # host seconds from start to QEMU's exit
        self._changed = threading.Condition()
        self._readers: list[threading.Thread] = []
        self._log: TextIO | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> Vm:
        self.choice = choose_accel(self.options.accel, self.options.image / "vmlinuz")
        self.argv = qemu_command(self.options, self.choice.accel)
        if self.options.serial_log is not None:
            try:
                self._log = self.options.serial_log.open("w", encoding="utf-8")
            except OSError as error:
                raise ConfigError(f"cannot write the serial log {self.options.serial_log}: "
                                  f"{error.strerror or error}") from None
        if self.options.disk_size is not None:
            try:
                create_disks(self.options.disks, self.options.disk_size)
            except ConfigError:
                self._close_log()
                raise
        self._started = time.monotonic()
        self._process = subprocess.Popen(
            self.argv,
            stdin=None if self.options.interactive else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=not self.options.interactive,
            preexec_fn=_ends_with_its_parent(),
        )
        self._readers = [
            threading.Thread(target=self._read_serial, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for reader in self._readers:
            reader.start()
        return self

    def __enter__(self) -> Vm:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def accel(self) -> str:
        return self.choice.accel if self.choice else ""

    @property
    def returncode(self) -> int | None:
        return self._process.poll() if self._process else None

    def wait(self, timeout: float | None = None) -> int:
        """QEMU's exit status; after *timeout* seconds QEMU is killed and LaunchError raised."""
        process = self._require()
        try:
            code = process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise LaunchError(f"the VM did not exit within {timeout:.0f} s", hint=self._tail()) from None
        self._finish()
        return code

    def stop(self) -> int | None:
        """Terminate QEMU if it still runs (SIGTERM, then SIGKILL); its exit status."""
        if self._process is None:
            return None
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._finish()
        return self._process.returncode

    def _finish(self) -> None:
        if self.exited_after is None:
            self.exited_after = time.monotonic() - self._started
        for reader in self._readers:
            reader.join(5)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def _require(self) -> subprocess.Popen[bytes]:
        if self._process is None:
            raise LaunchError("the VM was not started")
        return self._process

    # -- the serial console ----------------------------------------------------------------------

    @property
    def serial(self) -> str:
        with self._changed:
            return "".join(f"{line}\n" for _, line in self.lines) + self._partial

    @property
    def stderr(self) -> str:
        return "".join(self._stderr)

    def wait_for(self, pattern: str | re.Pattern[str], timeout: float) -> re.Match[str]:
        """The first match of *pattern* in a complete serial line, waiting up to *timeout* seconds."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        checked = 0
        with self._changed:
            while True:
                for _, line in self.lines[checked:]:
                    if match := regex.search(line):
                        return match
                checked = len(self.lines)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise LaunchError(f"no {regex.pattern!r} on the console within {timeout:.0f} s",
                                      hint=self._tail())
                if self._process is not None and self._process.poll() is not None and self._readers_done():
                    raise LaunchError(f"QEMU exited ({self._process.returncode}) before {regex.pattern!r} appeared",
                                      hint=self._tail())
                self._changed.wait(min(remaining, 0.5))

    def line_time(self, pattern: str | re.Pattern[str]) -> float | None:
        """Host seconds from QEMU start to the first line matching *pattern* (None if none)."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        with self._changed:
            return next((t for t, line in self.lines if regex.search(line)), None)

    def guest_timestamps(self) -> list[tuple[float, str]]:
        """Kernel console lines with their printk time (guest seconds since boot)."""
        with self._changed:
            return [(float(m.group(1)), line) for _, line in self.lines if (m := _PRINTK_RE.match(line))]

    def _readers_done(self) -> bool:
        return not any(reader.is_alive() for reader in self._readers)

    def _read_serial(self) -> None:
        process = self._require()
        assert process.stdout is not None
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        fd = process.stdout.fileno()
        while chunk := os.read(fd, 65536):
            self._take(decoder.decode(chunk))
        self._take(decoder.decode(b"", final=True), final=True)

    def _take(self, text: str, final: bool = False) -> None:
        now = time.monotonic() - self._started
        if self.echo is not None and text:
            self.echo.write(text)
            self.echo.flush()
        with self._changed:
            pieces = (self._partial + text.replace("\r", "")).split("\n")
            self._partial = pieces.pop()
            if final and self._partial:
                pieces.append(self._partial)
                self._partial = ""
            for line in pieces:
                self.lines.append((now, line))
                if self._log is not None:
                    self._log.write(line + "\n")
            if self._log is not None:
                self._log.flush()
            self._changed.notify_all()

    def _read_stderr(self) -> None:
        process = self._require()
        assert process.stderr is not None
        for raw in process.stderr:
            self._stderr.append(raw.decode(errors="replace"))
        with self._changed:
            self._changed.notify_all()

    def _tail(self) -> str:
        return console_hint(self.serial, self.stderr)
