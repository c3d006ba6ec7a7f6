"""What the OS gets from the context (boot/seed.py): ``cernvm_inject`` and pickup tarballs, real
archives extracted into a directory that stands for the new root (hostile ones are refused and write
nothing outside it), the OS's bootstrap hook with glideinWMS user-data, and the SSH keys of the seed's
meta-data, from a fake GCE metadata server, picked for the default user of the OS's cloud.cfg."""

from __future__ import annotations

import base64
import io
import json
import shutil
import stat
from pathlib import Path

import pytest

from ucernvm.boot.contextualize import apply_user_data
from ucernvm.boot.log import BootLog
from ucernvm.boot.seed import (BOOTSTRAP, BUSYBOX, EXTRA_USER_DATA, GLIDEINWMS_USER_DATA, NOCLOUD_SEED, PICKUP,
                               ExtractTarball, extra_user_data, hand_over_context, inject, seed_cloud_init)
from ucernvm.boot.state import BootState
from ucernvm.boot.system import System
from ucernvm.context.found import FoundContext
from ucernvm.context.sources import MetadataAddresses, SourceProbe, find_user_data
from ucernvm.errors import UcernvmError
from ucernvm.tarfiles import tarfile

from metadata_fakes import Cloud, closed_port, metadata_server
from test_cache_trust import no_hang  # noqa: F401 (a fixture)
from test_context_saved import PLANTS


def _tarball(*members: tuple[str, str, bytes | str, int]) -> bytes:
    """(name, kind 'file'|'dir'|'symlink', data or link target, mode) as a .tar.gz."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, kind, payload, mode in members:
            info = tarfile.TarInfo(name)
            info.mode = mode
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                archive.addfile(info)
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, str(payload)
                archive.addfile(info)
            else:
                data = payload if isinstance(payload, bytes) else payload.encode()
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path]:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    return root, outside


def test_an_archive_is_extracted_into_the_root(layout: tuple[Path, Path]) -> None:
    root, _ = layout
    data = _tarball(("etc", "dir", "", 0o755), ("etc/motd", "file", "hello\n", 0o644),
                    ("etc/motd.link", "symlink", "motd", 0o777), ("usr/bin/tool", "file", b"#!/bin/sh\n", 0o4755),
                    ("usr/bin/group-tool", "file", b"#!/bin/sh\n", 0o2775), ("shared", "dir", "", 0o1777))
    names = ExtractTarball(data, str(root), "cernvm_inject").apply()
    assert names == ["etc", "etc/motd", "etc/motd.link", "usr/bin/tool", "usr/bin/group-tool", "shared"]
    assert (root / "etc" / "motd").read_text() == "hello\n"
    assert (root / "etc" / "motd.link").read_text() == "hello\n"
    # Modes as the archive has them, as µCernVM's tar extracted them as root.
    modes = {name: stat.S_IMODE((root / name).stat().st_mode)
             for name in ("usr/bin/tool", "usr/bin/group-tool", "shared")}
    assert modes == {"usr/bin/tool": 0o4755, "usr/bin/group-tool": 0o2775, "shared": 0o1777}


def test_an_absolute_name_lands_under_the_root(layout: tuple[Path, Path]) -> None:
    root, outside = layout
    ExtractTarball(_tarball((f"{outside}/planted", "file", "x", 0o644)), str(root), "cernvm_inject").apply()
    assert not (outside / "planted").exists()
    assert (root / str(outside).lstrip("/") / "planted").read_text() == "x"


@pytest.mark.parametrize("members", [
    [("../outside/planted", "file", "x", 0o644)],
    [("escape", "symlink", "../outside", 0o777), ("escape/planted", "file", "x", 0o644)],
    [("escape", "symlink", "/", 0o777), ("escape/tmp/planted", "file", "x", 0o644)],
], ids=["dot-dot", "through a relative link", "through an absolute link"])
def test_a_path_out_of_the_root_is_refused(layout: tuple[Path, Path], members: list) -> None:
    root, outside = layout
    with pytest.raises(UcernvmError, match="cernvm_inject cannot be extracted"):
        ExtractTarball(_tarball(*members), str(root), "cernvm_inject").apply()
    assert list(outside.iterdir()) == []
    assert not Path("/tmp/planted").exists()


@pytest.mark.parametrize("data", [b"", b"\x1f\x8b garbage", b"not a tarball at all\n",
                                  _tarball(("big", "file", bytes(range(256)) * 400, 0o644))[:300]],
                         ids=["empty", "broken gzip", "text", "truncated"])
def test_garbage_is_a_clear_error(layout: tuple[Path, Path], data: bytes) -> None:
    root, _ = layout
    with pytest.raises(UcernvmError, match="pickup.tar.gz cannot be extracted"):
        ExtractTarball(data, str(root), "pickup.tar.gz").apply()


@pytest.mark.parametrize("plant", PLANTS)
@pytest.mark.parametrize("name, step", [(PICKUP, inject), (EXTRA_USER_DATA, extra_user_data)])
def test_a_fifo_a_huge_file_or_a_link_in_place_of_a_saved_extra_is_a_warning(tmp_path: Path, no_hang: None,
                                                                            name: str, step, plant) -> None:
    """The OS writes the scratch disk: what the handoff reads back from context/ must neither block PID 1 on
    a FIFO nor fill its memory with a huge file or a device that never ends."""
    state = BootState(System(str(tmp_path)), BootLog(io.StringIO()))
    placed = state.scratch / name
    placed.parent.mkdir(parents=True)
    plant(placed)
    state.new_root.mkdir(parents=True)
    step(state)
    (warning,) = state.warnings
    assert warning.startswith(f"{name} is ") and " on the scratch disk: " in warning
    assert not any(state.new_root.iterdir())


GLIDEIN_USER_DATA = base64.b64encode(
    b"[glidein_startup]\nargs=-v std -param_CERNVM_CMS_PROXY http.colon,//squid.dot,example.colon,3128\n"
) + b"####-cluster 1234 -subcluster 0####\n"


def _booted(machine: Path, user_data: bytes, first_boot: bool) -> BootState:
    """A boot's context applied on ``machine`` (the loader's root), the image's busybox linked in."""
    busybox = machine / BUSYBOX.lstrip("/")
    if not busybox.exists():
        busybox.parent.mkdir(parents=True)
        busybox.symlink_to(shutil.which("busybox") or "/bin/busybox")
    state = BootState(System(str(machine)), BootLog(io.StringIO()))
    state.scratch_fresh = first_boot
    apply_user_data(state, user_data, "EC2")
    state.new_root.mkdir(parents=True, exist_ok=True)
    return state


@pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox is not installed (apt install busybox)")
def test_the_os_hook_runs_with_the_new_root_and_finds_glideinwms_user_data_on_the_first_boot(tmp_path: Path) -> None:
    """µCernVM sourced the OS's /.ucernvm_bootstrap with the new root, UCONTEXT_SRC and its logging
    functions, and left glideinWMS user-data at /glideinwms-user-data, its own root, for the hook to
    start the pilot with; later boots leave it out, as the pilot is set up in the OS by then."""
    state = _booted(tmp_path, GLIDEIN_USER_DATA, first_boot=True)
    (state.new_root / BOOTSTRAP).write_text('log_info "from $UCONTEXT_SRC"\necho "$UCONTEXT_SRC" > "$1/hook-ran"\n')
    hand_over_context(state)
    assert (tmp_path / GLIDEINWMS_USER_DATA.lstrip("/")).read_bytes() == GLIDEIN_USER_DATA
    assert (state.new_root / "hook-ran").read_text() == "EC2\n"
    assert "[INF] from EC2" in state.log.text()
    assert not state.warnings

    (tmp_path / GLIDEINWMS_USER_DATA.lstrip("/")).unlink()
    hand_over_context(_booted(tmp_path, GLIDEIN_USER_DATA, first_boot=False))
    assert not (tmp_path / GLIDEINWMS_USER_DATA.lstrip("/")).exists()


def test_other_user_data_is_not_left_for_the_glideinwms_pilot(tmp_path: Path) -> None:
    hand_over_context(_booted(tmp_path, b"#cloud-config\nruncmd: [true]\n", first_boot=True))
    assert not (tmp_path / GLIDEINWMS_USER_DATA.lstrip("/")).exists()


