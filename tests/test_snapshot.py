"""The snapshot stage against a real stratum server: which snapshot a machine boots, given what its scratch
disk holds (the pin, aux/cvmfs_force_tag), and what it leaves there."""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from test_cache import fill
from test_cache_trust import no_hang  # noqa: F401 (a fixture)
from test_context_saved import PLANTS
from test_publish import FQRN, publish
from ucernvm.boot.log import BootLog
from ucernvm.boot.pipeline import BootFailure, Stage, run_stages
from ucernvm.boot.snapshot import (FORCE_FILE, NEWEST_FILE, PIN_FILE, cache_quota, master_key_files, snapshot_stage,
                                   trusted_keys)
from ucernvm.boot.servers import servers_stage
from ucernvm.boot.state import BootState
from ucernvm.boot.system import RealSystem
from ucernvm.client.cache import MIB
from ucernvm.config import BootConfig
from ucernvm.cvmfs.publisher import Publisher, PublishOptions
from ucernvm.cvmfs.signing import generate_repository_keys
from ucernvm.errors import ConfigError
from ucernvm.server import StratumServer


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, keys_dir: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """A repository with the tags v1 and v2 (the newest): its URL and the root hash of each tag."""
    base = tmp_path_factory.mktemp("snapshot")
    tree = base / "os"
    (tree / "sbin").mkdir(parents=True)
    (tree / "sbin" / "init").write_text("#!/bin/sh\n")
    hashes = {}
    for tag in ("v1", "v2"):
        (tree / "etc").mkdir(exist_ok=True)
        (tree / "etc" / "release").write_text(f"{tag}\n")
        hashes[tag] = publish(tree, base / "stratum" / FQRN, keys_dir, tag=tag).root_hash.hex
    with StratumServer(base / "stratum") as server:
        yield f"http://127.0.0.1:{server.port}/cvmfs/{FQRN}", hashes


def boot(tmp_path: Path, keys_dir: Path, url: str, log: io.StringIO | None = None, **settings: object) -> BootState:
    config = BootConfig(**{"repository": FQRN, "server_url": url, "proxy": "DIRECT", **settings})
    state = BootState(RealSystem(str(tmp_path / "root")), BootLog(log or io.StringIO()), config=config,
                      keys_dir=keys_dir)
    for name in ("aux", "cache", "persistent"):
        (state.scratch / name).mkdir(parents=True, exist_ok=True)
    run_stages(state, [Stage("servers", (servers_stage,)), Stage("snapshot", (snapshot_stage,))])
    _power_off(state)
    return state


def _power_off(state: BootState) -> None:
    """Close what the boot left open, as the machine's power-off does: a catalog removed from the cache frees
    its space only once its SQLite file is closed, and when the garbage collector closed it was chance."""
    if state.repository is not None:
        for catalog in state.repository.loaded_catalogs():
            catalog.close()


def pin(state: BootState) -> list[str]:
    return (state.scratch / PIN_FILE).read_text().splitlines()


