"""The handoff stage on a real overlay root whose scratch disk is full: the OS still gets the machine."""

from __future__ import annotations

import errno
import io
import json
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ucernvm import __version__
from ucernvm.boot.handoff import SwitchRoot, free_initramfs, handoff_stage
from ucernvm.boot.log import BootLog
from ucernvm.boot.pipeline import Stage, run_stages
from ucernvm.boot.rootfs import move_layers
from ucernvm.boot.state import BootState
from ucernvm.boot.system import Action, RealSystem
from ucernvm.config import BootConfig

FQRN = "cernvm-prod.cern.ch"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="tmpfs and overlay mounts need root")


class NoSwitch(RealSystem):
    """Does everything but the switch of the test's own root."""

    def do(self, action: Action) -> Any:
        if isinstance(action, SwitchRoot):
            self.actions.append(action.describe())
            return None
        return super().do(action)


def mount(*argv: str) -> None:
    subprocess.run(["mount", *argv], check=True, capture_output=True)


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    """The loader's root: a 1 MiB scratch disk on /root.rw, the OS root an overlay of a tree on it."""
    base = tmp_path / "initramfs"
    lower = tmp_path / "os"
    for directory in ("sbin", "etc", "run", "mnt", f"lib/modules/{os.uname().release}"):
        (lower / directory).mkdir(parents=True)
    (lower / "sbin" / "init").write_text("#!/bin/sh\n")
    (base / "etc").mkdir(parents=True)
    (base / "etc" / "resolv.conf").write_text("nameserver 10.0.2.3\n")
    scratch, new_root = base / "root.rw", base / "root"
    scratch.mkdir()
    new_root.mkdir()
    try:
        mount("-t", "tmpfs", "-o", "size=1m", "tmpfs", str(scratch))
        for name in ("persistent", "work", "ulogs"):
            (scratch / name).mkdir()
        mount("-t", "overlay", "-o", f"lowerdir={lower},upperdir={scratch}/persistent,workdir={scratch}/work",
              "overlay", str(new_root))
        yield base
    finally:
        with open("/proc/self/mounts") as mounts:
            targets = [line.split()[1] for line in mounts if line.split()[1].startswith(str(base))]
        for target in reversed(targets):
            subprocess.run(["umount", target], check=False, capture_output=True)


def fill(directory: Path) -> None:
    with open(directory / "filler", "wb") as handle:
        try:
            while True:
                handle.write(bytes(1 << 16))
                handle.flush()
        except OSError as error:
            assert error.errno == errno.ENOSPC


def test_a_full_scratch_disk_is_reported_and_the_os_still_starts(root: Path) -> None:
    system = NoSwitch(str(root))
    state = BootState(system, BootLog(io.StringIO()))
    state.scratch_device = "/dev/vdb1"
    fill(state.scratch / "persistent")
    run_stages(state, [Stage("handoff", (handoff_stage,))])
    assert system.actions[-1] == f"switch root to {root / 'root'} and run /sbin/init"
    assert [record.status for record in state.stages] == ["ok"]
    report = json.loads((root / "root" / "run" / "ucernvm" / "report.json").read_text())
    full = [warning for warning in report["warnings"] if "No space left on device" in warning]
    assert full and all("scratch disk" in warning for warning in full), report["warnings"]
    assert any("resolv.conf" in warning for warning in full) and any("ulogs" in warning for warning in full)
    # nothing half-written is left behind in the OS
    assert not [path for path in (root / "root.rw" / "persistent").rglob("*.tmp-*")]
    assert (root / "root" / "run" / "initramfs" / "shutdown").is_file()


def test_the_os_finds_the_images_master_keys_on_the_scratch_disk(root: Path) -> None:
    """As µCernVM: the OS's own tools (cernvm-update) verify the repository with the keys in
    /mnt/.rw/aux/keys/<repository>/, a copy of the image's, written at every boot."""
    keys = root / "etc" / "cvmfs" / "keys"
    (keys / FQRN).mkdir(parents=True)
    (keys / FQRN / f"{FQRN}.pub").write_bytes(b"the repository's key\n")
    (keys / "cern-it4.cern.ch.pub").write_bytes(b"a domain's key\n")
    system = NoSwitch(str(root))
    state = BootState(system, BootLog(io.StringIO()), config=BootConfig(repository=FQRN))
    on_the_os = root / "root" / "mnt" / ".rw"
    on_the_os.mkdir(parents=True)
    mount("--bind", str(state.scratch), str(on_the_os))  # where the mount stage moves the scratch disk
    state.scratch_moved_to = on_the_os
    run_stages(state, [Stage("handoff", (handoff_stage,))])
    copy = on_the_os / "aux" / "keys" / FQRN
    assert sorted(path.name for path in copy.iterdir()) == ["cern-it4.cern.ch.pub", f"{FQRN}.pub"]
    assert (copy / f"{FQRN}.pub").read_bytes() == b"the repository's key\n"
    assert (copy / "cern-it4.cern.ch.pub").read_bytes() == b"a domain's key\n"
    assert not state.warnings


