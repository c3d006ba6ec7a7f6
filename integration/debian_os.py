"""A Debian 12 appliance root (systemd, cloud-init, sshd) built with mmdebstrap, cached by its recipe.

The root is what the boot tests run: streamed from a CernVM-FS repository by the image, and from a
local disk for the floor it is measured against (floor.py). It is configured as an appliance, with
the tuning of the measured boot floor (ed25519 host keys only, no locale generation, no
e2scrub_reap, no apt timers, small initramfs, NoCloud only), and carries two marker units that print
``UCERNVM-MARK <name> <seconds since the kernel started>`` on the console (parsed by debian_guest.py):
  multi-user         /proc/uptime when the unit ordered after multi-user.target runs
  systemd-start      systemd's own timestamps, printed by the same unit: when it started (the end of
  multi-user.target  any initramfs) and when it reached the target
  cloud-final        /proc/uptime after cloud-final.service; then the test hook HOOK_PATH runs if present.

The distribution kernel of the image's version is installed too, so that the OS loads modules of the
running kernel and the floor boots with Debian's own initramfs. The root directory is shared by every
test run: treat it as read-only. Building needs root (mmdebstrap --mode=root).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from ucernvm.cvmfs.publisher import Publisher, PublishOptions
from ucernvm.image import tools
from ucernvm.image.cache import cache_dir, keep_recent, used
from ucernvm.image.kernel import DEFAULT_PACKAGE, resolve_package

FQRN, TAG = "os.cern.ch", "debian-12"  # the repository and tag the root is published as
RECIPE_VERSION = 1  # bump when the build steps change in a way the recipe below does not show
ROOTS_KEPT = 2  # recipe slots kept in the cache (the current one and the one before)

SUITE = "bookworm"
MIRRORS = (
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
)
PACKAGES = (
    "systemd-sysv", "udev", "dbus", "kmod", "iproute2", "e2fsprogs", "sudo",
    "openssh-server", "cloud-init",
    "initramfs-tools", "zstd",  # the kernel's initramfs, for booting the root from a local disk
)
HOOK_PATH = "/var/lib/ucernvm-test/hook"
MARK_SCRIPT = "/usr/lib/ucernvm-test/mark"

# In place before the kernel package is configured, so that its one initramfs build is the small
# one: the virtio disk, ext4 and its checksum (crc32c-intel needs SSE4.2, which TCG's qemu64 lacks).
INITRAMFS_FILES = {
    "etc/initramfs-tools/conf.d/ucernvm.conf": "MODULES=list\nCOMPRESS=zstd\n",
    "usr/share/initramfs-tools/modules.d/ucernvm": "virtio_pci\nvirtio_blk\next4\ncrc32c_generic\n",
}

_MARK = f"""#!/bin/sh
# {MARK_SCRIPT} NAME: "UCERNVM-MARK NAME <uptime>" on the console, in one write so that other
# console output cannot tear the line; after cloud-final, the test hook (output to the console).
read -r up _ < /proc/uptime
printf 'UCERNVM-MARK %s %s\\n' "$1" "$up" > /dev/console
case "$1" in
multi-user)
    # systemd's own view: when it started (end of any initramfs) and when the target was reached
    usec() {{ systemctl show --value -p "$2" $1; }}
    secs() {{ awk -v u="$1" 'BEGIN {{ printf "%.2f", u / 1e6 }}'; }}
    printf 'UCERNVM-MARK systemd-start %s\\n' "$(secs "$(usec '' UserspaceTimestampMonotonic)")" > /dev/console
    printf 'UCERNVM-MARK multi-user.target %s\\n' \\
        "$(secs "$(usec multi-user.target ActiveEnterTimestampMonotonic)")" > /dev/console
    ;;
cloud-final)
    if [ -x {HOOK_PATH} ]; then
        {HOOK_PATH} > /dev/console 2>&1
    fi
    ;;
esac
exit 0
"""

# A target orders itself after the units it wants unless they opt out of default dependencies,
# so these units set DefaultDependencies=no to be able to run After= the target that starts them.
_UNIT = """[Unit]
Description=ucernvm test marker: {what}
DefaultDependencies=no
After={after}

[Service]
Type=oneshot
ExecStart={script} {name}

[Install]
WantedBy=multi-user.target
"""

CLOUD_CFG = """\
# Appliance settings: the only datasource is the one the loader or the floor hands over.
datasource_list: [NoCloud, None]
ssh_genkeytypes: [ed25519]
# cc_locale skips on a false value; the schema wants a string, so the false is quoted
locale: "false"
# systemd-networkd configures every NIC by DHCP; cloud-init renders no network configuration.
network: {config: disabled}
"""

DHCP_NETWORK = """\
[Match]
Name=en* eth*