@pytest.mark.parametrize("name", ["etc/systemd", "etc/systemd/system", "usr/lib/ucernvm"])
def test_the_login_hook_is_not_written_through_a_link_that_leads_out_of_the_os_root(tmp_path: Path,
                                                                                   name: str) -> None:
    """The OS's links resolve in the loader's tree when PID 1 writes: where one leads out of the OS's root,
    no file of the hook is written, with one warning (a getty's drop-in alone would name a missing login)."""
    outside = tmp_path / "etc" / "outside"
    outside.mkdir(parents=True)
    state = BootState(System(str(tmp_path)), BootLog(io.StringIO()))
    placed = state.new_root / name
    placed.parent.mkdir(parents=True)
    placed.symlink_to(outside)
    (state.new_root / "etc" / "systemd").mkdir(parents=True, exist_ok=True)  # a systemd OS, which gets the hook
    hand_over_context(state)
    assert not list(outside.iterdir())
    assert not list((state.new_root / "etc" / "systemd").glob("**/*.conf"))
    (warning,) = state.warnings
    assert warning.startswith("the #PIN login hook not written: a symbolic link in the OS's root on the way to /")


# ---------------------------------------------------------------------------------------- GCE's SSH keys

CLOUDINIT_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIForCloudInit ops@site"
DEBIAN_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIForDebian ops@laptop"
OPS_KEY = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQForOps ops@desk"
PROJECT_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIForTheProject ops@site"
ALICE_KEY = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQForAlice alice@laptop"
SSH_KEYS = (f"alice:{ALICE_KEY}\n"
            f"cloudinit:{CLOUDINIT_KEY}\n"
            "no colon at all\n"
            f"debian:{DEBIAN_KEY}\n"
            "debian:ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIN\u00f6nAscii ops@site\n"  # cloud-init skips the line
            f"ops:{OPS_KEY}\n")
# Debian's, shortened: the default user is named in system_info and listed in users.
DEBIAN_CLOUD_CFG = """\
# The top level settings are used as module and base configuration.
users:
   - default
disable_root: true
system_info:
   distro: debian
   default_user:
     name: debian
     lock_passwd: True
     groups: [adm, audio, cdrom, dialout, dip, floppy, netdev, plugdev, sudo, video]
     sudo: ["ALL=(ALL) NOPASSWD:ALL"]
     shell: /bin/bash
   paths:
      cloud_dir: /var/lib/cloud/
"""


def gce_context(ssh_keys: str = SSH_KEYS, project: str = f"debian:{PROJECT_KEY}\nalice:{ALICE_KEY}\n") -> FoundContext:
    """What a first boot finds on a fake GCE metadata server: these instance and project ssh-keys."""
    cloud = Cloud("gce", gce_ssh_keys=ssh_keys, gce_more={"project/attributes/ssh-keys": project})
    with metadata_server(cloud) as address:
        found = find_user_data(SourceProbe(requested="GCE", addresses=MetadataAddresses(address, closed_port())))
    assert found is not None and found.source == "GCE"
    return found


def seeded_keys(machine: Path, found: FoundContext, os_files: dict[str, str | bytes]) -> tuple[list[str], BootState]:
    """The public-keys of the seed written for an OS with these files under /etc/cloud/, and the boot."""
    state = BootState(System(str(machine)), BootLog(io.StringIO()))
    state.found_context, state.user_data, state.context_source = found, found.user_data, found.source_name
    for name, content in os_files.items():
        path = state.new_root / "etc" / "cloud" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    seed_cloud_init(state)
    return json.loads((state.new_root / NOCLOUD_SEED / "meta-data").read_text()).get("public-keys", []), state


def test_gce_keys_reach_the_os_for_cloudinit_and_its_default_user(tmp_path: Path) -> None:
    """cloud-init's GCE datasource gives the default user the keys named cloudinit and those named for
    the default user (debian), the instance's before the project's; the seed that replaces it does too."""
    keys, state = seeded_keys(tmp_path, gce_context(), {"cloud.cfg": DEBIAN_CLOUD_CFG})
    assert keys == [CLOUDINIT_KEY, DEBIAN_KEY, PROJECT_KEY]
    assert not state.warnings
    assert "GCE ssh-keys: 3 for users other than 'cloudinit' and 'debian'" in state.log.text()


def test_cloud_cfg_d_names_the_default_user_over_cloud_cfg(tmp_path: Path) -> None:
    """cloud.cfg.d/*.cfg in name order, each over the files before it, as cloud-init merges them."""
    files = {"cloud.cfg": DEBIAN_CLOUD_CFG,
             "cloud.cfg.d/10_site.cfg": "system_info:\n  default_user:\n    name: admin\n",
             "cloud.cfg.d/90_ops.cfg": "system_info: {default_user: {name: ops}}\n",
             "cloud.cfg.d/95_editor.cfg~": "system_info: {default_user: {name: alice}}\n",  # not a .cfg
             "cloud.cfg.d/README": "system_info: {default_user: {name: alice}}\n"}
    keys, state = seeded_keys(tmp_path, gce_context(), files)
    assert keys == [CLOUDINIT_KEY, OPS_KEY]
    assert not state.warnings


