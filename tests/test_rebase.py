"""Rebasing the writable layer onto a new snapshot: a real layer (overlayfs whiteouts and an opaque
directory) against a real published repository."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from helpers import fuse_unusable
from test_cache import fill, small_disk  # noqa: F401 (a fixture)
from test_cache_trust import no_hang  # noqa: F401 (a fixture)
from test_context_saved import PLANTS
from test_publish import open_repo, publish
from ucernvm.boot.rebase import SYSTEM_IDS, USER_IDS, Rebase, free_id, merge_accounts, plan_rebase, secret_lines
from ucernvm.client.repository import normalize_path

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="overlayfs whiteouts and trusted.* attributes need root")

SNAPSHOT = {  # the new snapshot's OS tree
    "etc/hostname": b"new-default\n",
    "etc/passwd": b"root:x:0:0:root:/root:/bin/sh\nnewsvc:x:999:999::/nonexistent:/bin/false\n"
                  b"clash:x:1000:1000::/home/clash:/bin/sh\ntoor:x:0:0:root's twin:/root:/bin/sh\n",
    "etc/group": b"root:x:0:\nadm:x:4:syslog\nnewsvc:x:999:\n",
    "etc/shadow": b"root:*:19000:0:99999:7:::\nnewsvc:!:19000::::::\nclash:!:19000::::::\n",
    "etc/gshadow": b"root:*::\nadm:*::syslog\nnewsvc:!::\n",
    "usr/bin/tool": b"tool 2\n",
    "usr/share/doc/readme": b"new readme\n",
    "var/lib/dpkg/status": b"Package: tool\nVersion: 2\n",
    "root/.profile": b"# new profile\n",
    "opt/app/config": b"upstream config\n",
}


def whiteout(path: Path) -> None:
    os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))


@pytest.fixture
def snapshot(tmp_path: Path, keys_dir: Path):  # type: ignore[no-untyped-def]
    source = tmp_path / "snapshot"
    for name, data in SNAPSHOT.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(data)
    (source / "usr/lib").mkdir(parents=True)
    (source / "usr/lib/libx.so").symlink_to("libx.so.2")
    (source / "usr/sbin").symlink_to("bin")  # merged: what was a directory is a symlink now
    os.chown(source / "usr/share/doc/readme", 1000, 999)  # clash's, of group newsvc
    publish(source, tmp_path / "repo", keys_dir)
    return open_repo(tmp_path / "repo", keys_dir)


@pytest.fixture
def upper(tmp_path: Path) -> Path:
    """What an OS wrote on top of the snapshot it booted before."""
    upper = tmp_path / "persistent"
    files = {
        "etc/hostname": b"my-machine\n",
        "etc/passwd": b"root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n",
        "etc/group": b"root:x:0:\nadm:x:4:alice\nalice:x:1000:\n",
        "etc/shadow": b"root:$6$secret:19000:0:99999:7:::\nalice:$6$hers:19000:0:99999:7:::\n",
        "etc/gshadow": b"root:*::\nadm:*::alice\nalice:!::\n",
        "usr/bin/tool": b"tool 1, patched by hand\n",
        "var/lib/dpkg/status": b"Package: tool\nVersion: 1\n",
        "var/log/boot.log": b"booted\n",
        "root/.profile": b"# my profile\n",
        "home/alice/notes": b"my notes\n",
        "opt/app/config": b"my config\n",
    }
    for name, data in files.items():
        (upper / name).parent.mkdir(parents=True, exist_ok=True)
        (upper / name).write_bytes(data)
    (upper / "usr/lib").mkdir()
    (upper / "usr/lib/libx.so").symlink_to("libx.so.1")
    (upper / "usr/sbin").mkdir()
    (upper / "usr/sbin/daemon").write_bytes(b"patched daemon\n")
    (upper / "usr/share/doc").mkdir(parents=True)
    whiteout(upper / "usr/share/doc/readme")  # the old OS deleted it; the new snapshot has it
    whiteout(upper / "usr/share/doc/obsolete")  # deleted, and the new snapshot has none: stays
    os.setxattr(upper / "opt/app", "trusted.overlay.opaque", b"y")
    (upper / "etc/shadow").chmod(0o640)
    return upper


def lookup_in(repository):  # type: ignore[no-untyped-def]
    return lambda relative: repository.lookup(normalize_path(relative))


def test_the_plan_follows_the_rules(snapshot, upper: Path) -> None:
    plan = plan_rebase(upper, lookup_in(snapshot))
    assert plan.restore == ["usr/share/doc/readme"]
    assert sorted(plan.set_aside) == ["usr/bin/tool", "usr/lib/libx.so", "usr/sbin", "var/lib/dpkg/status"]
    assert sorted(plan.preserved) == ["etc/group", "etc/gshadow", "etc/hostname", "etc/passwd", "etc/shadow",
                                      "root/.profile"]
    assert plan.kept == ["opt/app: opaque directory (the OS replaced it whole)"]


def test_applying_it_moves_aside_restores_and_merges_the_accounts(snapshot, upper: Path, tmp_path: Path) -> None:
    plan = plan_rebase(upper, lookup_in(snapshot))

    def read_snapshot(relative: str) -> bytes | None:
        entry = snapshot.lookup(normalize_path(relative))
        return snapshot.read(normalize_path(relative)) if entry is not None and entry.is_regular else None

    aside, log = tmp_path / "aux/rebase-1", tmp_path / "aux/rebase-1.log"
    log.parent.mkdir()
    result = Rebase(str(upper), plan, str(aside), str(log), read_snapshot, str(tmp_path)).apply()
    assert result == {"restored": 1, "set_aside": 4, "preserved": 6, "accounts_added": 3,
                      "accounts_moved": ["user clash (uid 1000 is alice's; now 1001)"],
                      "accounts_left_out": ["user toor (uid 0 is root's)"]}
    # the new snapshot's versions show through; the user's bytes are kept aside, never deleted
    assert not (upper / "usr/bin/tool").exists() and (aside / "usr/bin/tool").read_bytes() == b"tool 1, patched by hand\n"
    assert os.readlink(aside / "usr/lib/libx.so") == "libx.so.1" and not (upper / "usr/lib/libx.so").is_symlink()
    assert (aside / "var/lib/dpkg/status").read_bytes() == b"Package: tool\nVersion: 1\n"
    assert (aside / "usr/sbin/daemon").read_bytes() == b"patched daemon\n" and not (upper / "usr/sbin").exists()
    assert not os.path.lexists(upper / "usr/share/doc/readme")
    assert stat.S_ISCHR(os.lstat(upper / "usr/share/doc/obsolete").st_mode)
    # the machine's own: configuration, state, home, and the directory the OS replaced whole
    assert (upper / "etc/hostname").read_bytes() == b"my-machine\n"
    assert (upper / "root/.profile").read_bytes() == b"# my profile\n"
    assert (upper / "var/log/boot.log").read_bytes() == b"booted\n"
    assert (upper / "home/alice/notes").read_bytes() == b"my notes\n"
    assert (upper / "opt/app/config").read_bytes() == b"my config\n"
    # the new system user and group are there, and the user whose uid alice has, with the next user ID, which
    # the snapshot's files show through the owner map; the twin of root is not
    passwd = (upper / "etc/passwd").read_text()
    assert "alice:x:1000" in passwd and "newsvc:x:999:999:" in passwd and "clash:x:1001:1000:" in passwd
    assert "toor" not in passwd
    assert (tmp_path / "aux/uid_map").read_text() == "1000 1001\n" and not (tmp_path / "aux/gid_map").exists()
    assert (upper / "etc/group").read_text().splitlines() == ["root:x:0:", "adm:x:4:alice,syslog", "alice:x:1000:",
                                                             "newsvc:x:999:"]
    shadow = (upper / "etc/shadow").read_text()
    assert "root:$6$secret" in shadow and "alice:$6$hers" in shadow and "newsvc:!" in shadow and "clash:!" in shadow
    assert stat.S_IMODE((upper / "etc/shadow").stat().st_mode) == 0o640
    assert "newsvc:!::" in (upper / "etc/gshadow").read_text()
    text = log.read_text()
    for line in ("restore usr/share/doc/readme", "rebase usr/bin/tool", "preserve etc/hostname",
                 "keep opt/app: opaque directory", "account etc/passwd: added newsvc",
                 "account etc/passwd: clash has ID 1001: 1000 is taken on this machine (by alice)",
                 "owner map aux/uid_map: 1000 -> 1001", "owner map aux/gid_map: none",
                 "account etc/passwd: left out toor: ID 0 is taken on this machine (by root), and no free one"):
        assert line in text


def test_a_link_the_os_left_in_place_of_the_set_aside_directory_is_not_moved_into(snapshot, upper: Path,
                                                                                 tmp_path: Path) -> None:
    """The OS writes the scratch disk, and the set-aside directory's name (the time of a boot) can be guessed:
    the rebase stops there, and the layer's files stay where they are rather than go where the link points."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "aux").mkdir()
    (tmp_path / "aux/rebase-1").symlink_to(outside)
    plan = plan_rebase(upper, lookup_in(snapshot))
    result = Rebase(str(upper), plan, str(tmp_path / "aux/rebase-1"), str(tmp_path / "aux/rebase-1.log"),
                    lambda relative: None, str(tmp_path)).apply()
    assert "File exists" in str(result["error"])
    assert not list(outside.iterdir()) and (upper / "usr/bin/tool").read_bytes() == b"tool 1, patched by hand\n"


