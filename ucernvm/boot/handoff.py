"""The ``handoff`` stage: what the OS needs from the loader, then switch_root to its init."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from ucernvm import __version__
from ucernvm.boot.report import build_report, render_svg, to_json
from ucernvm.boot.rescue import offer_rescue_shell, rescue_shell
from ucernvm.boot.seed import hand_over_context
from ucernvm.boot.shutdown import ON_SCRATCH, install_shutdown_handback
from ucernvm.boot.snapshot import export_master_keys
from ucernvm.boot.state import BootState
from ucernvm.boot.system import MS_MOVE, MS_NODEV, MS_NOSUID, MakeDirs, Mount, Unmount, WriteFile
from ucernvm.boot.untrusted import in_os_root, read_scratch, scratch_directory
from ucernvm.config import CVMSSH_WAIT
from ucernvm.errors import MountError
from ucernvm.records import NamedTuple

INIT = "/sbin/init"
VERSION_FILE = "aux/ucernvm-version"  # µCernVM's: the loader's version, for the OS's tools
KEXEC_APPLY = "kexec/apply"  # µCernVM's: a loader update the OS staged (version=, kernel=, initrd=, cmdline=)
MAX_APPLY_FILE = 64 << 10


class CopyTree(NamedTuple):
    source: str
    target: str

    def describe(self) -> str:
        return f"copy {self.source} to {self.target}"

    def apply(self) -> None:
        shutil.copytree(self.source, self.target, symlinks=True, dirs_exist_ok=True)


class SwitchRoot(NamedTuple):
    """Move the kernel file systems into the new root, free the initramfs, and exec the OS's init.

    What util-linux's switch_root does, except that the initramfs's files are deleted by a child left
    behind in the old root, at idle priority, while the OS's init starts (0.08-0.12 s less before
    it under emulation). The FUSE daemon keeps running, with everything it needs already loaded and
    its own descriptors.
    """

    new_root: str
    init: str = INIT

    def describe(self) -> str:
        return f"switch root to {self.new_root} and run {self.init}"

    def apply(self) -> None:
        for mount in ("/dev", "/proc", "/sys"):
            target = os.path.join(self.new_root, mount.lstrip("/"))
            os.makedirs(target, exist_ok=True)
            Mount(mount, target, None, flags=MS_MOVE).apply()
        os.chdir(self.new_root)
        Mount(self.new_root, "/", None, flags=MS_MOVE).apply()
        _free_initramfs_behind()
        os.chroot(".")
        os.chdir("/")
        os.execv(self.init, [self.init])


def _free_initramfs_behind() -> None:
    """Free the initramfs from a child whose root stays the old one (this process's until its chroot);
    in this process where the kernel refuses a child."""
    try:
        pid = os.fork()
    except OSError:
        free_initramfs()
        return
    if pid == 0:
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            free_initramfs()
        finally:
            os._exit(0)


# What the FUSE daemon, whose root stays the initramfs's, reads there after the switch: name resolution
# (it connects anew to servers and proxies named by host name, and glibc reads resolv.conf and hosts again
# when they change) and OpenSSL's trust store for https servers (its default file, a link to the bundle).
KEPT_FOR_THE_DAEMON = frozenset((
    "etc/resolv.conf", "etc/hosts", "etc/nsswitch.conf", "etc/host.conf", "etc/gai.conf",
    "etc/ssl/certs/ca-certificates.crt", "usr/lib/ssl/cert.pem",
))


def free_initramfs(root: str = "/") -> None:
    """Delete the initramfs's files (they occupy RAM), staying on its file system, but those the daemon still
    reads (KEPT_FOR_THE_DAEMON): the new root and the kernel's file systems, moved away, left empty
    directories behind; the early stage's /run (empty mount points for media) goes too. The scratch disk and
    the mount stay where they are."""
    try:
        Unmount(os.path.join(root, "run"), lazy=True).apply()
    except MountError:
        pass  # not mounted: nothing to free there
    device = os.lstat(root).st_dev
    prefix = len(os.path.join(root, ""))  # cut off a path, leaves its place in the image (etc/hosts)
    directories = []
    for directory, subdirectories, files in os.walk(root, topdown=True):
        below = []
        for name in subdirectories:
            info = os.lstat(os.path.join(directory, name))
            if stat.S_ISLNK(info.st_mode):
                files.append(name)  # a link to a directory (/bin -> usr/bin) goes as a file
            elif info.st_dev == device:
                below.append(name)
        subdirectories[:] = below
        directories += [os.path.join(directory, name) for name in subdirectories]
        for name in files:
            path = os.path.join(directory, name)
            if path[prefix:] in KEPT_FOR_THE_DAEMON:
                continue
            try:
                os.unlink(path)
            except OSError:
                pass
    for directory in reversed(directories):  # deepest first
        try:
            os.rmdir(directory)
        except OSError:
            pass  # a mount point, or not empty


def record_loader_version(state: BootState) -> None:
    """As µCernVM's 12kexec, at every boot: the loader's version in aux/ucernvm-version, and a loader update
    staged in kexec/apply (of another version) booted into; here not (no kexec), which a warning says."""
    what = f"{VERSION_FILE} on the scratch disk"
    if scratch_directory(state, "aux", what):
        state.do_or_warn(what, WriteFile(str(state.scratch / VERSION_FILE), f"{__version__}\n".encode()))
    staged = read_scratch(state, KEXEC_APPLY, MAX_APPLY_FILE, "no staged loader update looked at")
    if staged is None:
        return
    lines = staged.decode("utf-8", "replace").splitlines()
    version = next((line.partition("=")[2].strip() for line in lines if line.startswith("version=")), "")
    if version != __version__:
        state.warn(f"{KEXEC_APPLY} on the scratch disk stages loader version {version[:80]!r}: this loader does "
                   f"not boot into another one (kexec), and goes on as version {__version__}")


def _report_files(state: BootState) -> dict[str, bytes]:
    report = build_report(state, "switching root")
    texts = {"report.json": to_json(report), "timeline.svg": render_svg(report), "boot.log": state.log.text()}
    return {name: text.encode() for name, text in texts.items()}


def handoff_stage(state: BootState) -> None:
    system, new_root, config = state.system, state.new_root, state.config
    init = new_root / INIT.lstrip("/")
    if not system.dry_run and not os.path.lexists(init):
        raise MountError(f"the snapshot has no {INIT} in {config.os_path or '/'}", "check cernvm_path=")

    # The OS's root writes to the scratch disk, which a user may have filled: what goes there now is
    # reported where it cannot be written, and the OS still starts (its own network setup writes
    # resolv.conf again; the disk can be cleaned up from it).
    resolv = system.path("/etc/resolv.conf")
    target = new_root / "etc" / "resolv.conf"
    what = f"/etc/resolv.conf {ON_SCRATCH}"
    if resolv.exists() and not target.is_symlink() and in_os_root(state, target, what):
        state.do_or_warn(what, MakeDirs(str(target.parent)), WriteFile(str(target), resolv.read_bytes()))

    export_master_keys(state)
    record_loader_version(state)

    release = os.uname().release
    modules = Path("/lib/modules") / release
    copy = new_root / "lib" / "modules" / release
    what = f"the kernel modules of {release} {ON_SCRATCH}"
    if modules.is_dir() and not copy.exists() and in_os_root(state, copy, what):
        state.do_or_warn(what, CopyTree(str(modules), str(copy)))

    # /run is a tmpfs before systemd starts, so the report survives its mounting of /run.
    run = new_root / "run"
    scratch_directory(state, "run", "/run in the OS's root", root=new_root)  # a link there: a tmpfs over the loader's
    system.do(Mount("tmpfs", str(run), "tmpfs", "mode=0755", MS_NOSUID | MS_NODEV))
    install_shutdown_handback(state)
    hand_over_context(state)
    if config.ssh and not config.debug:  # before the report, which says whether the shell was opened
        offer_rescue_shell(state, "cvmssh (no SSH server in this image: the rescue shell is on the console)",
                           CVMSSH_WAIT)
    files = _report_files(state)
    saved = state.scratch / "ulogs"
    if not state.do_or_warn(f"the boot report in {saved.name}/ on the scratch disk", MakeDirs(str(saved)),
                            *(WriteFile(str(saved / name), data) for name, data in files.items())):
        files = _report_files(state)  # with that warning
    system.do(MakeDirs(str(run / "ucernvm")))
    for name, data in files.items():
        system.do(WriteFile(str(run / "ucernvm" / name), data))

    if config.debug:
        rescue_shell(state, "cvmdebug: the new root is assembled at /root; exit the shell to boot it")
    state.log.info(f"switching root to {config.repository} {state.facts.get('snapshot', {}).get('root_hash', '')}")
    system.do(SwitchRoot(str(new_root)))