@pytest.mark.parametrize("name", ["aux/keys", f"aux/keys/{FQRN}"])
def test_the_master_keys_are_copied_on_the_scratch_disk_not_through_a_link_the_os_left(root: Path, name: str) -> None:
    """The OS writes the scratch disk: a link at the copy's directory (to the image's own keys, say) is
    replaced by a directory, and what it pointed to is left as it was."""
    keys = root / "etc" / "cvmfs" / "keys"
    keys.mkdir(parents=True)
    (keys / f"{FQRN}.pub").write_bytes(b"the repository's key\n")
    outside = root / "outside"
    outside.mkdir()
    state = BootState(NoSwitch(str(root)), BootLog(io.StringIO()), config=BootConfig(repository=FQRN))
    (state.scratch / name).parent.mkdir(parents=True)
    (state.scratch / name).symlink_to(outside)
    run_stages(state, [Stage("handoff", (handoff_stage,))])
    assert (state.scratch / "aux" / "keys" / FQRN / f"{FQRN}.pub").read_bytes() == b"the repository's key\n"
    assert not (state.scratch / name).is_symlink() and not list(outside.iterdir())
    assert state.warnings == [f"{name} on the scratch disk is a symbolic link: removed, not followed, and made a directory"]


@pytest.mark.parametrize("name", ["mnt", "mnt/.rw"])
def test_the_scratch_disk_is_moved_into_the_os_root_not_through_a_link_the_os_left(root: Path, name: str) -> None:
    """/mnt or /mnt/.rw of the OS's root, a link the OS put in its writable layer (to the image's master
    keys, say), is replaced by a directory: the scratch disk is not mounted over what it pointed to."""
    outside = root / "etc" / "outside"
    outside.mkdir()
    (root / "root.ro").mkdir()
    mount("--bind", str(root / "root.ro"), str(root / "root.ro"))  # the repository's mount, for the move
    state = BootState(RealSystem(str(root)), BootLog(io.StringIO()))
    placed = state.new_root / name
    placed.parent.mkdir(parents=True, exist_ok=True)
    if placed.is_dir():
        placed.rmdir()
    placed.symlink_to(outside)
    try:
        move_layers(state)
        assert os.path.ismount(state.new_root / "mnt" / ".rw") and os.path.ismount(state.new_root / "mnt" / ".ro")
        assert state.scratch == state.new_root / "mnt" / ".rw" and (state.scratch / "ulogs").is_dir()
        assert not os.path.ismount(outside) and not list(outside.iterdir())
    finally:  # the layers first, which keep the OS's root busy
        for layer in (".ro", ".rw"):
            subprocess.run(["umount", str(state.new_root / "mnt" / layer)], capture_output=True)
    assert state.warnings == [f"{name} in the OS's root is a symbolic link: removed, not followed, and made a directory"]


def test_the_os_run_is_a_tmpfs_of_its_own_not_one_over_where_a_link_the_os_left_points(root: Path) -> None:
    """/run, a link the OS put in its writable layer, is replaced by a directory before its tmpfs is mounted:
    the link resolves in the loader's tree, where the mount would hide a directory of the loader's."""
    outside = root / "etc" / "outside"
    outside.mkdir()
    (root / "root" / "run").rmdir()
    (root / "root" / "run").symlink_to(outside)
    state = BootState(NoSwitch(str(root)), BootLog(io.StringIO()), config=BootConfig(repository=FQRN))
    run_stages(state, [Stage("handoff", (handoff_stage,))])
    assert os.path.ismount(root / "root" / "run") and (root / "root" / "run" / "ucernvm" / "report.json").is_file()
    assert not os.path.ismount(outside) and not list(outside.iterdir())
    assert "run in the OS's root is a symbolic link: removed, not followed, and made a directory" in state.warnings