@pytest.mark.parametrize("os_files, why", [
    ({}, "the OS has no /etc/cloud/cloud.cfg"),
    ({"cloud.cfg": "users: [default\nsystem_info: {default_user: {name: debian}}\n"},
     "/etc/cloud/cloud.cfg is not YAML (line 2)"),
    ({"cloud.cfg": "- debian\n"}, "/etc/cloud/cloud.cfg is not a YAML mapping"),
    ({"cloud.cfg": b"\xff\xfe\x00garbage"}, "/etc/cloud/cloud.cfg is not UTF-8 text"),
    ({"cloud.cfg": "[" * 100000}, "/etc/cloud/cloud.cfg is not YAML"),
    ({"cloud.cfg": "system_info:\n  distro: debian\n"}, "names no default user"),
    ({"cloud.cfg": "system_info:\n  default_user: debian\n"}, "names no default user"),
], ids=["missing", "yaml error", "a list", "not utf-8", "too deep", "no default user", "default user not a mapping"])
def test_without_a_default_user_only_cloudinit_keys_are_seeded_and_one_warning_says_so(
        tmp_path: Path, os_files: dict, why: str) -> None:
    keys, state = seeded_keys(tmp_path, gce_context(), os_files)
    assert keys == [CLOUDINIT_KEY]
    assert len(state.warnings) == 1, state.warnings
    assert state.warnings[0].startswith("GCE ssh-keys: 5 for users other than 'cloudinit' left out")
    assert why in state.warnings[0]


def test_the_left_out_keys_warn_at_the_instance_s_first_boot_only(tmp_path: Path) -> None:
    """cloud-init gives an instance its keys once, at its first boot: later boots, whose seed has the same
    instance-id, only log what was left out; another instance-id is a new instance, and a warning again."""
    found = gce_context()
    _, first = seeded_keys(tmp_path, found, {})
    assert len(first.warnings) == 1 and first.warnings[0].startswith("GCE ssh-keys: 5 for users other")
    keys, later = seeded_keys(tmp_path, found, {})
    assert keys == [CLOUDINIT_KEY] and not later.warnings
    assert "GCE ssh-keys: 5 for users other than 'cloudinit' left out" in later.log.text()
    assert "(a warning at this instance's first boot)" in later.log.text()
    _, another = seeded_keys(tmp_path, found._replace(meta=found.meta._replace(instance_id="another")), {})
    assert len(another.warnings) == 1


@pytest.mark.parametrize("plant", PLANTS)
def test_a_cloud_cfg_the_os_replaced_by_a_fifo_a_huge_file_or_a_device_is_a_warning(tmp_path: Path, no_hang: None,
                                                                                   plant) -> None:
    """The OS's root holds its writable layer on the scratch disk: its cloud.cfg is read without blocking on a
    FIFO, filling the loader's memory with a huge file or following a link to a device that never ends."""
    found = gce_context()
    state = BootState(System(str(tmp_path)), BootLog(io.StringIO()))
    state.found_context, state.user_data, state.context_source = found, found.user_data, found.source_name
    placed = state.new_root / "etc" / "cloud" / "cloud.cfg"
    placed.parent.mkdir(parents=True)
    plant(placed)
    seed_cloud_init(state)
    assert json.loads((state.new_root / NOCLOUD_SEED / "meta-data").read_text())["public-keys"] == [CLOUDINIT_KEY]
    (warning,) = state.warnings
    assert "left out, as the OS's default user is unknown (/etc/cloud/cloud.cfg " in warning


def os_with_links(machine: Path, links: dict[str, str], files: dict[str, str]) -> BootState:
    """A boot whose OS root holds these files and symbolic links (paths from the root, targets as given)."""
    state = BootState(System(str(machine)), BootLog(io.StringIO()))
    for name, content in files.items():
        (state.new_root / name).parent.mkdir(parents=True, exist_ok=True)
        (state.new_root / name).write_text(content)
    for name, target in links.items():
        (state.new_root / name).parent.mkdir(parents=True, exist_ok=True)
        (state.new_root / name).symlink_to(target)
    return state