def test_a_second_rebase_of_the_same_layer_changes_nothing_more(snapshot, upper: Path, tmp_path: Path) -> None:
    """A boot cut short rebases again: what is done is not found again, the accounts are not added twice."""
    def read_snapshot(relative: str) -> bytes | None:
        return SNAPSHOT.get(relative)

    for round in (1, 2):
        plan = plan_rebase(upper, lookup_in(snapshot))
        (tmp_path / "aux").mkdir(exist_ok=True)
        result = Rebase(str(upper), plan, str(tmp_path / f"aux/r{round}"), str(tmp_path / f"aux/r{round}.log"),
                        read_snapshot, str(tmp_path)).apply()
    assert result == {"restored": 0, "set_aside": 0, "preserved": 6, "accounts_added": 0,
                      "accounts_left_out": ["user toor (uid 0 is root's)"]}  # as at each rebase
    assert (upper / "etc/passwd").read_text().count("newsvc") == 1
    assert (upper / "etc/passwd").read_text().count("\nclash:") == 1
    assert (tmp_path / "aux/uid_map").read_text() == "1000 1001\n"  # clash is known here as 1001
    assert (upper / "etc/group").read_text().count("syslog") == 1


def test_a_free_id_is_picked_as_useradd_picks_one_in_the_range_of_the_taken_one() -> None:
    assert free_id(999, {0, 999, 998}) == 997 and free_id(5, {5, 999}) == 998  # the highest free system ID
    assert free_id(1000, {0, 1000, 1003}) == 1004  # above the highest user ID
    assert free_id(1000, {1000, USER_IDS[-1]}) == 1001  # the lowest free one, once the highest is taken
    assert free_id(1000, set(USER_IDS)) is None and free_id(100, set(SYSTEM_IDS)) is None  # a full range
    assert free_id(0, {0}) is None and free_id(65534, {65534}) is None  # root's, nobody's: in no range


