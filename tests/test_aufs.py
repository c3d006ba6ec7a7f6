"""A µCernVM scratch disk's aufs writable layer converted for overlayfs: checked through a real overlay
mount, after a conversion cut short at every step and done again, and against the OS's links."""

from __future__ import annotations

import io
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ucernvm.boot.aufs import BASE, ConvertAufs, convert_aufs_layer, plan_conversion
from ucernvm.boot.log import BootLog
from ucernvm.boot.state import BootState
from ucernvm.boot.system import DryRunSystem, RealSystem

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="overlayfs whiteouts and trusted.* attributes need root")

LOWER = {  # the snapshot
    "usr/share/doc/readme": b"readme\n",
    "usr/share/doc/kept": b"kept\n",
    "etc/old.d/one.conf": b"one\n",
    "opt/app/old-plugin": b"old plugin\n",
    "opt/app/config": b"upstream config\n",
    "var/log/journal/x": b"x\n",
}


def aufs_layer(upper: Path) -> None:
    """What µCernVM's OS left in persistent/: readme and the directory etc/old.d deleted, opt/app replaced
    whole, a file both deleted and made again (a boot cut short between aufs's two steps), aufs's own
    entries at the root (whiteouts are hard links of the base) and a directory aufs was removing."""
    (upper / "usr/share/doc").mkdir(parents=True)
    (upper / "etc").mkdir()
    (upper / "opt/app").mkdir(parents=True)
    (upper / "var/log").mkdir(parents=True)
    (upper / BASE).write_bytes(b"")
    os.link(upper / BASE, upper / "usr/share/doc/.wh.readme")
    os.link(upper / BASE, upper / "etc/.wh.old.d")
    (upper / "opt/app/.wh..wh..opq").write_bytes(b"")
    (upper / "opt/app/config").write_bytes(b"my config\n")
    (upper / "var/log/journal").mkdir()
    (upper / "var/log/.wh.journal").write_bytes(b"")
    (upper / ".wh..wh.plnk").mkdir()
    os.link(upper / "opt/app/config", upper / ".wh..wh.plnk/1234.5")
    (upper / ".wh..wh.orph").mkdir()
    (upper / "etc/.wh..wh.gone.0001").mkdir()
    (upper / "etc/.wh..wh.gone.0001/file").write_bytes(b"being removed\n")
    (upper / "home/alice").mkdir(parents=True)
    (upper / "home/alice/notes").write_bytes(b"notes\n")


def files(top: Path, contents: dict[str, bytes]) -> None:
    for name, data in contents.items():
        (top / name).parent.mkdir(parents=True, exist_ok=True)
        (top / name).write_bytes(data)


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    scratch = tmp_path / "root" / "root.rw"
    for name in ("persistent", "work", "aux"):
        (scratch / name).mkdir(parents=True)
    aufs_layer(scratch / "persistent")
    return scratch


def boot(tmp_path: Path, system: RealSystem | DryRunSystem | None = None) -> BootState:
    state = BootState(system or RealSystem(str(tmp_path / "root")), BootLog(io.StringIO()))
    convert_aufs_layer(state)
    return state


@pytest.fixture
def merged(tmp_path: Path, scratch: Path) -> Iterator[Path]:
    """Mounts the layer over the snapshot, as the mount stage does, once the test has converted it."""
    lower, point = tmp_path / "lower", tmp_path / "merged"
    files(lower, LOWER)
    point.mkdir()
    yield point
    subprocess.run(["umount", str(point)], capture_output=True)


def mount(tmp_path: Path, scratch: Path, point: Path) -> None:
    options = f"lowerdir={tmp_path / 'lower'},upperdir={scratch / 'persistent'},workdir={scratch / 'work'}"
    mounted = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(point)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"overlayfs cannot be mounted here: {mounted.stderr.decode().strip()}")