[Network]
DHCP=yes
"""

FILES: dict[str, tuple[str, int]] = {
    MARK_SCRIPT.lstrip("/"): (_MARK, 0o755),
    "etc/systemd/system/ucernvm-mark-multi-user.service": (
        _UNIT.format(what="multi-user.target reached", after="multi-user.target", script=MARK_SCRIPT,
                     name="multi-user"), 0o644),
    "etc/systemd/system/ucernvm-test-marker.service": (
        _UNIT.format(what="cloud-init done, then the test hook", after="multi-user.target cloud-final.service",
                     script=MARK_SCRIPT, name="cloud-final"), 0o644),
    "etc/cloud/cloud.cfg.d/90-ucernvm.cfg": (CLOUD_CFG, 0o644),
    "etc/systemd/network/80-ucernvm-dhcp.network": (DHCP_NETWORK, 0o644),
    # mmdebstrap copies these from the build host; an instance gets its own from cloud-init and DHCP.
    "etc/hostname": ("ucernvm\n", 0o644),
    "etc/resolv.conf": ("", 0o644),
}
ENABLE = ("systemd-networkd.service", "serial-getty@ttyS0.service",
          "ucernvm-mark-multi-user.service", "ucernvm-test-marker.service")
MASK = ("e2scrub_reap.service", "apt-daily.timer", "apt-daily-upgrade.timer")


@dataclass(frozen=True)
class RootInfo:
    key: str  # the recipe hash, which names the cache slot
    seconds: float  # build time
    packages: int
    entries: int  # directory entries of every kind
    files: int  # regular files
    bytes: int  # of the regular files


@dataclass(frozen=True)
class DebianRoot:
    path: Path  # the root directory (read-only for its users)
    kernel_release: str  # e.g. 6.1.0-56-amd64: /boot/vmlinuz-<release>, /boot/initrd.img-<release>
    info: RootInfo

    @property
    def vmlinuz(self) -> Path:
        return self.path / "boot" / f"vmlinuz-{self.kernel_release}"

    @property
    def initrd(self) -> Path:
        return self.path / "boot" / f"initrd.img-{self.kernel_release}"

    @property
    def cache_slot(self) -> Path:
        """Where derived artefacts of this root (floor disk, kernel files) are kept."""
        return self.path.parent

    def publish(self, stratum: Path, keys: Path, root_files: tuple[tuple[str, str], ...] = ()) -> None:
        """The root as snapshot TAG of FQRN in *stratum* (signed with *keys*), published as cvmfs_server
        does by default: without extended attributes. The root's only ones are journald's ACLs on
        /var/log/journal, which systemd-tmpfiles sets again at every boot; a snapshot without any is
        mounted without xattr support (ucernvm.xattrs=auto), which spares the daemon a request at every
        lookup overlayfs makes and every exec. ``root_files``: (name, local file) added at the root."""
        options = PublishOptions(tag=TAG, include_xattrs=False, root_files=root_files)
        Publisher(str(stratum / FQRN), FQRN, str(keys), options).publish(str(self.path))


def build_root(kernel_package: str = DEFAULT_PACKAGE, progress: Callable[[str], None] = lambda _: None) -> DebianRoot:
    """The cached root for the current recipe, built first if needed (about two minutes)."""
    name, version = resolve_package(kernel_package)  # the image's kernel, see ucernvm.image.kernel
    packages = [*PACKAGES, f"{name}={version}"]
    recipe = {
        "version": RECIPE_VERSION, "suite": SUITE, "mirrors": MIRRORS, "packages": packages,
        "initramfs": INITRAMFS_FILES, "files": FILES, "enable": ENABLE, "mask": MASK,
    }
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    slot = cache_dir("debian-os", key)
    root, info_file = slot / "root", slot / "info.json"
    if not info_file.exists():
        progress(f"building the Debian root {key} (mmdebstrap)")
        started = time.monotonic()
        shutil.rmtree(root, ignore_errors=True)
        building = slot / "root.partial"
        shutil.rmtree(building, ignore_errors=True)
        _mmdebstrap(packages, building)
        _configure(building)
        info = RootInfo(key, round(time.monotonic() - started, 1), **_measure(building))
        building.rename(root)
        info_file.write_text(json.dumps(asdict(info), indent=2) + "\n")
    used(slot)
    # A recipe change (a new kernel version, a package) builds a new 750 MB root: the older ones go.
    keep_recent((entry for entry in slot.parent.iterdir() if entry.name != "debs"), ROOTS_KEPT)
    return DebianRoot(root, name.removeprefix("linux-image-"), RootInfo(**json.loads(info_file.read_text())))


def _mmdebstrap(packages: list[str], target: Path) -> None:
    debs = cache_dir("debian-os", "debs")  # kept across recipes: a changed setting downloads nothing again
    with tempfile.TemporaryDirectory(prefix="ucernvm-debian-") as tmp:
        early = Path(tmp)
        for rel, text in INITRAMFS_FILES.items():
            (early / rel).parent.mkdir(parents=True, exist_ok=True)
            (early / rel).write_text(text)
        tools.run(
            ["mmdebstrap", "--mode=root", "--variant=minbase", "--format=directory",
             f"--include={','.join(packages)}",
             "--skip=essential/unlink", "--skip=download/empty",
             '--setup-hook=mkdir -p "$1/var/cache/apt/archives"',
             f"--setup-hook=sync-in {debs} /var/cache/apt/archives/",
             f"--setup-hook=sync-in {early} /",
             f"--customize-hook=sync-out /var/cache/apt/archives {debs}",
             SUITE, target, *MIRRORS],
            what="mmdebstrap",
            hint="check that apt reaches deb.debian.org (apt-get update), and: apt-get install mmdebstrap",
        )


def _configure(root: Path) -> None:
    for rel, (text, mode) in FILES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(mode)
    # The root's own systemctl, which needs no systemd on the build host and knows its units.
    tools.run(["chroot", root, "systemctl", "enable", *ENABLE], what="systemctl enable")
    tools.run(["chroot", root, "systemctl", "mask", *MASK], what="systemctl mask")
    # Every instance makes its own host keys on its first boot (cloud-init, ed25519 only).
    for key in (root / "etc" / "ssh").glob("ssh_host_*"):
        key.unlink()


def _measure(root: Path) -> dict[str, int]:
    entries = files = size = 0
    for directory, subdirectories, names in os.walk(root):
        for name in subdirectories + names:
            entries += 1
            info = os.lstat(os.path.join(directory, name))
            if stat.S_ISREG(info.st_mode):
                files += 1
                size += info.st_size
    status = (root / "var" / "lib" / "dpkg" / "status").read_text()
    packages = status.count("Status: install ok installed")
    return {"packages": packages, "entries": entries, "files": files, "bytes": size}