def test_a_new_users_primary_group_is_the_id_its_group_has_here() -> None:
    """The groups' map, known here under another ID or given a free one, applies to a new user's group field."""
    theirs = b"svc:x:990:990::/:/bin/false\nweb:x:991:33::/:/bin/false\n"
    merged = merge_accounts(b"root:x:0:0::/root:/bin/sh\n", theirs, members=False, group_map={990: 980})
    assert merged.text.splitlines()[1:] == [b"svc:x:990:980::/:/bin/false", b"web:x:991:33::/:/bin/false"]


def test_account_merging_keeps_lines_it_does_not_understand() -> None:
    merged = merge_accounts(b"root:x:0:0::/root:/bin/sh\n+@netgroup\n# comment\n",
                            b"root:x:0:0::/root:/bin/sh\nbin:x:2:2::/bin:/bin/false\n", members=False)
    assert merged.text == b"root:x:0:0::/root:/bin/sh\n+@netgroup\n# comment\nbin:x:2:2::/bin:/bin/false\n"
    assert merged.added == ["bin"] and merged.moved == merged.left_out == [] and merged.id_map == {}
    assert secret_lines(b"root:*:1::::::", b"root:*:1::::::\nbin:*:1::::::\n", ["bin"]) == b"root:*:1::::::\nbin:*:1::::::\n"