def keys_seeded(state: BootState) -> list[str]:
    found = gce_context()
    state.found_context, state.user_data, state.context_source = found, found.user_data, found.source_name
    seed_cloud_init(state)
    return json.loads((state.new_root / NOCLOUD_SEED / "meta-data").read_text())["public-keys"]


@pytest.mark.parametrize("target", ["../../usr/share/cloud/cloud.cfg", "/usr/share/cloud/cloud.cfg",
                                    "/usr/share/cloud/../cloud/./cloud.cfg"],
                         ids=["relative", "absolute, from the OS's root", "with dots"])
def test_a_linked_cloud_cfg_is_followed_in_the_os_root_as_cloud_init_follows_it(tmp_path: Path, target: str) -> None:
    state = os_with_links(tmp_path, {"etc/cloud/cloud.cfg": target}, {"usr/share/cloud/cloud.cfg": DEBIAN_CLOUD_CFG})
    assert keys_seeded(state) == [CLOUDINIT_KEY, DEBIAN_KEY, PROJECT_KEY]
    assert not state.warnings


def test_linked_cloud_cfg_d_and_its_files_are_followed(tmp_path: Path) -> None:
    """A linked cloud.cfg.d and linked .cfg files in it are read; a dangling one is left out, as isfile does."""
    state = os_with_links(tmp_path, {"etc/cloud/cloud.cfg.d": "/usr/share/cloud/conf.d",
                                     "usr/share/cloud/conf.d/90_ops.cfg": "../ops.yaml",
                                     "usr/share/cloud/conf.d/95_gone.cfg": "nowhere.yaml"},
                          {"etc/cloud/cloud.cfg": DEBIAN_CLOUD_CFG,
                           "usr/share/cloud/ops.yaml": "system_info: {default_user: {name: ops}}\n"})
    assert keys_seeded(state) == [CLOUDINIT_KEY, OPS_KEY]
    assert not state.warnings


@pytest.mark.parametrize("links, why", [
    ({"etc/cloud/cloud.cfg": "../../../outside/cloud.cfg"}, "/etc/cloud/cloud.cfg is a symbolic link that leads out"),
    ({"etc/cloud": "../../outside"}, "/etc/cloud/cloud.cfg is a symbolic link that leads out"),
    ({"etc/cloud/cloud.cfg": "cloud.cfg.1", "etc/cloud/cloud.cfg.1": "cloud.cfg"}, "is a symbolic link that loops"),
    ({"etc/cloud/cloud.cfg": "/usr/share/cloud/cloud.cfg"}, "leads through a symbolic link to /usr/share/cloud/cloud"),
    ({"etc/cloud/cloud.cfg": "/"}, "/etc/cloud/cloud.cfg, a link: /. is not a regular file"),
    ({"etc/cloud/cloud.cfg": "../cloud"}, "/etc/cloud/cloud.cfg, a link: /etc/cloud is not a regular file"),
], ids=["a file link", "a directory link", "a loop", "dangling", "the root", "a directory"])
def test_a_cloud_cfg_link_leading_out_of_the_os_root_is_refused(tmp_path: Path, links: dict, why: str) -> None:
    """Out of the OS's root is the loader's tree (or the host's), never the OS's configuration: a link that
    climbs out with '..' is not followed, and the warning on the keys says why there is no default user, as
    for a link that loops, dangles or leads to a directory."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "cloud.cfg").write_text(DEBIAN_CLOUD_CFG)
    state = os_with_links(tmp_path / "machine", links, {})
    assert keys_seeded(state) == [CLOUDINIT_KEY]
    (warning,) = state.warnings
    assert "the OS's default user is unknown" in warning and why in warning, warning


def test_a_garbage_cloud_cfg_d_file_is_left_out_as_cloud_init_leaves_it(tmp_path: Path) -> None:
    files = {"cloud.cfg": DEBIAN_CLOUD_CFG, "cloud.cfg.d/50_broken.cfg": "system_info: [unclosed\n",
             "cloud.cfg.d/60_list.cfg": "- system_info\n"}
    keys, state = seeded_keys(tmp_path, gce_context(), files)
    assert keys == [CLOUDINIT_KEY, DEBIAN_KEY, PROJECT_KEY]
    assert not state.warnings


def test_no_warning_where_no_key_was_left_out(tmp_path: Path) -> None:
    keys, state = seeded_keys(tmp_path, gce_context(f"cloudinit:{CLOUDINIT_KEY}\n", project=""), {})
    assert keys == [CLOUDINIT_KEY]
    assert not state.warnings


def google_ssh(name: str, expiry: str) -> str:
    """A key in GCE's own format, as gcloud and the console add them for a while."""
    return (f"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI{name} google-ssh "
            f'{{"userName":"ops@site.org","expireOn":"{expiry}"}}')


