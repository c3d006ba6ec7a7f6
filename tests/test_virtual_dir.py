"""`publish --virtual-dir`: /.cvmfs/snapshots/<tag>, as cvmfs_server writes it with CVMFS_VIRTUAL_DIR=true."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from helpers import run_cli, snapshot_tree
from test_publish import FQRN, make_tree, open_repo, publish, read_back
from ucernvm.cvmfs.catalog import Flag
from ucernvm.cvmfs.hashing import ObjectType
from ucernvm.cvmfs.publisher import Publisher
from ucernvm.errors import ConfigError, VerificationError

TAGS = ("v1", "v2", "v3")


def change_tree(source: Path, tag: str) -> None:
    """What each tag changes: a file of the root catalog and one of a nested catalog, and a nested catalog
    of its own."""
    (source / "etc" / "hostname").write_text(f"host at {tag}\n")
    (source / "data" / "sub" / "file").write_text(f"nested catalog file at {tag}\n")
    (source / "opt" / tag).mkdir(parents=True)
    (source / "opt" / tag / ".cvmfscatalog").write_bytes(b"")
    (source / "opt" / tag / "only-here").write_bytes(tag.encode() * 1000)


def publish_tags(base: Path, keys_dir: Path) -> tuple[Path, dict[str, dict[str, tuple]]]:
    """The test tree published at v1, v2 and v3, the virtual directory asked for at v1 only (later revisions
    keep it): the repository (``base/stratum/FQRN``, as a stratum server serves it) and the source tree as
    it was at each tag."""
    source, repo = base / "src", base / "stratum" / FQRN
    make_tree(source)
    os.unlink(source / "etc" / "variant")  # a variant symlink reads back expanded through a mount
    trees = {}
    for tag in TAGS:
        change_tree(source, tag)
        trees[tag] = snapshot_tree(source)
        publish(source, repo, keys_dir, tag=tag, virtual_dir=True if tag == "v1" else None)
    return repo, trees


@pytest.fixture(scope="module")
def tagged(tmp_path_factory: pytest.TempPathFactory, keys_dir: Path) -> tuple[Path, dict[str, dict[str, tuple]]]:
    """Published once for the module; tests must not modify it."""
    return publish_tags(tmp_path_factory.mktemp("tagged"), keys_dir)


def test_the_virtual_directory_has_the_rows_cvmfs_writes(tagged, keys_dir: Path) -> None:
    """A hidden nested catalog /.cvmfs (.cvmfscatalog, snapshots/), snapshots/<tag> flagged as bind mountpoint
    with a bind_mountpoints row naming the tag's root catalog and its size; tags from the revision before."""
    repo, _ = tagged
    repository = open_repo(repo, keys_dir)
    mountpoint = repository.root_catalog.lookup("/.cvmfs")
    assert mountpoint is not None and mountpoint.flags == Flag.DIR | Flag.NESTED_MOUNTPOINT | Flag.HIDDEN
    assert (mountpoint.mode, mountpoint.size, mountpoint.uid, mountpoint.gid) == (stat.S_IFDIR | 0o555, 97, 0, 0)
    virtual = repository.catalog_for("/.cvmfs")
    assert virtual.root_prefix == "/.cvmfs"
    assert virtual.lookup("/.cvmfs").flags == Flag.DIR | Flag.NESTED_ROOT | Flag.HIDDEN
    marker = virtual.lookup("/.cvmfs/.cvmfscatalog")
    assert marker.is_regular and (marker.mode, marker.size) == (stat.S_IFREG | 0o444, 0)
    assert repository.read("/.cvmfs/.cvmfscatalog") == b""
    snapshots = virtual.listing("/.cvmfs/snapshots")
    assert sorted(entry.name for entry in snapshots) == ["v1", "v2"]  # v3 names this revision: from the next one on
    assert {entry.flags for entry in snapshots} == {Flag.DIR | Flag.BIND_MOUNTPOINT}
    v1_root, v1 = open_repo(repo, keys_dir, tag="v1").entry(""), next(entry for entry in snapshots if entry.name == "v1")
    assert (v1.mode, v1.mtime, v1.uid, v1.linkcount) == (v1_root.mode, v1_root.mtime, v1_root.uid, v1_root.linkcount)
    # Link counts: 2 and one per subdirectory, /.cvmfs counted in the root's.
    assert (mountpoint.linkcount, virtual.lookup("/.cvmfs/snapshots").linkcount) == (3, 4)
    assert repository.entry("").linkcount == 2 + sum(entry.is_directory for entry in repository.listdir("", hidden=True))
    bound = {reference.path: reference for reference in virtual.nested_catalogs()}
    assert all(reference.bind for reference in bound.values()) and sorted(bound) == [
        "/.cvmfs/snapshots/v1", "/.cvmfs/snapshots/v2"]
    for name in ("v1", "v2"):
        tag = repository.find_tag(name)
        assert (bound[f"/.cvmfs/snapshots/{name}"].content_hash, bound[f"/.cvmfs/snapshots/{name}"].size) == (
            tag.root_hash, tag.size)
    assert virtual.statistics()["self_nested"] == 0  # a snapshot is no part of this one
    assert repository.root_catalog.statistics()["self_nested"] == 5  # /data/sub, /opt/v1..v3 and /.cvmfs
    assert ".cvmfs" not in [entry.name for entry in repository.listdir("")]
    assert ".cvmfs" in [entry.name for entry in repository.listdir("", hidden=True)]