@pytest.mark.skipif(fuse_unusable() is not None, reason=str(fuse_unusable()))
def test_new_accounts_whose_ids_the_machine_uses_get_free_ones_that_the_boots_mount_shows(snapshot, upper: Path,
                                                                                         tmp_path: Path) -> None:
    """As µCernVM's merge_accounts: a new user or group of the snapshot whose ID an account of the machine has gets
    a free ID (as useradd picks one in its range), and aux/uid_map and aux/gid_map, which the boot's mount applies,
    make the snapshot's files it owns show that ID. Only what has no free ID is left out, with a warning."""
    import io

    from ucernvm.boot.log import BootLog
    from ucernvm.boot.rebase import rebase_if_moved
    from ucernvm.boot.rootfs import MountRepository, owner_maps
    from ucernvm.boot.state import BootState
    from ucernvm.boot.system import RealSystem

    state = BootState(RealSystem(str(tmp_path / "machine")), BootLog(io.StringIO()))
    state.repository = snapshot
    state.scratch.mkdir(parents=True)
    (upper / "etc/group").write_text("root:x:0:\nadm:x:4:alice\nalice:x:1000:\nlocal:x:999:\n")
    upper.rename(state.scratch / "persistent")
    (state.scratch / "aux").mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("time.strftime", lambda *_: "T")
        rebase_if_moved(state, "0" * 40)
    assert state.warnings == ["the new snapshot's accounts whose IDs this machine's own accounts have, and for which "
                              "no free ID was found, were left out of its /etc: user toor (uid 0 is root's); the "
                              "snapshot's files they own show as owned by those; see aux/rebase-T.log"]
    assert state.facts["rebase"]["accounts_moved"] == ["group newsvc (gid 999 is local's; now 998)",
                                                       "user clash (uid 1000 is alice's; now 1001)"]
    etc = state.scratch / "persistent/etc"
    assert "newsvc:x:998:" in (etc / "group").read_text()  # the highest free system ID
    assert "newsvc:x:999:998:" in (etc / "passwd").read_text()  # its uid is free; its group is the one moved
    assert (state.scratch / "aux/uid_map").read_text() == "1000 1001\n"
    assert (state.scratch / "aux/gid_map").read_text() == "999 998\n"

    maps = owner_maps(state)  # as the mount of this boot, and of every later one, reads them
    point = tmp_path / "ro"
    point.mkdir()
    try:
        MountRepository(snapshot, str(point), str(tmp_path / "mount.log"), False, owner_maps=maps).apply()
        readme = os.stat(point / "usr/share/doc/readme")
        assert (readme.st_uid, readme.st_gid) == (1001, 998)  # clash's, of group newsvc, as the machine knows them
        assert (os.stat(point / "etc/hostname").st_uid, os.stat(point / "etc/hostname").st_gid) == (0, 0)
    finally:
        subprocess.run(["umount", "-l", str(point)], check=False)


@pytest.mark.parametrize(("text", "warning"), [
    ("1000 1001\nclash 5\n", "aux/uid_map:2: 'clash 5' is not 'FROM TO' on the scratch disk"),
    (None, "aux/uid_map is a symbolic link on the scratch disk"),
])
def test_an_owner_map_the_os_spoiled_is_a_warning_and_not_applied(tmp_path: Path, text: str | None,
                                                                   warning: str) -> None:
    import io

    from ucernvm.boot.log import BootLog
    from ucernvm.boot.rootfs import owner_maps
    from ucernvm.boot.state import BootState
    from ucernvm.boot.system import RealSystem

    state = BootState(RealSystem(str(tmp_path / "machine")), BootLog(io.StringIO()))
    (state.scratch / "aux").mkdir(parents=True)
    if text is None:
        (state.scratch / "aux/uid_map").symlink_to("/etc/passwd")
    else:
        (state.scratch / "aux/uid_map").write_text(text)
    (state.scratch / "aux/gid_map").write_text("# the rebase's\n999 998\n")
    maps = owner_maps(state)
    assert list(maps) == ["gid_map"] and maps["gid_map"].table == {999: 998}
    assert state.warnings == [f"{warning}: the snapshot's owners are shown without aux/uid_map"]