@pytest.mark.parametrize(("size", "quota_mib"), [
    (5000 * MIB, 2000),           # larger than 4000 MiB: 2000 MiB, as CVMFS_QUOTA_LIMIT=2000
    (3900 * MIB, 1950),           # over 4000 MB but not 4000 MiB: half of it
    (4000 * MIB, 2000),
    (1001 * MIB - 4096, 500),     # df -m rounds the size up to 1001 MiB; half of it rounds down
])
def test_the_cache_quota_counts_mib_as_df_m_and_cvmfs_do(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, size: int,
                                                          quota_mib: int) -> None:
    monkeypatch.setattr(os, "statvfs", lambda path: SimpleNamespace(f_blocks=size // 4096, f_frsize=4096))
    assert cache_quota(tmp_path) == quota_mib * MIB


def test_the_first_boot_pins_and_later_boots_keep_the_pin(tmp_path: Path, keys_dir: Path, served) -> None:
    url, hashes = served
    first = boot(tmp_path, keys_dir, url, tag="v1")
    assert pin(first) == [hashes["v1"], "v1"]
    later = boot(tmp_path, keys_dir, url)  # the newest is v2: the pin wins
    assert later.facts["snapshot"]["root_hash"] == hashes["v1"] and later.facts["snapshot"]["pinned"]
    assert not later.warnings


@pytest.mark.parametrize("content", [b"", b"\n", b"not a hash\nv1\n", b"\xff\xfe\x00\x9c garbage\n", bytes(64)])
def test_a_damaged_pin_is_reported_and_replaced(tmp_path: Path, keys_dir: Path, served, content: bytes) -> None:
    url, hashes = served
    scratch = tmp_path / "root" / "root.rw"
    (scratch / "aux").mkdir(parents=True)
    (scratch / PIN_FILE).write_bytes(content)
    state = boot(tmp_path, keys_dir, url)
    assert state.facts["snapshot"]["root_hash"] == hashes["v2"] and not state.facts["snapshot"]["pinned"]
    assert any("aux/cvmfs_snapshot" in warning and "no pinned snapshot" in warning for warning in state.warnings)
    assert pin(state) == [hashes["v2"], "v2"]


@pytest.mark.parametrize("tag", ["v1\x1b[2J\x1b[31m", "v1 and more", "\u202ev1"])
def test_a_pin_whose_tag_is_no_tag_name_boots_its_snapshot_and_the_tag_is_not_shown(tmp_path: Path, keys_dir: Path,
                                                                                   served, tag: str) -> None:
    """The tag line is shown on the console and in the report: an escape sequence or a bidirectional control
    written there by the OS is a warning, shown escaped, and the pinned snapshot boots under its own tag."""
    url, hashes = served
    boot(tmp_path, keys_dir, url, tag="v1")
    (tmp_path / "root" / "root.rw" / PIN_FILE).write_text(f"{hashes['v1']}\n{tag}\n")
    log = io.StringIO()
    state = boot(tmp_path, keys_dir, url, log=log)
    assert state.facts["snapshot"]["root_hash"] == hashes["v1"] and state.facts["snapshot"]["pinned"]
    assert state.facts["snapshot"]["tag"] == "v1"
    (warning,) = state.warnings
    assert warning == (f"{PIN_FILE} on the scratch disk holds no tag name after its root hash ({tag!r}): ignored, the "
                       "pinned snapshot boots")
    assert not any(control in log.getvalue() for control in "\x1b\u202e")


def test_a_damaged_force_file_is_reported_and_the_pin_boots(tmp_path: Path, keys_dir: Path, served) -> None:
    url, hashes = served
    boot(tmp_path, keys_dir, url, tag="v1")
    scratch = tmp_path / "root" / "root.rw"
    (scratch / FORCE_FILE).write_bytes(b"\xff\xfe garbage\x00\n")
    state = boot(tmp_path, keys_dir, url)
    assert state.facts["snapshot"]["root_hash"] == hashes["v1"] and state.facts["snapshot"]["pinned"]
    assert any("aux/cvmfs_force_tag" in warning for warning in state.warnings)
    assert not (scratch / FORCE_FILE).exists()


def test_a_forced_tag_the_repository_lacks_is_reported_and_the_pin_boots(tmp_path: Path, keys_dir: Path,
                                                                           served) -> None:
    """A typo in the tag the OS asked to move to must not stop every boot: the pinned, verified snapshot
    boots, the warning says why, and the file stays for the next boot (a tag may be published later)."""
    url, hashes = served
    boot(tmp_path, keys_dir, url, tag="v1")
    scratch = tmp_path / "root" / "root.rw"
    (scratch / FORCE_FILE).write_text("v9\n")
    state = boot(tmp_path, keys_dir, url)
    assert state.facts["snapshot"]["root_hash"] == hashes["v1"] and state.facts["snapshot"]["pinned"]
    assert pin(state) == [hashes["v1"], "v1"]
    (warning,) = state.warnings
    assert "aux/cvmfs_force_tag asks for tag v9" in warning and "has no tag 'v9'" in warning
    assert (scratch / FORCE_FILE).read_text() == "v9\n"


def test_a_forced_tag_moves_the_machine_and_is_removed(tmp_path: Path, keys_dir: Path, served) -> None:
    url, hashes = served
    boot(tmp_path, keys_dir, url, tag="v1")
    scratch = tmp_path / "root" / "root.rw"
    (scratch / FORCE_FILE).write_text("v2\n")
    state = boot(tmp_path, keys_dir, url)
    assert state.facts["snapshot"]["root_hash"] == hashes["v2"] and pin(state) == [hashes["v2"], "v2"]
    assert not (scratch / FORCE_FILE).exists() and not state.warnings


def _force_file_not_removable(monkeypatch: pytest.MonkeyPatch) -> None:
    """A disk with I/O errors that reads aux/cvmfs_force_tag but refuses its removal."""
    real_unlink = os.unlink

    def failing(path: object, *args: object, **kwargs: object) -> None:
        if str(path).endswith(FORCE_FILE):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", failing)


def test_a_damaged_force_file_the_disk_cannot_remove_is_a_warning(tmp_path: Path, keys_dir: Path, served,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    url, hashes = served
    boot(tmp_path, keys_dir, url, tag="v1")
    scratch = tmp_path / "root" / "root.rw"
    (scratch / FORCE_FILE).write_bytes(b"two words\n")
    _force_file_not_removable(monkeypatch)
    state = boot(tmp_path, keys_dir, url)
    assert state.facts["snapshot"]["root_hash"] == hashes["v1"] and state.facts["snapshot"]["pinned"]
    assert state.warnings == [f"{FORCE_FILE} on the scratch disk holds no tag name ('two words'): not removed "
                              "(Input/output error), reported again next boot, the machine stays on its snapshot"]


def test_a_force_file_the_disk_cannot_remove_after_the_pin_is_a_warning(tmp_path: Path, keys_dir: Path, served,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The forced snapshot boots, pinned; the next boot moves to the same tag again, which is harmless."""
    url, hashes = served
    boot(tmp_path, keys_dir, url, tag="v1")
    scratch = tmp_path / "root" / "root.rw"
    (scratch / FORCE_FILE).write_text("v2\n")
    _force_file_not_removable(monkeypatch)
    state = boot(tmp_path, keys_dir, url)
    assert [record.status for record in state.stages] == ["ok", "ok"]
    assert state.facts["snapshot"]["root_hash"] == hashes["v2"] and pin(state) == [hashes["v2"], "v2"]
    assert state.warnings == [f"{FORCE_FILE} not removed from the scratch disk (Input/output error): the next boot "
                              "moves to tag v2 again, the snapshot the pin now names"]
    assert (scratch / FORCE_FILE).read_text() == "v2\n"


def test_a_force_file_the_disk_cannot_read_is_reported_and_left_alone(tmp_path: Path, keys_dir: Path, served) -> None:
    """A directory where the file should be (or a failing disk that cannot read it): one warning, the pinned
    snapshot boots, and nothing more is asked of that disk."""
    url, hashes = served
    boot(tmp_path, keys_dir, url, tag="v1")
    scratch = tmp_path / "root" / "root.rw"
    (scratch / FORCE_FILE).mkdir()
    state = boot(tmp_path, keys_dir, url)
    assert state.facts["snapshot"]["root_hash"] == hashes["v1"] and state.facts["snapshot"]["pinned"]
    (warning,) = state.warnings
    assert warning == "aux/cvmfs_force_tag is not a regular file on the scratch disk: the machine stays on its snapshot"
    assert (scratch / FORCE_FILE).is_dir()


@pytest.fixture
def small_scratch(tmp_path: Path) -> Iterator[Path]:
    """The scratch disk a 2 MiB file system of its own, to fill."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill needs root")
    scratch = tmp_path / "root" / "root.rw"
    scratch.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(scratch)], check=True)
    try:
        yield scratch
    finally:
        subprocess.run(["umount", "-l", str(scratch)], check=True)


def test_a_forced_move_on_a_full_disk_boots_the_forced_tag_without_a_pin(tmp_path: Path, keys_dir: Path, served,
                                                                           small_scratch: Path) -> None:
    """The forced snapshot boots (verified, the writable layer rebased onto it) and the warning says so; the
    old pin and the force file stay, so that the next boot with room moves again and pins it."""
    url, hashes = served
    boot(tmp_path, keys_dir, url, tag="v1")
    (small_scratch / FORCE_FILE).write_text("v2\n")
    shutil.rmtree(small_scratch / "cache")  # nothing the cache could evict to make room
    fill(small_scratch / "persistent")
    state = boot(tmp_path, keys_dir, url)
    assert [record.status for record in state.stages] == ["ok", "ok"]
    assert state.facts["snapshot"]["root_hash"] == hashes["v2"] and not state.facts["snapshot"]["pinned"]
    *cache, rebase, warning = state.warnings  # each of them what the full disk costs
    assert cache and all("the disk of the cache" in line and "is full" in line for line in cache)
    # Only the user's files in the layer: the rebase has nothing to do, but its log finds no room.
    assert rebase.startswith("aux/rebase-") and rebase.endswith(
        ".log (what the rebase of the writable layer did) not written on the scratch disk: No space left on device")
    assert "error" not in state.facts["rebase"]
    assert warning == (f"{PIN_FILE} not written on the scratch disk (No space left on device): this boot runs snapshot "
                       f"revision {state.facts['snapshot']['revision']} {hashes['v2']} (v2) without a pin; "
                       f"{FORCE_FILE} is kept, so the next boot moves to it again")
    assert pin(state) == [hashes["v1"], "v1"] and (small_scratch / FORCE_FILE).read_text() == "v2\n"

    (small_scratch / "persistent" / "user-files").unlink()
    later = boot(tmp_path, keys_dir, url)
    assert later.facts["snapshot"]["root_hash"] == hashes["v2"] and pin(later) == [hashes["v2"], "v2"]
    assert not (small_scratch / FORCE_FILE).exists() and not later.warnings


def test_a_master_key_planted_on_the_scratch_disk_is_not_trusted(tmp_path: Path, keys_dir: Path, served) -> None:
    """Whoever writes the scratch disk (the OS, anyone with its image) cannot make a later boot trust a repository
    signed with keys of their own: only the image's master keys are."""
    url, _ = served
    boot(tmp_path, keys_dir, url)
    forged_keys = tmp_path / "forged-keys"
    generate_repository_keys(FQRN, forged_keys)
    tree = tmp_path / "forged-os"
    (tree / "sbin").mkdir(parents=True)
    (tree / "sbin" / "init").write_text("#!/bin/sh\necho forged\n")
    publish(tree, tmp_path / "forged" / FQRN, forged_keys, tag="v3")
    planted = tmp_path / "root" / "root.rw" / "aux" / "keys" / FQRN
    planted.mkdir(parents=True)
    shutil.copy(forged_keys / f"{FQRN}.pub", planted)
    (tmp_path / "root" / "root.rw" / FORCE_FILE).write_text("v3\n")
    with StratumServer(tmp_path / "forged") as forged, pytest.raises(BootFailure) as refused:
        boot(tmp_path, keys_dir, f"http://127.0.0.1:{forged.port}/cvmfs/{FQRN}")
    assert refused.value.stage == "snapshot" and "signature" in refused.value.message


@pytest.mark.parametrize("plant", PLANTS)
@pytest.mark.parametrize("name", [PIN_FILE, FORCE_FILE, NEWEST_FILE])
def test_a_fifo_a_huge_file_or_a_link_in_place_of_a_small_file_is_reported_and_the_boot_goes_on(
        tmp_path: Path, keys_dir: Path, served, no_hang: None, name: str, plant) -> None:
    url, hashes = served
    boot(tmp_path, keys_dir, url, tag="v1")
    placed = tmp_path / "root" / "root.rw" / name
    placed.unlink(missing_ok=True)
    plant(placed)
    state = boot(tmp_path, keys_dir, url)
    assert state.facts["snapshot"]["root_hash"] in hashes.values()
    assert any(name in warning for warning in state.warnings)


def test_a_fifo_or_a_link_where_the_pin_is_written_first_neither_blocks_nor_is_written_through(
        tmp_path: Path, keys_dir: Path, served, no_hang: None) -> None:
    """A file is written under a temporary name first, which PID 1's process ID makes known in advance: what
    the OS left there is replaced, and no FIFO blocks the write, nor does a link take it elsewhere."""
    url, hashes = served
    outside = tmp_path / "loader-file"
    outside.write_text("the loader's\n")
    aux = tmp_path / "root" / "root.rw" / "aux"
    aux.mkdir(parents=True)
    os.mkfifo(aux / f"cvmfs_snapshot.tmp-{os.getpid()}")
    (aux / f"ucernvm_newest_boot.json.tmp-{os.getpid()}").symlink_to(outside)
    state = boot(tmp_path, keys_dir, url)
    assert pin(state) == [hashes["v2"], "v2"] and not state.warnings
    assert outside.read_text() == "the loader's\n"
    assert sorted(path.name for path in aux.iterdir()) == ["cvmfs_snapshot", "ucernvm_newest_boot.json"]


def test_a_forced_move_back_is_pinned_and_the_boots_after_it_are_not_refused(tmp_path: Path, keys_dir: Path,
                                                                               served) -> None:
    url, hashes = served
    boot(tmp_path, keys_dir, url)  # the newest, v2
    scratch = tmp_path / "root" / "root.rw"
    (scratch / FORCE_FILE).write_text("v1\n")
    assert boot(tmp_path, keys_dir, url).facts["snapshot"]["root_hash"] == hashes["v1"]
    later = boot(tmp_path, keys_dir, url)
    assert later.facts["snapshot"]["root_hash"] == hashes["v1"] and later.facts["snapshot"]["pinned"]
    assert not later.warnings


def test_a_repository_name_that_is_a_path_leads_to_no_keys_on_the_scratch_disk(tmp_path: Path,
                                                                               keys_dir: Path) -> None:
    """The repository may come from a context that a later boot reads back from the scratch disk: as a path, it
    would have made a key directory of any directory, one on that disk too."""
    state = BootState(RealSystem(str(tmp_path / "root")), BootLog(io.StringIO()), config=BootConfig(),
                      keys_dir=keys_dir)
    planted = state.scratch / "aux" / "planted"
    planted.mkdir(parents=True)
    shutil.copy(keys_dir / f"{FQRN}.pub", planted)
    with pytest.raises(ConfigError, match="is not a repository name"):
        trusted_keys(state, os.path.relpath(planted, keys_dir))


@pytest.mark.parametrize("layout", [f"{FQRN}/{FQRN}.pub", "cern.ch/cern.ch.pub", f"{FQRN}.pub"])
def test_master_keys_are_found_where_cvmfs_keeps_them(tmp_path: Path, keys_dir: Path, layout: str) -> None:
    """By repository, by domain (a site's /etc/cvmfs/keys, as cvmfs lays it out), or at the top; another
    domain's keys are not the repository's."""
    base = tmp_path / "etc" / "cvmfs" / "keys"
    (base / layout).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(keys_dir / f"{FQRN}.pub", base / layout)
    (base / "egi.eu").mkdir()
    shutil.copy(keys_dir / "other.cern.ch.pub", base / "egi.eu" / "egi.eu.pub")
    state = BootState(RealSystem(str(tmp_path)), BootLog(io.StringIO()), config=BootConfig())
    assert [file.relative_to(base).as_posix() for file in master_key_files(state, FQRN)] == [layout]
    assert len(trusted_keys(state, FQRN)) == 1


@pytest.mark.parametrize("given, hint", [(False, "build the image with --keys holding"),
                                         (True, "give --keys a directory holding")])
def test_a_missing_master_key_is_asked_of_what_gave_the_keys(tmp_path: Path, given: bool, hint: str) -> None:
    """A boot reads the keys the image was built with; a dry run its own --keys, in their place."""
    state = BootState(RealSystem(str(tmp_path / "root")), BootLog(io.StringIO()), config=BootConfig(),
                      keys_dir=tmp_path if given else None)
    with pytest.raises(ConfigError) as missing:
        trusted_keys(state, FQRN)
    assert missing.value.hint == f"{hint} {FQRN}.pub"


def test_a_pin_of_another_repository_is_left_aside_and_the_snapshot_chosen_afresh(tmp_path: Path, keys_dir: Path,
                                                                                    served) -> None:
    """The repository setting changed since the disk was pinned: the pin's root catalog, still in the cache, would
    boot the other repository's OS under this one's name, and its revisions would be compared with this one's."""
    url, hashes = served
    boot(tmp_path, keys_dir, url)
    tree = tmp_path / "other-os"
    (tree / "sbin").mkdir(parents=True)
    (tree / "sbin" / "init").write_text("#!/bin/sh\necho other\n")
    other = Publisher(str(tmp_path / "other" / "other.cern.ch"), "other.cern.ch", str(keys_dir),
                      PublishOptions()).publish(str(tree))
    with StratumServer(tmp_path / "other") as server:
        state = boot(tmp_path, keys_dir, f"http://127.0.0.1:{server.port}/cvmfs/other.cern.ch",
                     repository="other.cern.ch")
    assert state.facts["snapshot"]["root_hash"] == other.root_hash.hex != hashes["v2"]
    assert any("booted repository 'test.cern.ch' before" in warning for warning in state.warnings)
    assert pin(state)[0] == other.root_hash.hex


def test_a_record_of_the_newest_revision_that_names_no_repository_gets_its_name(tmp_path: Path, keys_dir: Path,
                                                                                 served) -> None:
    url, hashes = served
    boot(tmp_path, keys_dir, url)
    record = tmp_path / "root" / "root.rw" / NEWEST_FILE
    written = json.loads(record.read_text())
    record.write_text(json.dumps({key: value for key, value in written.items() if key != "repository"}))
    boot(tmp_path, keys_dir, url)
    assert json.loads(record.read_text()) == written