def initramfs(base: Path) -> Path:
    """An image's tree as the switch leaves it: the FUSE daemon's root, with its files still there."""
    image = base / "initramfs"
    files = {"init": "#!/python\n", "etc/resolv.conf": "nameserver 10.0.2.3\n",
             "etc/hosts": "10.11.12.13 ucernvm-kept-name\n", "etc/nsswitch.conf": "hosts: files dns\n",
             "etc/gai.conf": "", "etc/ssl/certs/ca-certificates.crt": "-----BEGIN CERTIFICATE-----\n",
             "etc/cvmfs/keys/cern.ch.pub": "key\n", "etc/mke2fs.conf": "", "usr/bin/busybox": "",
             "usr/lib/python3.11/os.py": ""}
    for name, text in files.items():
        (image / name).parent.mkdir(parents=True, exist_ok=True)
        (image / name).write_text(text)
    (image / "usr/lib/ssl").mkdir(parents=True)
    (image / "usr/lib/ssl/cert.pem").symlink_to("/etc/ssl/certs/ca-certificates.crt")
    (image / "lib").symlink_to("usr/lib")
    return image


def test_freeing_the_initramfs_keeps_what_the_daemon_resolves_names_and_checks_tls_with(tmp_path: Path) -> None:
    image = initramfs(tmp_path)
    scratch = image / "root.rw"
    scratch.mkdir()
    mount("-t", "tmpfs", "-o", "size=1m", "tmpfs", str(scratch))
    try:
        (scratch / "cache").write_text("kept: another file system\n")
        free_initramfs(str(image))
        left = sorted(str(path.relative_to(image)) for path in image.rglob("*") if not path.is_dir())
        assert left == ["etc/gai.conf", "etc/hosts", "etc/nsswitch.conf", "etc/resolv.conf",
                        "etc/ssl/certs/ca-certificates.crt", "root.rw/cache", "usr/lib/ssl/cert.pem"]
        assert not (image / "lib").is_symlink() and not (image / "etc" / "cvmfs").exists()
    finally:
        subprocess.run(["umount", str(scratch)], check=False, capture_output=True)


def resolved_in_freed(image: Path) -> str:
    """As the FUSE daemon: its modules and libraries loaded already (a name resolved), its root the image,
    which is then freed; the address of a name of the kept hosts file, or why there is none."""
    try:
        socket.getaddrinfo("localhost", 80)
        os.chroot(image)
        os.chdir("/")
        free_initramfs("/")
        return str(socket.getaddrinfo("ucernvm-kept-name", 80, socket.AF_INET, socket.SOCK_STREAM)[0][4][0])
    except OSError as error:
        return f"failed: {error!r}"


def test_a_name_of_the_kept_hosts_file_resolves_in_the_freed_initramfs(tmp_path: Path) -> None:
    """A process whose root is the freed image, as the FUSE daemon's is, still resolves names with it."""
    image = initramfs(tmp_path)
    reading, writing = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(reading)
            os.write(writing, resolved_in_freed(image).encode())
        finally:
            os._exit(0)
    os.close(writing)
    with os.fdopen(reading, "rb") as stream:
        answer = stream.read().decode()
    os.waitpid(pid, 0)
    assert answer == "10.11.12.13"
    assert not (image / "init").exists() and (image / "etc" / "hosts").exists()


def test_the_loaders_version_is_on_the_scratch_disk_as_ucernvm_writes_it(root: Path) -> None:
    """µCernVM's aux/ucernvm-version, its /version (the release and a newline), written at every boot, and
    not through a link the OS left there."""
    outside = root / "outside"
    outside.write_text("the image's\n")
    state = BootState(NoSwitch(str(root)), BootLog(io.StringIO()), config=BootConfig(repository=FQRN))
    (state.scratch / "aux").mkdir()
    (state.scratch / "aux" / "ucernvm-version").symlink_to(outside)
    run_stages(state, [Stage("handoff", (handoff_stage,))])
    assert (state.scratch / "aux" / "ucernvm-version").read_text() == f"{__version__}\n"
    assert not (state.scratch / "aux" / "ucernvm-version").is_symlink() and outside.read_text() == "the image's\n"
    assert not state.warnings


@pytest.mark.parametrize(("staged", "warned"), [(b"version=2099.01-1\nkernel=vmlinuz\ninitrd=initrd\n", True),
                                                 (f"version={__version__}\n".encode(), False)],
                         ids=["another version", "this one"])
def test_a_loader_update_staged_for_kexec_is_reported_not_applied(root: Path, staged: bytes, warned: bool) -> None:
    state = BootState(NoSwitch(str(root)), BootLog(io.StringIO()), config=BootConfig(repository=FQRN))
    (state.scratch / "kexec").mkdir()
    (state.scratch / "kexec" / "apply").write_bytes(staged)
    run_stages(state, [Stage("handoff", (handoff_stage,))])
    expected = [f"kexec/apply on the scratch disk stages loader version '2099.01-1': this loader does not boot into "
                f"another one (kexec), and goes on as version {__version__}"]
    assert state.warnings == (expected if warned else [])
    assert state.system.actions[-1].startswith("switch root to")