def test_the_virtual_directory_follows_the_tags_until_it_is_turned_off(tmp_path: Path, keys_dir: Path) -> None:
    """Remade at each publish: automatic tags too, and every tag from the revision after its own; kept by a
    publish that does not say, removed by --no-virtual-dir."""
    source, repo = tmp_path / "src", tmp_path / "repo"
    (source / "etc").mkdir(parents=True)
    (source / "etc" / "hostname").write_text("first\n")
    publish(source, repo, keys_dir)  # an automatic generic-* tag
    run_cli("publish", source, "--repo", repo, "--name", FQRN, "--keys", keys_dir, "--tag", "first",
            "--virtual-dir", check=True)
    for tag in ("second", "third"):
        publish(source, repo, keys_dir, tag=tag)
        repository = open_repo(repo, keys_dir)
        snapshots = {reference.path.rsplit("/", 1)[1]: reference.content_hash
                     for reference in repository.catalog_for("/.cvmfs").nested_catalogs()}
        earlier = {old.name: old.root_hash for old in repository.tags() if old.revision < repository.revision}
        del earlier["trunk-previous"]
        assert snapshots == earlier and len(earlier) == repository.revision - 1
    publish(source, repo, keys_dir, virtual_dir=False)
    assert open_repo(repo, keys_dir).lookup("/.cvmfs") is None
    publish(source, repo, keys_dir)
    assert open_repo(repo, keys_dir).lookup("/.cvmfs") is None
    verified = run_cli("repo", "verify", repo, "--name", FQRN, "--key", keys_dir / f"{FQRN}.pub", check=True).stdout
    assert b"catalogs:       1 verified\nwhitelist:" in verified, "as a repository that never had one"


def test_a_source_tree_with_its_own_cvmfs_directory_is_refused_with_the_virtual_directory(tmp_path: Path,
                                                                                          keys_dir: Path) -> None:
    source, repo = tmp_path / "src", tmp_path / "repo"
    (source / ".cvmfs").mkdir(parents=True)
    (source / ".cvmfs" / "mine").write_text("a user's file\n")
    refused = run_cli("publish", source, "--repo", repo, "--name", FQRN, "--keys", keys_dir, "--virtual-dir")
    assert refused.returncode == 2 and b"the source tree has a /.cvmfs directory" in refused.stderr
    assert b"--no-virtual-dir" in refused.stderr and not (repo / ".cvmfspublished").exists()
    publish(source, repo, keys_dir)  # without the virtual directory it is a directory like any other
    assert open_repo(repo, keys_dir).read("/.cvmfs/mine") == b"a user's file\n"
    with pytest.raises(ConfigError, match="the source tree has a /.cvmfs directory"):
        publish(source, repo, keys_dir, virtual_dir=True)