def test_expired_google_ssh_keys_are_left_out_as_cloud_init_leaves_them(tmp_path: Path) -> None:
    expired, valid = google_ssh("Expired", "2001-01-01T00:00:00+0000"), google_ssh("Valid", "2999-12-31T23:59:59+0000")
    short = google_ssh("Short", "2001-1-2T3:04:05+0000")  # strptime reads 1-digit months, days and hours
    unreadable = google_ssh("Unreadable", "2001-01-01 00:00:00")  # not the format: never expires
    other = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOther other-ssh {"expireOn":"2001-01-01T00:00:00+0000"}'
    lines = [f"cloudinit:{key}" for key in (expired, valid, short, unreadable, other)]
    lines.append(f"debian:{google_ssh('Old', '2020-02-29T12:00:00+0000')}")
    keys, state = seeded_keys(tmp_path, gce_context("\n".join(lines), project=""), {"cloud.cfg": DEBIAN_CLOUD_CFG})
    assert keys == [valid, unreadable, other]
    assert not state.warnings

    # An expired key would not have been the default user's either: nothing worth a warning was left out.
    keys, state = seeded_keys(tmp_path / "other", gce_context(f"cloudinit:{valid}\nalice:{expired}\n", project=""), {})
    assert keys == [valid] and not state.warnings


DEFAULT_USER = "system_info:\n  default_user:\n    name: debian\n    shell: /bin/bash\n"
KEYS_OF = {"debian": [CLOUDINIT_KEY, DEBIAN_KEY, PROJECT_KEY], "ops": [CLOUDINIT_KEY, OPS_KEY], None: [CLOUDINIT_KEY]}


@pytest.mark.parametrize("cloud_cfg, user", [
    ("users: [default]\n" + DEFAULT_USER, "debian"),
    (DEFAULT_USER, None),
    ("users: [alice]\n" + DEFAULT_USER, None),
    ("users: default\n" + DEFAULT_USER, "debian"),
    ("users: 'alice,default'\n" + DEFAULT_USER, "debian"),
    ("users: 'alice, default'\n" + DEFAULT_USER, None),
    ("users:\n  - {groups: [adm]}\n" + DEFAULT_USER, "debian"),
    ("users:\n  - name: default\n  - name: alice\n" + DEFAULT_USER, "debian"),
    ("users:\n  - [alice, default]\n" + DEFAULT_USER, "debian"),
    ("users: {default: true}\n" + DEFAULT_USER, "debian"),
    ("users: {default: 'no', alice: true}\n" + DEFAULT_USER, None),
    ("users: [default]\nsystem_info: {distro: debian}\n", None),
    ("user: ops\n" + DEFAULT_USER, "ops"),
    ("user: {name: ops}\nusers: [alice]\n" + DEFAULT_USER, "ops"),
    ("user: {gecos: Ops}\n" + DEFAULT_USER, "debian"),
    ("users: [default]\nuser: [ops]\n" + DEFAULT_USER, "debian"),
], ids=["listed", "not listed", "others listed", "a string", "comma-separated", "a space is part of the name",
        "settings without a name", "settings named default", "a nested list", "a mapping", "a mapping, false",
        "no system_info user", "legacy user", "legacy user over users", "legacy user settings",
        "legacy user neither name nor settings"])
def test_the_default_user_is_the_one_cloud_init_makes_of_users_and_user(tmp_path: Path, cloud_cfg: str,
                                                                         user: str | None) -> None:
    """cloud-init has a default user only where ``users`` lists ``default``, in any form it reads, or
    the legacy ``user:`` names one; system_info's ``default_user`` alone makes none."""
    keys, state = seeded_keys(tmp_path, gce_context(), {"cloud.cfg": cloud_cfg})
    assert keys == KEYS_OF[user]
    assert ["names no default user" in warning for warning in state.warnings] == ([] if user else [True])
