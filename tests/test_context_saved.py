"""The context a first boot found, saved on the scratch disk and brought back on later boots
(boot/contextualize.py settle_context), as far as the OS's cloud-init sees it: the NoCloud seed a
second boot writes must name the same instance, or cloud-init makes new SSH host keys and runs every
per-instance module again."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
from pathlib import Path

import pytest

from test_cache import fill
from test_cache_trust import no_hang  # noqa: F401 (a fixture)
from ucernvm.boot.contextualize import BEFORE_PIN, META_DATA, apply_user_data, online_context, settle_context
from ucernvm.boot.log import BootLog
from ucernvm.boot.seed import NOCLOUD_SEED, extra_user_data, seed_cloud_init
from ucernvm.boot.state import BootState
from ucernvm.boot.system import System
from ucernvm.context.found import CONFIG_DRIVE, GCE, FoundContext, MetaData
from ucernvm.server.online import Context, OnlineServer, OnlineService

USER_DATA = b"#cloud-config\nruncmd: [true]\n"
META = MetaData("i-0abc", "worker-1", ("ssh-ed25519 AAAAC3Nza first", "ssh-ed25519 AAAAC3Nzb second"))


def boot(machine: Path, found: FoundContext | None, fresh: bool) -> tuple[BootState, dict]:
    """One boot's context settling and seeding on the machine's directory; the seed's meta-data."""
    state = BootState(System(str(machine)), BootLog(io.StringIO()))
    state.scratch_fresh = fresh
    if found is not None:
        state.found_context = found
        state.user_data, state.context_source = found.user_data, found.source_name
    settle_context(state)
    seed_cloud_init(state)
    seed = state.new_root / NOCLOUD_SEED
    return state, json.loads((seed / "meta-data").read_text())


def test_a_later_boot_seeds_the_first_boots_instance(tmp_path: Path) -> None:
    first, first_meta = boot(tmp_path, FoundContext(CONFIG_DRIVE, USER_DATA, META), fresh=True)
    assert first_meta == {"instance-id": "i-0abc", "local-hostname": "worker-1", "public-keys": list(META.public_keys)}

    second, second_meta = boot(tmp_path, None, fresh=False)
    assert second_meta == first_meta
    assert second.user_data == USER_DATA and second.context_source == CONFIG_DRIVE
    assert (second.new_root / NOCLOUD_SEED / "user-data").read_bytes() == USER_DATA
    assert not second.warnings


def test_gce_keys_are_saved_with_their_users_and_picked_again_on_later_boots(tmp_path: Path) -> None:
    """The seed is written on every boot, once the OS is mounted, for its default user: the first boot
    saves GCE's keys as they came, user names and all."""
    first_key, debian_key = "ssh-ed25519 AAAAC3Nza first", "ssh-ed25519 AAAAC3Nzb debian"
    lines = (f"cloudinit:{first_key}", f"debian:{debian_key}", "alice:ssh-ed25519 AAAAC3Nzc alice")
    os_config = tmp_path / "root" / "etc" / "cloud" / "cloud.cfg"
    os_config.parent.mkdir(parents=True)
    os_config.write_text("users: [default]\nsystem_info: {default_user: {name: debian}}\n")
    _, first_meta = boot(tmp_path, FoundContext(GCE, USER_DATA, MetaData("1234", "vm", user_keys=lines)), fresh=True)
    second, second_meta = boot(tmp_path, None, fresh=False)
    assert first_meta == second_meta == {"instance-id": "1234", "local-hostname": "vm",
                                         "public-keys": [first_key, debian_key]}
    assert not second.warnings


def test_a_source_without_meta_data_keeps_the_user_data_id(tmp_path: Path) -> None:
    _, first_meta = boot(tmp_path, FoundContext(CONFIG_DRIVE, USER_DATA), fresh=True)
    assert not (tmp_path / "root.rw/context" / META_DATA).exists()
    _, second_meta = boot(tmp_path, None, fresh=False)
    assert first_meta == second_meta and first_meta["instance-id"].startswith("ucernvm-")


@pytest.mark.parametrize("damage", [b"\x00\xff not json", b"[1, 2]", b'{"instance-id": 7, "public-keys": "x"}',
                                    b"[" * 100000])