def test_every_file_of_a_snapshot_reads_as_it_was_at_its_tag(tagged, keys_dir: Path) -> None:
    """Below /.cvmfs/snapshots/<tag> the tag's catalogs key their rows by the path in the tag's tree, and
    name its nested catalogs so: read through them, every file (chunked, in nested catalogs) is the tag's."""
    repo, trees = tagged
    repository = open_repo(repo, keys_dir)
    for tag in ("v1", "v2"):
        assert read_back(repository, f"/.cvmfs/snapshots/{tag}") == trees[tag], tag
    assert read_back(repository) == trees["v3"], "the head, whose walk does not enter the hidden /.cvmfs"
    snapshot = repository.entry("/.cvmfs/snapshots/v1")
    assert snapshot.is_directory and snapshot.name == "v1"
    mountpoint, catalog = repository.hosting_catalog("/.cvmfs/snapshots/v1/data/sub/file")
    v1 = open_repo(repo, keys_dir, tag="v1")
    assert (mountpoint, catalog.content_hash) == ("/.cvmfs/snapshots/v1/data/sub", v1.catalog_for("/data/sub").content_hash)
    assert repository.lookup("/.cvmfs/snapshots/v1/opt/v2") is None and repository.lookup("/.cvmfs/snapshots/v3") is None
    url = str(repo)
    key = keys_dir / f"{FQRN}.pub"
    for tag in ("v1", "v2"):
        base = f"/.cvmfs/snapshots/{tag}"
        listed = run_cli("repo", "ls", "-R", url, base, "--key", key, check=True).stdout.splitlines()
        assert sorted(os.fsdecode(line)[len(base):] for line in listed) == sorted(trees[tag]), tag
        for path in ("/etc/hostname", "/data/sub/file", "/data/big.bin"):  # root catalog, nested, chunked
            read = run_cli("repo", "cat", url, base + path, "--key", key, check=True).stdout
            assert ("file", read) == trees[tag][path][::2], (tag, path)
    listed = run_cli("repo", "ls", url, "/.cvmfs/snapshots/v2/data/sub", "--key", key, check=True).stdout.decode()
    assert sorted(listed.split()) == sorted(path.rsplit("/", 1)[1] for path in trees["v2"]
                                            if path.startswith("/data/sub/") and path.count("/") == 3)
    assert run_cli("repo", "ls", url, "/", "--key", key, check=True).stdout.split().count(b".cvmfs") == 0


def test_verify_counts_the_snapshots_without_descending_into_them(tagged, keys_dir: Path) -> None:
    repo, _ = tagged
    verified = run_cli("repo", "verify", repo, "--name", FQRN, "--key", keys_dir / f"{FQRN}.pub", check=True).stdout
    # The root, /data/sub, /data/sub/deep, /opt/v1..v3 and /.cvmfs: the head's catalogs only.
    assert b"catalogs:       7 verified\nsnapshots:      2 in /.cvmfs/snapshots" in verified


def test_a_snapshot_whose_catalog_does_not_match_its_bind_mountpoint_is_refused(tagged, tmp_path: Path,
                                                                                 keys_dir: Path) -> None:
    """The object a bind_mountpoints row names replaced by another snapshot's root catalog: refused as any
    catalog whose bytes do not match its hash, never read as the other snapshot."""
    pristine, _ = tagged
    repo = tmp_path / "repo"
    shutil.copytree(pristine, repo)
    repository = open_repo(repo, keys_dir)
    v1, v2 = (repository.find_tag(tag).root_hash.object_path(ObjectType.CATALOG) for tag in ("v1", "v2"))
    (repo / v1).write_bytes((repo / v2).read_bytes())
    with pytest.raises(VerificationError, match="does not match its content hash"):
        open_repo(repo, keys_dir).read("/.cvmfs/snapshots/v1/etc/hostname")
    assert open_repo(repo, keys_dir).read("/.cvmfs/snapshots/v2/etc/hostname") == b"host at v2\n"


def test_a_bind_mountpoint_on_a_catalog_that_is_no_root_catalog_is_refused(tmp_path: Path, keys_dir: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A signed revision whose snapshot is bound to a nested catalog (a broken publisher's): that catalog's
    rows are keyed by paths below its own root prefix, so it is refused rather than read wrongly."""
    source, repo = tmp_path / "src", tmp_path / "repo"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / ".cvmfscatalog").write_bytes(b"")
    (source / "sub" / "file").write_text("nested\n")
    publish(source, repo, keys_dir, tag="v1", virtual_dir=True)
    nested = next(iter(open_repo(repo, keys_dir).root_catalog.nested_catalogs()))
    snapshots = Publisher._snapshots

    def bound_to_the_nested_catalog(self: Publisher, previous: object) -> object:
        for path, entry, _, _ in snapshots(self, previous):
            yield path, entry, nested.content_hash, nested.size

    monkeypatch.setattr(Publisher, "_snapshots", bound_to_the_nested_catalog)
    publish(source, repo, keys_dir, tag="v2")
    repository = open_repo(repo, keys_dir)
    assert [entry.name for entry in repository.listdir("/.cvmfs/snapshots")] == ["v1"]
    with pytest.raises(VerificationError, match="mounted at /.cvmfs/snapshots/v1 is for '/sub', not '/'"):
        repository.listdir("/.cvmfs/snapshots/v1")