def test_a_rebase_that_cannot_finish_is_a_warning_and_the_boot_goes_on(snapshot, upper: Path, tmp_path: Path) -> None:
    """The boot's step: a file where the rebase keeps what it moves aside stops it (EEXIST); the snapshot
    stage warns, the log says how far it got, and the boot goes on rather than failing at every boot."""
    import io

    from ucernvm.boot.log import BootLog
    from ucernvm.boot.rebase import rebase_if_moved
    from ucernvm.boot.state import BootState
    from ucernvm.boot.system import RealSystem

    state = BootState(RealSystem(str(tmp_path / "machine")), BootLog(io.StringIO()))
    state.repository = snapshot
    scratch = state.scratch
    scratch.mkdir(parents=True)
    upper.rename(scratch / "persistent")
    (scratch / "aux").mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("time.strftime", lambda *_: "T")
        (scratch / "aux" / "rebase-T").write_text("in the way")  # the directory for moved files cannot be made
        rebase_if_moved(state, "0" * 40)
    assert "File exists" in state.facts["rebase"]["error"]
    assert "rebase of the writable layer stopped" in state.warnings[0]
    assert state.warnings[0].endswith("; see aux/rebase-T.log")
    log = (scratch / "aux" / "rebase-T.log").read_text()
    assert "restore usr/share/doc/readme" in log and "stopped:" in log
    assert (scratch / "persistent" / "usr/bin/tool").exists()  # nothing half-moved: the file is where it was
    rebase_if_moved(state, snapshot.root_hash.hex)  # the same snapshot: nothing to do
    assert len(state.warnings) == 1


@pytest.mark.parametrize("whiteout_there", [True, False], ids=["a whiteout to remove", "nothing to do"])
def test_a_rebase_whose_log_the_full_disk_cannot_hold_says_so_apart_from_what_it_did(
        snapshot, small_disk: Path, tmp_path: Path, whiteout_there: bool) -> None:
    """On a full scratch disk the rebase itself can go through (removing a whiteout frees room, moving a
    file takes none): the report says what it did, and apart from it that its log could not be written,
    and no log is left that would tell otherwise."""
    import io

    from ucernvm.boot.log import BootLog
    from ucernvm.boot.rebase import rebase_if_moved
    from ucernvm.boot.state import BootState
    from ucernvm.boot.system import RealSystem

    state = BootState(RealSystem(str(tmp_path / "machine")), BootLog(io.StringIO()))
    state.repository, state.scratch_moved_to = snapshot, small_disk
    (small_disk / "persistent/usr/share/doc").mkdir(parents=True)
    (small_disk / "aux").mkdir()
    if whiteout_there:
        whiteout(small_disk / "persistent/usr/share/doc/readme")
    fill(small_disk / "persistent")  # the user's files: only the layer has them
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("time.strftime", lambda *_: "T")
        rebase_if_moved(state, "0" * 40)
    assert state.facts["rebase"] == {"restored": int(whiteout_there), "set_aside": 0, "preserved": 0,
                                     "accounts_added": 0, "log_error": "No space left on device"}
    assert state.warnings == ["aux/rebase-T.log (what the rebase of the writable layer did) not written on the "
                              "scratch disk: No space left on device"]
    assert not (small_disk / "persistent/usr/share/doc/readme").exists()
    assert not (small_disk / "aux/rebase-T.log").exists()


