"""The streamed Debian boot, as the boot test and the benchmark set it up, and the root's prefetch list.

The appliance root (debian_os.py) is published as snapshot TAG, served on 127.0.0.1 and booted by the
image with a context ISO whose #cloud-config is debian_guest's and whose ucernvm part chooses the
server, no proxy and the tag. The snapshot carries a prefetch list (client/prefetch.py), as an OS
release would: the files a cold boot of this root read, in order, recorded once by such a boot with
the list-less snapshot and cached beside the root (``prefetch.list`` in its cache slot).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path

from boot_env import GUEST_HOST, NO_NTP, BootResult, boot, build_boot_image, new_disk
from debian_guest import GUEST_KERNEL_OPTIONS, GUEST_MEMORY, GuestContext, GuestReport, guest_context, read_report
from debian_os import FQRN, TAG, DebianRoot

from ucernvm.cli import main as ucernvm
from ucernvm.client.prefetch import PREFETCH_LIST
from ucernvm.cvmfs.signing import generate_repository_keys
from ucernvm.server import StratumServer

# The isolated test network has no router, so "routable" never comes: systemd's wait for it would
# only add its 120 s timeout (words the loader does not know go on to the kernel and systemd). The
# server named here is overridden by the context's. A kernel lockup (a CPU stuck in the kernel for 20 s)
# prints every CPU's backtrace and panics, which ends the VM at once with the traces on the console
# (loglevel=5 lets the backtraces past quiet), instead of a guest that hangs until the timeout.
LOCKUP_PANIC = "loglevel=5 softlockup_panic=1 softlockup_all_cpu_backtrace=1"
CMDLINE = (f"quiet {LOCKUP_PANIC} {GUEST_KERNEL_OPTIONS} cvmfs_repos={FQRN} cvmfs_server=unused.invalid "
           f"ucernvm.panic=poweroff {NO_NTP} systemd.mask=systemd-networkd-wait-online.service")
TIMEOUT = 900.0
SCRATCH_SIZE = 20 << 30


def user_data(context: GuestContext, server_port: int, bootcmd: Sequence[str] = ()) -> bytes:
    """The guest's #cloud-config (plus ``bootcmd`` shell commands, which cloud-init runs at every boot,
    unlike runcmd: once per instance) and a ucernvm part choosing the server, no proxy, and the tag."""
    config = json.loads(context.user_data.decode().split("\n", 1)[1])
    if bootcmd:
        config["bootcmd"] = [["sh", "-c", command] for command in bootcmd]
    message = MIMEMultipart()
    message.attach(MIMEText("#cloud-config\n" + json.dumps(config, indent=1) + "\n", "cloud-config"))
    section = (f"[ucernvm-begin]\ncvmfs_server={GUEST_HOST}:{server_port}\n"
               f"cvmfs_http_proxy=DIRECT\ncvmfs_tag={TAG}\n[ucernvm-end]\n")
    message.attach(MIMEText(section, "ucernvm"))
    return message.as_bytes()


def context_iso(path: Path, context: GuestContext, server_port: int, bootcmd: Sequence[str] = ()) -> Path:
    user_data_file = path.with_suffix(".user-data")
    user_data_file.write_bytes(user_data(context, server_port, bootcmd))
    if ucernvm(["context", str(user_data_file), "-o", str(path)]) != 0:
        raise RuntimeError("ucernvm context failed")
    return path


def publish(root: DebianRoot, stratum: Path, keys: Path, prefetch_list: Path | None) -> None:
    """The root as snapshot TAG, with ``prefetch_list`` as its /.ucernvm_prefetch if given (as
    `ucernvm publish --prefetch-list` does; the shared root itself stays as it is)."""
    root.publish(stratum, keys, ((PREFETCH_LIST, str(prefetch_list)),) if prefetch_list else ())


@dataclass
class StreamedOs:
    """The root published and served: what the streamed boots of a test run share."""

    root: DebianRoot
    keys: Path
    server: StratumServer


@contextmanager
def served(root: DebianRoot, work: Path, prefetch_list: Path | None) -> Iterator[tuple[Path, StratumServer]]:
    """Keys and a server of the root published into *work*: (keys directory, running server)."""
    keys, stratum = work / "keys", work / "stratum"
    generate_repository_keys(FQRN, keys)
    publish(root, stratum, keys, prefetch_list)
    with StratumServer(stratum) as server:
        yield keys, server


def boot_streamed(image: Path, disk: Path, iso: Path, log: Path, server: StratumServer,
                  options: str = "") -> tuple[GuestReport, BootResult]:
    """One boot of the streamed root; ``options``: more kernel command line words."""
    result = boot(image, disk, f"{CMDLINE} {options}".strip(), log, ports=(server.port,), context=iso,
                  memory=GUEST_MEMORY, timeout=TIMEOUT)
    return read_report(result.serial), result


def recorded_prefetch_list(root: DebianRoot, progress: Callable[[str], None] = print) -> Path:
    """The root's prefetch list; recorded by one cold streamed boot (about two minutes under TCG) the
    first time, then cached beside the root."""
    cached = root.cache_slot / "prefetch.list"
    if cached.exists():
        return cached
    progress("recording the Debian root's prefetch list: one cold streamed boot")
    with tempfile.TemporaryDirectory(prefix="ucernvm-record-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        with served(root, work, None) as (keys, server):
            image = build_boot_image(work / "image", keys)
            iso = context_iso(work / "context.iso", guest_context(record_read_order=True), server.port)
            report, result = boot_streamed(image.output, new_disk(work / "scratch.raw", SCRATCH_SIZE), iso,
                                           work / "record.log", server)
    if report.problems() or len(report.read_order) < 100:
        raise RuntimeError(f"recording the prefetch list failed: {report.problems()} "
                           f"({len(report.read_order)} files)\n{result.tail}")
    partial = cached.with_suffix(".partial")
    partial.write_text("# the files a cold boot of this root read, in order (ucernvm mount's read-order.txt)\n"
                       + "".join(f"{path}\n" for path in report.read_order))
    partial.rename(cached)
    return cached