def tree(top: Path) -> dict[str, tuple]:
    """Every entry below ``top``: kind, device number, opaque attribute, and the bytes of a file."""
    entries: dict[str, tuple] = {}
    for directory, names, file_names in os.walk(top):
        for name in names + file_names:
            path = Path(directory) / name
            st = os.lstat(path)
            try:
                opaque = os.getxattr(path, "trusted.overlay.opaque", follow_symlinks=False)
            except OSError:
                opaque = None
            data = path.read_bytes() if stat.S_ISREG(st.st_mode) else None
            entries[str(path.relative_to(top))] = (stat.S_IFMT(st.st_mode), st.st_rdev, opaque, data)
    return entries


def test_deleted_files_stay_deleted_and_a_replaced_directory_hides_the_snapshot_s(tmp_path: Path, scratch: Path,
                                                                                  merged: Path) -> None:
    state = boot(tmp_path)
    mount(tmp_path, scratch, merged)
    assert not (merged / "usr/share/doc/readme").exists()  # deleted under aufs, still deleted
    assert (merged / "usr/share/doc/kept").read_bytes() == b"kept\n"
    assert not (merged / "etc/old.d").exists()  # a deleted directory too
    assert sorted(os.listdir(merged / "opt/app")) == ["config"]  # replaced whole: the old plugin stays hidden
    assert (merged / "opt/app/config").read_bytes() == b"my config\n"
    assert os.listdir(merged / "var/log/journal") == []  # made again after its deletion: the layer's alone shows
    assert (merged / "home/alice/notes").read_bytes() == b"notes\n"
    seen = [name for _, names, file_names in os.walk(merged) for name in names + file_names]
    assert not [name for name in seen if name.startswith(".wh.")]
    log = (scratch / "aux").glob("aufs-*.log")
    [log] = list(log)
    lines = log.read_text().splitlines()
    assert "whiteout usr/share/doc/readme (was .wh.readme)" in lines
    assert "whiteout etc/old.d (was .wh.old.d)" in lines
    assert "opaque opt/app (was opt/app/.wh..wh..opq)" in lines
    assert "opaque var/log/journal: made after .wh.journal deleted the snapshot's" in lines
    assert lines[-1] == f"remove {BASE} (aufs's own)"  # the base last
    assert {"remove .wh..wh.plnk (aufs's own)", "remove .wh..wh.orph (aufs's own)",
            "remove etc/.wh..wh.gone.0001 (aufs's own)"} <= set(lines)
    assert state.warnings == []
    assert state.facts["aufs"] == {"whiteouts": 3, "opaque": 1, "removed": 4, "left": 0}
    assert f"converted the writable layer from µCernVM's aufs to overlayfs: whiteouts: 3, opaque directories: 1, " \
           f"aufs's own entries removed: 4; see aux/{log.name}" in state.log.console.getvalue()


def test_a_converted_layer_is_left_alone_by_the_next_boot(tmp_path: Path, scratch: Path) -> None:
    boot(tmp_path)
    converted = tree(scratch / "persistent")
    (scratch / "persistent/home/alice/.wh.mine").write_bytes(b"a file of the OS's own, named so\n")
    state = boot(tmp_path)
    assert "aufs" not in state.facts and state.system.actions == []
    assert tree(scratch / "persistent") == {**converted, "home/alice/.wh.mine": (stat.S_IFREG, 0, None,
                                                                                  b"a file of the OS's own, named so\n")}