def test_damaged_saved_meta_data_means_a_new_instance_not_a_failed_boot(tmp_path: Path, damage: bytes) -> None:
    boot(tmp_path, FoundContext(CONFIG_DRIVE, USER_DATA, META), fresh=True)
    (tmp_path / "root.rw/context" / META_DATA).write_bytes(damage)
    second, second_meta = boot(tmp_path, None, fresh=False)
    assert second_meta == {"instance-id": second_meta["instance-id"]}
    assert second_meta["instance-id"].startswith("ucernvm-")
    assert second.user_data == USER_DATA
    if damage.startswith(b"\x00"):
        assert any("unreadable" in warning for warning in second.warnings)


def test_a_later_boot_of_a_machine_without_context_writes_nothing(tmp_path: Path) -> None:
    def settle(fresh: bool) -> BootState:
        state = BootState(System(str(tmp_path)), BootLog(io.StringIO()))
        state.scratch_fresh = fresh
        settle_context(state)
        return state

    settle(fresh=True)
    source = tmp_path / "root.rw/context/source"
    assert source.read_text() == "(none)\n"
    second = settle(fresh=False)
    assert second.system.actions == [] and not second.warnings
    assert source.read_text() == "(none)\n"



def test_a_damaged_saved_source_name_is_a_warning_not_a_failed_boot(tmp_path: Path) -> None:
    boot(tmp_path, FoundContext(CONFIG_DRIVE, USER_DATA, META), fresh=True)
    (tmp_path / "root.rw/context/source").write_bytes(b"\xff\xfe\x00 not text\n")
    second, second_meta = boot(tmp_path, None, fresh=False)
    assert second.user_data == USER_DATA and second_meta["instance-id"] == "i-0abc"  # still the first boot's
    assert second.context_source == "(saved)"
    assert len(second.warnings) == 1 and "saved source name" in second.warnings[0]


def test_unreadable_saved_user_data_is_a_warning_not_a_failed_boot(tmp_path: Path) -> None:
    boot(tmp_path, FoundContext(CONFIG_DRIVE, USER_DATA, META), fresh=True)
    saved = tmp_path / "root.rw/context/user-data"
    saved.unlink()
    saved.mkdir()  # a read error
    state = BootState(System(str(tmp_path)), BootLog(io.StringIO()))
    settle_context(state)
    assert state.user_data is None
    assert state.warnings == ["context/user-data is not a regular file on the scratch disk: this boot has no context"]


EXTRA = b"[ucernvm-begin]\ncvmfs_tag=cernvm-system-4.7.1\n[ucernvm-end]\n"


@pytest.mark.parametrize("name", ["var/lib/cloud", "cernvm"])
def test_a_link_in_the_os_root_that_leads_out_of_it_is_not_written_through(tmp_path: Path, name: str) -> None:
    """The OS's root is its writable layer on the scratch disk: a link there resolves in the loader's tree,
    an absolute one above all; the seed and the extra user-data are not written through it, with a warning."""
    boot(tmp_path, FoundContext(CONFIG_DRIVE, USER_DATA, META, extra_user_data=EXTRA), fresh=True)
    outside = tmp_path / "etc" / "outside"
    outside.mkdir(parents=True)
    state = BootState(System(str(tmp_path)), BootLog(io.StringIO()))
    placed = state.new_root / name
    subprocess.run(["rm", "-rf", str(placed)], check=True)
    placed.symlink_to(outside)
    settle_context(state)
    seed_cloud_init(state)
    extra_user_data(state)
    assert not list(outside.iterdir())
    (warning,) = state.warnings
    assert " not written: a symbolic link in the OS's root on the way to /" in warning and warning.endswith(
        " leads out of it")


@pytest.mark.parametrize("first", [FoundContext(CONFIG_DRIVE, USER_DATA + b"[ucernvm-begin]\ncvmfs_tag=other\n"
                                                b"[ucernvm-end]\n", META, extra_user_data=EXTRA),
                                   FoundContext(None, extra_user_data=EXTRA)], ids=["with-user-data", "extras-only"])
