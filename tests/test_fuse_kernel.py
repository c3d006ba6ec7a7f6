"""The /dev/fuse server, mounted for real over an in-memory tree."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from helpers import fuse_unusable, run_cli
from ucernvm.client.fuse.kernel import GETXATTR, FuseMount, MountOptions, mount
from ucernvm.client.fuse.memory import MemoryTree
from ucernvm.client.fuse.operations import ROOT_INO, Attributes


pytestmark = pytest.mark.skipif(fuse_unusable() is not None, reason=str(fuse_unusable()))

REPO_ROOT = Path(__file__).resolve().parents[1]
BIG = bytes(range(256)) * (3 * 4096 + 7)  # ~3 MiB: several kernel read requests, odd tail
MTIME_NS = 1_700_000_000_123_456_789


def _mounted(path: Path) -> bool:
    with open("/proc/self/mountinfo", encoding="utf-8") as lines:
        return any(line.split(" ")[4] == str(path) for line in lines)


def _cleanup(path: Path) -> None:
    while _mounted(path):
        subprocess.run(["umount", "-l", str(path)], check=False)


class RecordingTree(MemoryTree):
    """A MemoryTree that counts lookups and records init/destroy, and fails on one name."""

    def __init__(self) -> None:
        super().__init__(mtime_ns=MTIME_NS)
        self.lookups: list[bytes] = []
        self.events: list[str] = []
        self.handles = {"open": 0, "release": 0, "opendir": 0, "releasedir": 0}

    def init(self) -> None:
        self.events.append("init")

    def destroy(self) -> None:
        self.events.append("destroy")

    def open(self, ino: int, flags: int) -> object:
        self.handles["open"] += 1
        return super().open(ino, flags)

    def release(self, handle: object) -> None:
        self.handles["release"] += 1

    def opendir(self, ino: int) -> object:
        self.handles["opendir"] += 1
        return super().opendir(ino)

    def releasedir(self, handle: object) -> None:
        self.handles["releasedir"] += 1

    def lookup(self, parent_ino: int, name: bytes) -> Attributes:
        self.lookups.append(name)
        if name == b"buggy":
            raise RuntimeError("a bug in the file system")
        return super().lookup(parent_ino, name)


def _build(tree: MemoryTree) -> dict[str, int]:
    etc = tree.mkdir(ROOT_INO, b"etc")
    usr = tree.mkdir(ROOT_INO, b"usr")
    lib = tree.mkdir(usr, b"lib", mode=0o700)
    hosts = tree.add_file(etc, b"hosts", b"127.0.0.1 localhost\n")
    tree.add_file(lib, b"big.bin", BIG)
    tree.add_file(ROOT_INO, b"empty", b"")
    tree.add_file(ROOT_INO, b"tool", b"#!/bin/sh\necho ok\n", mode=0o755)
    tree.link(usr, b"hosts.link", hosts)
    tree.symlink(ROOT_INO, b"lib", b"usr/lib")
    tree.symlink(ROOT_INO, b"dangling", b"/nowhere/at/all")
    tree.set_xattr(hosts, b"user.origin", b"catalog")
    tree.set_xattr(hosts, b"security.capability", bytes(20))
    many = tree.mkdir(ROOT_INO, b"many")
    for index in range(1500):  # several READDIR(PLUS) requests with long names
        tree.add_file(many, b"entry-%04d-" % index + b"x" * 60, b"%d" % index)
    return {"hosts": hosts}


@pytest.fixture(params=[(True, True), (False, True), (True, False)],
                ids=["readdirplus", "readdir", "open-messages"])
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Path, RecordingTree, FuseMount, dict[str, int]]]:
    readdirplus, zero_message_open = request.param
    tree = RecordingTree()
    inodes = _build(tree)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    fuse = mount(tree, str(mountpoint), MountOptions(threads=3, readdirplus=readdirplus,
                                                     zero_message_open=zero_message_open))
    fuse.start()
    try:
        yield mountpoint, tree, fuse, inodes
    finally:
        _cleanup(mountpoint)
        assert fuse.join(10), "workers did not stop after the unmount"
    # Every handle the server opened was given back, whether the kernel sent RELEASE or not.
    assert tree.handles["open"] == tree.handles["release"]
    assert tree.handles["opendir"] == tree.handles["releasedir"]


def test_reads_bytes_back(served) -> None:
    mnt, *_ = served
    assert (mnt / "etc/hosts").read_bytes() == b"127.0.0.1 localhost\n"
    assert (mnt / "usr/lib/big.bin").read_bytes() == BIG
    assert (mnt / "empty").read_bytes() == b""
    with open(mnt / "usr/lib/big.bin", "rb") as handle:
        handle.seek(1_000_003)
        assert handle.read(70_000) == BIG[1_000_003:1_070_003]
        assert os.pread(handle.fileno(), 100, len(BIG) - 10) == BIG[-10:]


def test_parallel_readers_get_their_bytes(served) -> None:
    mnt, *_ = served

    def read_slice(index: int) -> bool:
        offset = index * 200_003
        with open(mnt / "usr/lib/big.bin", "rb", buffering=0) as handle:
            return os.pread(handle.fileno(), 150_000, offset) == BIG[offset : offset + 150_000]

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(read_slice, range(15)))


def test_opening_a_file_again_costs_no_request(served) -> None:
    """Kernels since 4.14 open files without asking the server once it answered OPEN with ENOSYS."""
    mnt, tree, fuse, _ = served
    for _ in range(20):
        assert (mnt / "etc/hosts").read_bytes() == b"127.0.0.1 localhost\n"
        assert len(os.listdir(mnt / "many")) == 1500
    if fuse.options.zero_message_open:
        assert tree.handles["open"] == 1 and tree.handles["opendir"] <= 1  # on the first read/listing only
    else:
        assert tree.handles["open"] == 20 and tree.handles["opendir"] == 20


def test_attributes(served) -> None:
    mnt, *_ = served
    hosts = os.stat(mnt / "etc/hosts")
    assert hosts.st_size == 20 and oct(hosts.st_mode) == oct(0o100644)
    assert hosts.st_mtime_ns == MTIME_NS and hosts.st_ctime_ns == MTIME_NS
    assert os.stat(mnt / "tool").st_mode & 0o777 == 0o755
    assert os.stat(mnt / "usr/lib").st_mode & 0o777 == 0o700
    assert os.stat(mnt).st_nlink == 2 + 3  # etc, usr, many
    assert os.access(mnt / "tool", os.X_OK)


def test_listings(served) -> None:
    mnt, *_ = served
    assert sorted(os.listdir(mnt)) == ["dangling", "empty", "etc", "lib", "many", "tool", "usr"]
    assert sorted(os.listdir(mnt / "usr")) == ["hosts.link", "lib"]
    many = os.listdir(mnt / "many")
    assert len(many) == 1500 and len(set(many)) == 1500
    assert all((mnt / "many" / name).read_bytes() == b"%d" % int(name[6:10]) for name in many[::97])
    with os.scandir(mnt) as entries:
        kinds = {entry.name: (entry.is_dir(follow_symlinks=False), entry.is_symlink()) for entry in entries}
    assert kinds["etc"] == (True, False) and kinds["lib"] == (False, True) and kinds["empty"] == (False, False)
    walked = sum(len(dirs) + len(files) for _, dirs, files in os.walk(mnt))
    assert walked == 7 + 1 + 2 + 1 + 1500


@pytest.mark.parametrize("adaptive", [True, False], ids=["adaptive", "always"])
def test_listings_carry_attributes_always_unless_adaptive(tmp_path: Path, adaptive: bool) -> None:
    """The kernel asks for a long listing in several requests; adaptively, only the first carries
    attributes when nothing was looked up in between, so a stat of every entry then looks most of them up."""
    tree = RecordingTree()
    _build(tree)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    fuse = mount(tree, str(mountpoint), MountOptions(threads=2, adaptive_readdirplus=adaptive))
    fuse.start()
    try:
        names = os.listdir(mountpoint / "many")
        before = len(tree.lookups)
        assert all(os.lstat(mountpoint / "many" / name).st_size == len(b"%d" % int(name[6:10])) for name in names)
        looked_up = len(tree.lookups) - before
    finally:
        _cleanup(mountpoint)
        assert fuse.join(10)
    assert len(names) == 1500
    assert (looked_up > 500) if adaptive else (looked_up == 0), looked_up


def test_symlinks(served) -> None:
    mnt, *_ = served
    assert os.readlink(mnt / "lib") == "usr/lib"
    assert (mnt / "lib/big.bin").read_bytes()[:512] == BIG[:512]
    assert os.readlink(mnt / "dangling") == "/nowhere/at/all"
    with pytest.raises(OSError) as raised:
        os.readlink(mnt / "etc/hosts")
    assert raised.value.errno == errno.EINVAL


def test_hard_links_share_the_inode(served) -> None:
    mnt, _, _, inodes = served
    first, second = os.stat(mnt / "etc/hosts"), os.stat(mnt / "usr/hosts.link")
    assert first.st_ino == second.st_ino == inodes["hosts"]
    assert first.st_nlink == second.st_nlink == 2
    assert (mnt / "usr/hosts.link").read_bytes() == b"127.0.0.1 localhost\n"


def test_xattrs(served) -> None:
    mnt, *_ = served
    hosts = mnt / "etc/hosts"
    assert os.getxattr(hosts, "user.origin") == b"catalog"
    assert sorted(os.listxattr(hosts)) == ["security.capability", "user.origin"]
    assert os.listxattr(mnt / "tool") == []
    with pytest.raises(OSError) as raised:
        os.getxattr(mnt / "tool", "user.origin")
    assert raised.value.errno == errno.ENODATA


def test_without_xattrs_the_kernel_asks_once_and_then_answers_itself(tmp_path: Path) -> None:
    tree = RecordingTree()
    _build(tree)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    fuse = mount(tree, str(mountpoint), MountOptions(threads=2, xattrs=False))
    assert GETXATTR not in fuse._handlers  # the server answers ENOSYS; counted here
    asked = []

    def count_and_refuse(nodeid: int, payload: memoryview) -> bytes:
        asked.append(nodeid)
        raise OSError(errno.ENOSYS, "")

    fuse._handlers[GETXATTR] = count_and_refuse
    fuse.start()
    try:
        for _ in range(10):
            for name in ("user.origin", "security.capability", "trusted.overlay.metacopy"):
                with pytest.raises(OSError) as raised:
                    os.getxattr(mountpoint / "etc/hosts", name)
                assert raised.value.errno == errno.EOPNOTSUPP
        # An exec, through a shell: older 3.11 releases (Debian 12's 3.11.2) keep the interpreter's lock
        # until a vfork'd child has exec'd, and this program is served by this process's own threads.
        assert subprocess.run(["/bin/sh", "-c", str(mountpoint / "tool")], capture_output=True).stdout == b"ok\n"
        assert (mountpoint / "etc/hosts").read_bytes() == b"127.0.0.1 localhost\n"
        refused = run_cli("stat", mountpoint)  # `ucernvm stat` says why it can tell nothing
        assert refused.returncode == 2 and b"answers no extended attributes" in refused.stderr
    finally:
        _cleanup(mountpoint)
        assert fuse.join(10)
    assert len(asked) == 1


def test_statfs(served) -> None:
    mnt, tree, *_ = served
    stats = os.statvfs(mnt)
    assert stats.f_files == len(tree._nodes) and stats.f_blocks >= len(BIG) // 4096
    assert stats.f_bfree == 0 and stats.f_bsize == 4096 and stats.f_namemax == 255
    assert stats.f_flag & os.ST_RDONLY


@pytest.mark.parametrize(
    "change",
    [
        lambda mnt: open(mnt / "etc/hosts", "r+b"),
        lambda mnt: open(mnt / "new-file", "wb"),
        lambda mnt: os.mkdir(mnt / "new-dir"),
        lambda mnt: os.unlink(mnt / "etc/hosts"),
        lambda mnt: os.rename(mnt / "etc/hosts", mnt / "etc/moved"),
        lambda mnt: os.symlink("x", mnt / "new-link"),
        lambda mnt: os.link(mnt / "etc/hosts", mnt / "etc/again"),
        lambda mnt: os.chmod(mnt / "etc/hosts", 0o600),
        lambda mnt: os.setxattr(mnt / "etc/hosts", "user.new", b"1"),
        lambda mnt: os.truncate(mnt / "etc/hosts", 0),
    ],
)
def test_writes_are_refused(served, change) -> None:
    mnt, *_ = served
    with pytest.raises(OSError) as raised:
        change(mnt)
    assert raised.value.errno == errno.EROFS
    assert (mnt / "etc/hosts").read_bytes() == b"127.0.0.1 localhost\n"


def test_missing_names_and_negative_caching(served) -> None:
    mnt, tree, *_ = served
    for _ in range(3):
        with pytest.raises(FileNotFoundError):
            os.stat(mnt / "etc/missing")
    assert tree.lookups.count(b"missing") == 1  # the kernel cached the miss
    with pytest.raises(NotADirectoryError):
        os.stat(mnt / "etc/hosts/below")


def test_a_failing_operation_is_eio_and_the_server_goes_on(served) -> None:
    mnt, *_ = served
    with pytest.raises(OSError) as raised:
        os.stat(mnt / "buggy")
    assert raised.value.errno == errno.EIO
    assert (mnt / "etc/hosts").read_bytes() == b"127.0.0.1 localhost\n"


def test_unmount_ends_the_workers(tmp_path: Path) -> None:
    tree = RecordingTree()
    tree.add_file(ROOT_INO, b"file", b"data")
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    fuse = mount(tree, str(mountpoint), MountOptions(threads=4))
    try:
        fuse.start()
        assert (mountpoint / "file").read_bytes() == b"data"
        assert sum(thread.name.startswith("fuse-") for thread in threading.enumerate()) == 4
        fuse.unmount(lazy=False)
        assert fuse.join(10)
    finally:
        _cleanup(mountpoint)
    assert not _mounted(mountpoint)
    assert not [thread for thread in threading.enumerate() if thread.name.startswith("fuse-")]
    assert tree.events == ["init", "destroy"]
    assert fuse.fd == -1


def test_mount_through_a_symlink_raises_the_readahead_window(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to("real")
    tree = MemoryTree()
    tree.add_file(ROOT_INO, b"file", b"data")
    fuse = mount(tree, str(tmp_path / "alias"), MountOptions(read_ahead_kb=2048))
    try:
        fuse.start()
        assert fuse.mountpoint == str(tmp_path / "real") and fuse.device is not None
        assert (tmp_path / "alias/file").read_bytes() == b"data"
        # A whole number of the largest READs: 2048 with 1 MiB reads, 2024 with 1012 KiB ones (pipes of 1 MiB).
        read_kb = fuse.read_pages * os.sysconf("SC_PAGE_SIZE") // 1024
        window = int(Path(f"/sys/class/bdi/{fuse.device}/read_ahead_kb").read_text())
        assert window % read_kb == 0 and 2048 - read_kb < window <= 2048
        assert os.stat(tmp_path / "real").st_dev == os.makedev(*map(int, fuse.device.split(":")))
    finally:
        _cleanup(tmp_path / "real")
    assert fuse.join(10)


def test_mount_errors_are_mount_errors(tmp_path: Path) -> None:
    from ucernvm.errors import MountError

    with pytest.raises(MountError, match="cannot mount FUSE"):
        mount(MemoryTree(), str(tmp_path / "does-not-exist"))


def test_daemon_keeps_serving_after_its_parent_exits(tmp_path: Path) -> None:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    script = textwrap.dedent(
        """
        import sys
        from ucernvm.client.fuse.kernel import mount
        from ucernvm.client.fuse.memory import MemoryTree
        tree = MemoryTree()
        tree.add_file(1, b"greeting", b"served by the daemon")
        print(mount(tree, sys.argv[1]).fork(), flush=True)
        """
    )
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    try:
        with open(tmp_path / "stderr", "wb") as stderr:
            parent = subprocess.run([sys.executable, "-c", script, str(mountpoint)], env=env, stderr=stderr,
                                    stdout=subprocess.PIPE, text=True, timeout=30, check=True)
        daemon = int(parent.stdout)
        assert _alive(daemon)
        assert (mountpoint / "greeting").read_bytes() == b"served by the daemon"
        subprocess.run(["umount", str(mountpoint)], check=True)
        deadline = time.monotonic() + 10
        while _alive(daemon) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(daemon), "the daemon did not exit after the unmount"
        assert (tmp_path / "stderr").read_text() == ""
    finally:
        _cleanup(mountpoint)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_daemon_forked_from_the_boot_collects_cycles_again() -> None:
    # The boot's PID 1 runs with the collector off (initramfs/init.template); the FUSE daemon it forks
    # serves for the life of the VM and must collect its garbage.
    script = textwrap.dedent(
        """
        import gc
        gc.disable()
        from ucernvm.client.fuse.kernel import _tune_memory_for_serving
        _tune_memory_for_serving()
        print(gc.isenabled())
        """
    )
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=30)
    assert result.stdout.strip() == "True", result.stderr