def test_a_rebase_that_cannot_be_planned_points_to_no_log(tmp_path: Path) -> None:
    """The snapshot's catalogs cannot be fetched to compare the layer with: nothing was changed and nothing
    logged, so the warning names no log."""
    import io
    from types import SimpleNamespace

    from ucernvm.boot.log import BootLog
    from ucernvm.boot.rebase import rebase_if_moved
    from ucernvm.boot.state import BootState
    from ucernvm.boot.system import RealSystem
    from ucernvm.errors import FetchError

    def unreachable(path: str) -> None:
        raise FetchError("no server answered for a catalog")

    state = BootState(RealSystem(str(tmp_path / "machine")), BootLog(io.StringIO()))
    state.repository = SimpleNamespace(root_hash=SimpleNamespace(hex="1" * 40), lookup=unreachable)
    (state.scratch / "persistent" / "etc").mkdir(parents=True)
    (state.scratch / "aux").mkdir()
    rebase_if_moved(state, "0" * 40)
    assert state.warnings == ["rebase of the writable layer stopped: no server answered for a catalog"]
    assert list((state.scratch / "aux").iterdir()) == []


def test_an_account_file_that_is_a_link_in_the_layer_is_not_followed(snapshot, upper: Path, tmp_path: Path) -> None:
    """A link names a file of the OS's root; where the rebase runs it would name one of the loader's, whose bytes
    would be copied into the layer (or, were it endless, fill the loader's memory)."""
    outside = tmp_path / "loader-passwd"
    outside.write_bytes(b"loader:x:0:0::/:/bin/sh\n")
    (upper / "etc/passwd").unlink()
    (upper / "etc/passwd").symlink_to(outside)
    plan = plan_rebase(upper, lookup_in(snapshot))
    (tmp_path / "aux").mkdir()
    Rebase(str(upper), plan, str(tmp_path / "aux/r"), str(tmp_path / "aux/r.log"), SNAPSHOT.get, str(tmp_path)).apply()
    assert os.readlink(upper / "etc/passwd") == str(outside)
    assert outside.read_bytes() == b"loader:x:0:0::/:/bin/sh\n"
    assert "newsvc" in (upper / "etc/group").read_text()  # the other account files are merged as ever


@pytest.mark.parametrize("plant", PLANTS)
@pytest.mark.parametrize("name", ["etc/passwd", "etc/shadow"])
def test_an_account_file_the_os_replaced_by_a_fifo_a_huge_file_or_a_device_is_left_alone(
        snapshot, upper: Path, tmp_path: Path, no_hang: None, name: str, plant) -> None:
    """The layer is the OS's to write: the rebase reads its account files without blocking on a FIFO, filling
    the loader's memory with a huge file or following a link to a device that never ends."""
    (upper / name).unlink()
    plant(upper / name)
    plan = plan_rebase(upper, lookup_in(snapshot))
    (tmp_path / "aux").mkdir()
    Rebase(str(upper), plan, str(tmp_path / "aux/r"), str(tmp_path / "aux/r.log"), SNAPSHOT.get, str(tmp_path)).apply()
    assert f"account {name}: left alone, {name} is " in (tmp_path / "aux/r.log").read_text()
    assert "newsvc" in (upper / "etc/group").read_text()  # the other account files are merged as ever


def test_a_fifo_the_os_left_in_place_of_the_log_neither_blocks_the_rebase_nor_is_written_through(
        snapshot, upper: Path, tmp_path: Path, no_hang: None) -> None:
    (tmp_path / "aux").mkdir()
    os.mkfifo(tmp_path / "aux/r.log")
    plan = plan_rebase(upper, lookup_in(snapshot))
    result = Rebase(str(upper), plan, str(tmp_path / "aux/r"), str(tmp_path / "aux/r.log"), SNAPSHOT.get,
                    str(tmp_path)).apply()
    assert "log_error" not in result
    assert "account etc/passwd: added newsvc" in (tmp_path / "aux/r.log").read_text()


def test_a_fifo_the_os_left_where_an_account_file_is_written_first_does_not_block_the_rebase(
        snapshot, upper: Path, tmp_path: Path, no_hang: None) -> None:
    os.mkfifo(upper / f"etc/.passwd.rebase-{os.getpid()}")
    plan = plan_rebase(upper, lookup_in(snapshot))
    (tmp_path / "aux").mkdir()
    Rebase(str(upper), plan, str(tmp_path / "aux/r"), str(tmp_path / "aux/r.log"), SNAPSHOT.get, str(tmp_path)).apply()
    assert "newsvc" in (upper / "etc/passwd").read_text()
    assert not list((upper / "etc").glob(".*.rebase-*"))