def test_the_extra_user_data_settings_hold_on_later_boots(tmp_path: Path, first: FoundContext) -> None:
    """Extra user-data baked into an image overrides the user-data's settings on every boot, as µCernVM
    sourced its saved extra-ucontext on every boot, not on the first one only."""
    state = BootState(System(str(tmp_path)), BootLog(io.StringIO()))
    state.scratch_fresh, state.found_context = True, first
    state.user_data = first.user_data if first.source else None
    settle_context(state)
    second = BootState(System(str(tmp_path)), BootLog(io.StringIO()))
    settle_context(second)
    assert second.config.tag == "cernvm-system-4.7.1" and not second.warnings


def test_the_ucontext_file_gives_the_os_the_values_as_written(tmp_path: Path) -> None:
    """The OS's S05cvmfs-config.sh appends the ``_UCONTEXT_CVMFS_HTTP_PROXY=`` line, prefix cut, to
    /etc/cvmfs/site.conf, which is read by a shell: ``;`` and ``|`` in a proxy list (CernVM Online writes
    it in double quotes, which the boot loader reads through) must not split it, nor ``$`` run anything."""
    proxy = "http://a.example:3128|http://b.example:3128;DIRECT"
    pac = 'http://wpad.example/wpad.dat?a=1&b="$(touch pwned)"`id`\\'
    user_data = f'[ucernvm-begin]\ncvmfs_http_proxy="{proxy}"\ncvmfs_pac_urls={pac}\n[ucernvm-end]\n'.encode()
    state = BootState(System(str(tmp_path)), BootLog(io.StringIO()))
    state.scratch_fresh, state.user_data = True, user_data
    settle_context(state)
    ucontext = (tmp_path / "root.rw/context/ucontext").read_text()
    site_conf = tmp_path / "site.conf"
    site_conf.write_text("".join(line.removeprefix("_UCONTEXT_") + "\n" for line in ucontext.splitlines()
                                 if line.startswith(("_UCONTEXT_CVMFS_HTTP_PROXY=", "_UCONTEXT_CVMFS_PAC_URLS="))))
    shell = subprocess.run(["sh", "-c", '. "$1"; printf "%s\\n%s\\n" "$CVMFS_HTTP_PROXY" "$CVMFS_PAC_URLS"', "sh",
                            str(site_conf)], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert shell.stdout.splitlines() == [proxy, pac] and shell.stderr == ""
    assert not (tmp_path / "pwned").exists()


def test_the_ucontext_file_writes_yes_on_true_as_1_and_no_off_false_as_0(tmp_path: Path) -> None:
    user_data = (b"[ucernvm-begin]\nresize_rootfs=off\ncvm_cluster_master=Yes\nuseglideinwms=TRUE\n"
                 b"cvmfs_tag=on-call\n[ucernvm-end]\n")
    state = BootState(System(str(tmp_path)), BootLog(io.StringIO()))
    state.scratch_fresh, state.user_data = True, user_data
    settle_context(state)
    assert (tmp_path / "root.rw/context/ucontext").read_text().splitlines() == [
        '_UCONTEXT_RESIZE_ROOTFS="0"', '_UCONTEXT_CVM_CLUSTER_MASTER="1"', '_UCONTEXT_USEGLIDEINWMS="1"',
        '_UCONTEXT_CVMFS_TAG="on-call"']


def test_the_ucontext_file_carries_what_glideinwms_user_data_implies(tmp_path: Path) -> None:
    """µCernVM appended the proxy it found in glideinWMS user-data to ucontext, from where the OS's
    cvmfs configuration takes it: the OS's CernVM-FS uses the glidein's squid too, not auto;DIRECT."""
    ini = "[glidein_startup]\nargs=-v std -param_CERNVM_CMS_PROXY http.colon,//squid.dot,example.colon,3128\n"
    user_data = base64.b64encode(ini.encode()) + b"####-cluster 1234 -subcluster 0####\n"
    state = BootState(System(str(tmp_path)), BootLog(io.StringIO()))
    state.scratch_fresh = True
    apply_user_data(state, user_data, "EC2")
    assert state.config.proxy == "http://squid.example:3128"
    settle_context(state)
    ucontext = (tmp_path / "root.rw/context/ucontext").read_text()
    assert ucontext == '_UCONTEXT_CVMFS_HTTP_PROXY="http://squid.example:3128"\n'


def test_a_cernvm_online_context_keeps_the_settings_of_the_user_data_it_replaced(tmp_path: Path) -> None:
    """The proxy given next to the PIN took the first boot to the servers; later boots need it as much,
    under what the online context sets itself (here the tag)."""
    online = b"#cloud-config\nhostname: paired\n[ucernvm-begin]\ncvmfs_tag=v2\n[ucernvm-end]\n"
    service = OnlineService([Context("paired", online)])
    pin = service.new_pin("paired")
    given = f"[ucernvm-begin]\ncvm_online_pin={pin}\ncvmfs_http_proxy=http://squid.example:3128\n[ucernvm-end]\n".encode()
    first = BootState(System(str(tmp_path)), BootLog(io.StringIO()))
    first.scratch_fresh = True
    first.found_context = FoundContext(CONFIG_DRIVE, given)
    apply_user_data(first, given, CONFIG_DRIVE)
    with OnlineServer(service) as server:
        first.config = first.config._replace(service_url=server.url)
        online_context(first)
    assert first.user_data == online and first.context_source == "CernVM Online"
    assert (first.config.proxy, first.config.tag) == ("http://squid.example:3128", "v2")
    settle_context(first)
    ucontext = (tmp_path / "root.rw/context/ucontext").read_text().splitlines()
    assert '_UCONTEXT_CVMFS_HTTP_PROXY="http://squid.example:3128"' in ucontext and '_UCONTEXT_CVMFS_TAG="v2"' in ucontext

    later = BootState(System(str(tmp_path)), BootLog(io.StringIO()))
    settle_context(later)
    assert later.user_data == online and later.context_source == "CernVM Online"
    assert (later.config.proxy, later.config.tag) == ("http://squid.example:3128", "v2")
    assert not later.warnings


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _huge(path: Path) -> None:
    with path.open("wb") as sparse:
        sparse.truncate(1 << 40)


def _link_to_zero(path: Path) -> None:
    path.symlink_to("/dev/zero")


PLANTS = [_fifo, _huge, _link_to_zero]  # what the OS may leave in place of a file a later boot reads


@pytest.mark.parametrize("plant", PLANTS)
@pytest.mark.parametrize("name", ["user-data", "source", META_DATA, "extra-user-data", BEFORE_PIN])
def test_a_fifo_a_huge_file_or_a_link_in_place_of_a_saved_file_is_a_warning(tmp_path: Path, no_hang: None,
                                                                            name: str, plant) -> None:
    """The OS writes the scratch disk: a later boot reads what it finds in context/ without blocking on a
    FIFO, filling its memory with a huge file or following a link to a device that never ends."""
    boot(tmp_path, FoundContext(CONFIG_DRIVE, USER_DATA, META), fresh=True)
    placed = tmp_path / "root.rw/context" / name
    placed.unlink(missing_ok=True)
    plant(placed)
    state = BootState(System(str(tmp_path)), BootLog(io.StringIO()))
    settle_context(state)
    assert (state.user_data is None) == (name == "user-data")
    (warning,) = state.warnings
    assert warning.startswith(f"context/{name} is ") and " on the scratch disk: " in warning


def test_a_full_scratch_disk_keeps_the_context_of_this_boot_and_warns_for_the_later_ones(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill needs root")
    state = BootState(System(str(tmp_path)), BootLog(io.StringIO()))
    state.scratch.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,nr_inodes=8", "tmpfs", str(state.scratch)], check=True)
    try:
        fill(state.scratch)
        state.scratch_fresh = True
        apply_user_data(state, b"[ucernvm-begin]\ncvmfs_tag=v2\n[ucernvm-end]\n", "EC2")
        settle_context(state)  # no OSError out of the storage stage's last step
        assert state.config.tag == "v2"
        assert [warning.split(":")[0] for warning in state.warnings] == [
            "the context on the scratch disk (later boots go without it) not written"]
    finally:
        subprocess.run(["umount", "-l", str(state.scratch)], check=True)