def test_a_conversion_cut_at_any_step_is_finished_by_the_next_boot(tmp_path: Path, scratch: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Each change (a whiteout made, an attribute set, an entry removed) is where a power cut can stop the
    conversion: the next boot ends with the same layer as one that was never cut."""
    pristine = tmp_path / "pristine"
    subprocess.run(["cp", "-a", str(scratch), str(pristine)], check=True)
    boot(tmp_path)
    expected = tree(scratch / "persistent")
    calls = {"count": 0, "cut_at": -1}

    def cut(real):  # type: ignore[no-untyped-def]
        def call(*args, **kwargs):  # type: ignore[no-untyped-def]
            calls["count"] += 1
            if calls["count"] == calls["cut_at"]:
                raise OSError(5, "Input/output error (the power cut)")
            return real(*args, **kwargs)
        return call

    for name in ("mknod", "unlink", "setxattr", "rmdir"):
        monkeypatch.setattr(os, name, cut(getattr(os, name)))
    cut_at = 1
    while True:
        subprocess.run(["rm", "-rf", str(scratch)], check=True)
        subprocess.run(["cp", "-a", str(pristine), str(scratch)], check=True)
        calls.update(count=0, cut_at=cut_at)
        first = boot(tmp_path)
        if "error" not in first.facts["aufs"]:
            break  # no step was left to cut
        assert first.warnings and "stopped" in first.warnings[0] and "the next boot takes it up again" in first.warnings[0]
        calls.update(count=0, cut_at=-1)
        second = boot(tmp_path)
        assert second.warnings == [] and tree(scratch / "persistent") == expected, f"cut at change {cut_at}"
        cut_at += 1
    assert cut_at > 10


def test_the_os_s_links_are_neither_followed_nor_taken_for_marks(tmp_path: Path, scratch: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / ".wh.precious").write_bytes(b"not the layer's\n")
    (outside / "precious").write_bytes(b"precious\n")
    upper = scratch / "persistent"
    (upper / "usr/link").symlink_to(outside)  # a directory link: not walked into
    (upper / "usr/share/doc/.wh.linked").symlink_to(outside / "precious")  # a link as a mark: aufs ignores it
    os.rename(upper / ".wh..wh.orph", tmp_path / "orph")
    (upper / ".wh..wh.orph").symlink_to(outside)  # aufs's own entry replaced by a link: the link goes, not outside
    state = boot(tmp_path)
    assert sorted(os.listdir(outside)) == [".wh.precious", "precious"]
    assert (outside / "precious").read_bytes() == b"precious\n"
    assert (upper / "usr/share/doc/.wh.linked").is_symlink() and not (upper / "usr/share/doc/linked").exists()
    assert not os.path.lexists(upper / ".wh..wh.orph") and not os.path.lexists(upper / BASE)
    assert len(state.warnings) == 1 and "marks left as they are, not aufs's marks: 1;" in state.warnings[0]
    [log] = (scratch / "aux").glob("aufs-*.log")
    assert "leave usr/share/doc/.wh.linked: not a regular file, which aufs does not take for a mark either" in \
        log.read_text().splitlines()


def test_a_layer_without_aufs_s_base_is_not_touched(tmp_path: Path, scratch: Path) -> None:
    os.unlink(scratch / "persistent" / BASE)
    before = tree(scratch / "persistent")
    state = boot(tmp_path)
    assert tree(scratch / "persistent") == before and state.system.actions == [] and "aufs" not in state.facts


def test_a_dry_run_plans_the_conversion_and_changes_nothing(tmp_path: Path, scratch: Path) -> None:
    before = tree(scratch / "persistent")
    plan = plan_conversion(scratch / "persistent")
    system = DryRunSystem()
    system.do(ConvertAufs(str(scratch / "persistent"), plan, str(scratch / "aux/aufs.log")))
    assert tree(scratch / "persistent") == before and not list((scratch / "aux").iterdir())
    assert system.actions == [f"convert {scratch / 'persistent'} from aufs to overlayfs (whiteouts: 3, opaque "
                              f"directories: 1, aufs's own entries removed: 4; log: {scratch / 'aux/aufs.log'})"]


def test_a_directory_that_cannot_be_read_stops_the_conversion_before_any_change(tmp_path: Path, scratch: Path,
                                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    before = tree(scratch / "persistent")
    real = os.scandir

    def failing(path):  # type: ignore[no-untyped-def]
        if str(path).endswith("opt/app"):
            raise OSError(5, "Input/output error", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", failing)
    state = boot(tmp_path)
    monkeypatch.undo()
    assert tree(scratch / "persistent") == before
    assert len(state.warnings) == 1 and "was not converted for overlayfs" in state.warnings[0]
    assert "the next boot tries again" in state.warnings[0]
