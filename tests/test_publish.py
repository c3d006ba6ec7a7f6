"""Publishing: round trips byte for byte, incremental republishing, atomicity, and bad input."""

from __future__ import annotations

import datetime
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import PROJECT, run_cli, snapshot_tree
from ucernvm.client.fetcher import HttpSource
from ucernvm.client.prefetch import PREFETCH_LIST, parse_prefetch_list
from ucernvm.client.repository import Repository
from ucernvm.client.sources import DirectorySource
from ucernvm.cvmfs.chunking import ChunkingParams
from ucernvm.cvmfs.compression import Compression
from ucernvm.cvmfs.hashing import ContentHash, ObjectType
from ucernvm.cvmfs.ingest import Ingester, IngestOptions
from ucernvm.cvmfs.publisher import Publisher, PublishOptions, resign
from ucernvm.cvmfs.signing import generate_repository_keys
from ucernvm.cvmfs.storage import RepositoryStorage
from ucernvm.cvmfs.trust import load_certificate, load_master_keys
from ucernvm.cvmfs.whitelist import SignedWhitelist
from ucernvm.errors import ConfigError, FormatError, StorageError
from ucernvm.server import StratumServer
from ucernvm.utc import utc_time

FQRN = "test.cern.ch"
BIG = 26 * 1024 * 1024 + 12345  # > 25 MB: chunked with the cvmfs default sizes


def make_tree(root: Path) -> None:
    """A tree with every kind of entry the format knows."""
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "hostname").write_text("cernvm\n")
    (root / "etc" / "empty").write_bytes(b"")
    (root / "etc" / "hard_a").write_bytes(b"shared inode\n")
    os.link(root / "etc" / "hard_a", root / "etc" / "hard_b")
    os.link(root / "etc" / "hard_a", root / "etc" / "hard_c")
    (root / "etc" / "motd").symlink_to("hostname")
    (root / "etc" / "dangling").symlink_to("/nowhere/at/all")
    (root / "etc" / "variant").symlink_to("$(CVMFS_ARCH)/lib")
    (root / "bin").mkdir()
    script = root / "bin" / "hello"
    script.write_text("#!/bin/sh\necho hello\n")
    script.chmod(0o755)
    (root / "data").mkdir()
    (root / "data" / "big.bin").write_bytes(os.urandom(BIG))
    (root / "data" / "ünïcödé name ✓").write_text("non-ASCII\n")
    (root / "data" / os.fsdecode(b"latin-1 \xe9t\xe9")).write_text("not UTF-8: any bytes are a name\n")
    (root / "data" / "sub").mkdir()
    (root / "data" / "sub" / ".cvmfscatalog").write_bytes(b"")
    (root / "data" / "sub" / "deep").mkdir()
    (root / "data" / "sub" / "deep" / ".cvmfscatalog").write_bytes(b"")
    (root / "data" / "sub" / "deep" / "leaf").write_bytes(b"leaf\n" * 1000)
    (root / "data" / "sub" / "file").write_bytes(b"in a nested catalog\n")
    os.mkfifo(root / "data" / "fifo")
    os.setxattr(root / "etc" / "hostname", "user.origin", b"test suite")
    if os.geteuid() == 0:
        os.mknod(root / "data" / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))


def publish(source: Path, repo: Path, keys: Path, **options) -> object:
    return Publisher(str(repo), FQRN, str(keys), PublishOptions(**options)).publish(str(source))


def open_repo(repo: Path, keys: Path, **kwargs) -> Repository:
    return Repository(DirectorySource(repo), FQRN, load_master_keys(keys / f"{FQRN}.pub"), **kwargs)


def read_back(repository: Repository, base: str = "") -> dict[str, tuple]:
    """The tree below ``base`` as snapshot_tree describes a source tree, by path relative to ``base``."""
    result: dict[str, tuple] = {}
    for path, entry in repository.walk(base):
        relative = path[len(base):]
        if entry.is_symlink:
            result[relative] = ("link", entry.mode, entry.symlink)
        elif entry.is_directory:
            result[relative] = ("dir", entry.mode)
        elif entry.is_regular:
            result[relative] = ("file", entry.mode, repository.read(path))
        else:
            result[relative] = ("special", entry.mode, entry.device_number)
    return result


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    make_tree(tmp_path / "src")
    return tmp_path / "src"


def test_round_trip_at_two_tags(tree: Path, tmp_path: Path, keys_dir: Path) -> None:
    repo = tmp_path / "repo"
    first = snapshot_tree(tree)
    result = run_cli("publish", tree, "--repo", repo, "--name", FQRN, "--keys", keys_dir, "--tag", "v1", check=True)
    assert b"revision 1" in result.stdout

    (tree / "etc" / "hostname").write_text("changed\n")
    (tree / "data" / "sub" / "deep" / "new").write_text("added\n")
    os.unlink(tree / "etc" / "empty")
    second = snapshot_tree(tree)
    run_cli("publish", tree, "--repo", repo, "--name", FQRN, "--keys", keys_dir, "--tag", "v2", check=True)

    assert read_back(open_repo(repo, keys_dir, tag="v1")) == first
    assert read_back(open_repo(repo, keys_dir, tag="v2")) == second
    assert read_back(open_repo(repo, keys_dir)) == second
    assert {"trunk", "trunk-previous", "v1", "v2"} <= {tag.name for tag in open_repo(repo, keys_dir).tags()}


def test_the_summary_counts_in_the_singular_and_the_plural(tree: Path, tmp_path: Path, keys_dir: Path) -> None:
    publish_cli = ["publish", tree, "--repo", tmp_path / "repo", "--name", FQRN, "--keys", keys_dir]
    first = run_cli(*publish_cli, check=True).stdout
    assert b" and 3 catalogs written, 0 catalogs reused\n" in first  # the root and two nested ones
    (tree / "etc" / "hostname").write_text("changed\n")
    again = run_cli(*publish_cli, check=True).stdout
    assert b" and 1 catalog written, 2 catalogs reused\n" in again, again


def test_verify_names_when_the_snapshot_it_checked_was_published(tree: Path, tmp_path: Path, keys_dir: Path,
                                                                  monkeypatch, capsys) -> None:
    """`repo verify --tag` prints that revision's publication time, not the newest revision's."""
    from ucernvm.cli import main

    repo, first, second = tmp_path / "repo", 1_700_000_000, 1_700_086_400
    monkeypatch.setattr(time, "time_ns", lambda: first * 1_000_000_000)
    publish(tree, repo, keys_dir, tag="v1")
    monkeypatch.setattr(time, "time_ns", lambda: second * 1_000_000_000)
    publish(tree, repo, keys_dir, tag="v2")
    monkeypatch.undo()
    for options, moment in ([], "2023-11-15 22:13:20 UTC"), (["--tag", "v1"], "2023-11-14 22:13:20 UTC"):
        assert main(["repo", "verify", str(repo), "--name", FQRN, "--key", str(keys_dir), *options]) == 0
        assert f"published:      {moment}\n" in capsys.readouterr().out


def test_published_repository_served_over_http(tree: Path, tmp_path: Path, keys_dir: Path) -> None:
    """Published, served by the embedded stratum server, read back through the verified HTTP client."""
    stratum = tmp_path / "stratum"
    publish(tree, stratum / FQRN, keys_dir, tag="served")
    with StratumServer(stratum) as server:
        url = f"{server.url}/cvmfs/{FQRN}"
        repository = Repository(HttpSource([url]), FQRN, load_master_keys(keys_dir))
        assert read_back(repository) == snapshot_tree(tree)
        listing = run_cli("repo", "ls", url, "/etc", "-l", "--key", keys_dir, check=True).stdout.decode()
        assert " /etc/motd -> hostname" in listing
        assert run_cli("repo", "cat", url, "/data/big.bin", "--key", keys_dir, check=True).stdout == (
            tree / "data" / "big.bin"
        ).read_bytes()


def test_entry_details(tree: Path, tmp_path: Path, keys_dir: Path) -> None:
    repo = tmp_path / "repo"
    publish(tree, repo, keys_dir)
    repository = open_repo(repo, keys_dir)
    hard = [repository.entry(f"/etc/hard_{x}") for x in "abc"]
    assert {entry.linkcount for entry in hard} == {3}
    assert len({entry.hardlink_group for entry in hard}) == 1 and hard[0].hardlink_group > 0
    assert repository.entry("/etc/variant").symlink == "$(CVMFS_ARCH)/lib"  # kept verbatim
    assert repository.entry("/etc/hostname").xattrs == {"user.origin": b"test suite"}
    assert repository.stores_xattrs()
    assert repository.entry("/bin/hello").mode & 0o777 == 0o755
    big = repository.entry("/data/big.bin")
    assert big.is_chunked and big.content_hash is None
    chunks = repository.chunks("/data/big.bin", big)
    assert len(chunks) >= 2 and all(4 << 20 <= c.size <= 16 << 20 for c in chunks[:-1])
    assert stat.S_ISFIFO(repository.entry("/data/fifo").mode)
    if os.geteuid() == 0:
        null = repository.entry("/data/null")
        assert stat.S_ISCHR(null.mode) and null.device_number == os.makedev(1, 3)
    assert repository.catalog_for("/data/sub/deep/leaf").root_prefix == "/data/sub/deep"
    root_stats = repository.root_catalog.statistics()
    assert root_stats["subtree_nested"] == 1 and root_stats["self_nested"] == 1
    assert root_stats["self_chunked"] == 1 and root_stats["self_symlink"] == 3


@pytest.mark.parametrize("change", ["gap", "overlap", "short", "long"])
def test_a_chunk_list_that_does_not_cover_its_file_is_refused(tree: Path, tmp_path: Path, keys_dir: Path,
                                                              monkeypatch: pytest.MonkeyPatch, change: str) -> None:
    """A signed catalog with chunks that leave a hole, overlap, or end before or after the file (a broken
    publisher's): reading it would return bytes the file does not have, so it is a format error."""
    repo = tmp_path / "repo"
    publish(tree, repo, keys_dir)
    repository = open_repo(repo, keys_dir)
    big = repository.entry("/data/big.bin")
    chunks = repository.chunks("/data/big.bin", big)
    first, second, *rest = chunks
    broken = {
        "gap": [first, second._replace(offset=second.offset + 1), *rest],
        "overlap": [first, second._replace(offset=second.offset - 1), *rest],
        "short": chunks[:-1],
        "long": [*chunks, chunks[-1]._replace(offset=big.size)],
    }[change]
    catalog = repository.catalog_for("/data/big.bin")
    monkeypatch.setattr(catalog, "chunks", lambda path, algorithm: broken)
    with pytest.raises(FormatError, match="/data/big.bin: the chunk list does not cover the file"):
        repository.chunks("/data/big.bin", big)


def test_whether_a_snapshot_stores_xattrs_counts_its_nested_catalogs(tree: Path, tmp_path: Path,
                                                                     keys_dir: Path) -> None:
    publish(tree, tmp_path / "without", keys_dir, include_xattrs=False)
    without = open_repo(tmp_path / "without", keys_dir)
    assert not without.stores_xattrs() and without.entry("/etc/hostname").xattrs == {}
    os.removexattr(tree / "etc" / "hostname", "user.origin")
    os.setxattr(tree / "data" / "sub" / "deep" / "leaf", "user.origin", b"nested")  # in a nested catalog
    publish(tree, tmp_path / "nested", keys_dir)
    nested = open_repo(tmp_path / "nested", keys_dir)
    assert nested.root_catalog.statistics()["self_xattr"] == 0 and nested.stores_xattrs()


def test_extended_attributes_longer_than_255_bytes_are_published_as_cvmfs_2_14_writes_them(
        tree: Path, tmp_path: Path, keys_dir: Path) -> None:
    """A value longer than 255 bytes (a long ACL, an IMA signature) is published in a version-2 blob, as
    cvmfs 2.14 writes it; an entry whose values all fit one byte keeps version 1, which older clients read."""
    os.setxattr(tree / "etc" / "hostname", "user.long", bytes(range(250)) * 4)
    os.setxattr(tree / "etc" / "hostname", "user.longest", b"y" * 255)
    publish(tree, tmp_path / "repo", keys_dir)
    repository = open_repo(tmp_path / "repo", keys_dir)
    long_entry = repository.entry("/etc/hostname")
    assert long_entry.xattrs == {"user.origin": b"test suite", "user.long": bytes(range(250)) * 4,
                                 "user.longest": b"y" * 255}
    assert long_entry.xattr is not None and long_entry.xattr[0] == 2
    os.removexattr(tree / "etc" / "hostname", "user.long")
    publish(tree, tmp_path / "repo", keys_dir)
    short_entry = open_repo(tmp_path / "repo", keys_dir).entry("/etc/hostname")
    assert short_entry.xattr is not None and short_entry.xattr[0] == 1
    assert short_entry.xattrs == {"user.origin": b"test suite", "user.longest": b"y" * 255}


@pytest.fixture
def xattr_source(tmp_path: Path) -> Iterator[Path]:
    """A source directory where large or many extended attributes fit: tmpfs holds what ext4 does not
    (64 KiB values, hundreds per file)."""
    shm = Path("/dev/shm")
    if not shm.is_dir():
        (tmp_path / "src").mkdir()
        yield tmp_path / "src"
        return
    source = Path(tempfile.mkdtemp(dir=shm))
    try:
        yield source
    finally:
        shutil.rmtree(source)


def test_an_extended_attribute_of_64_kib_is_left_out_with_a_warning_naming_the_file(
        xattr_source: Path, tmp_path: Path, keys_dir: Path) -> None:
    """cvmfs stores values up to 64 KiB - 1 (a u16 length); Linux allows 64 KiB itself (tmpfs, XFS)."""
    big = xattr_source / "big"
    big.write_text("a large attribute\n")
    try:
        os.setxattr(big, "user.full", b"f" * 65536)
    except OSError as error:
        pytest.skip(f"no file system here holds a 64 KiB extended attribute: {error.strerror}")
    os.setxattr(big, "user.fits", b"g" * 65535)
    repo = tmp_path / "repo"
    result = run_cli("publish", xattr_source, "--repo", repo, "--name", FQRN, "--keys", keys_dir, "--quiet",
                     check=True)
    assert result.stderr.decode().splitlines() == [
        f"ucernvm: warning: {big}: extended attribute user.full left out: its value of 65536 bytes is "
        "longer than the 65535 a catalog entry holds"]
    assert open_repo(repo, keys_dir).entry("/big").xattrs == {"user.fits": b"g" * 65535}


def test_modification_times_are_published_to_the_nanosecond(tree: Path, tmp_path: Path, keys_dir: Path) -> None:
    """A time just before a full second (which the float st_mtime rounds up to it) and one before 1970 (which
    int() truncates towards zero) are stored as the seconds and nanoseconds of the time itself."""
    os.utime(tree / "etc" / "hostname", ns=(0, 1_700_000_000_999_999_999))
    os.utime(tree / "bin" / "hello", ns=(0, -1_500_000_000))
    publish(tree, tmp_path / "repo", keys_dir)
    repository = open_repo(tmp_path / "repo", keys_dir)
    assert (repository.entry("/etc/hostname").mtime, repository.entry("/etc/hostname").mtime_ns) == \
        (1_700_000_000, 999_999_999)
    assert (repository.entry("/bin/hello").mtime, repository.entry("/bin/hello").mtime_ns) == (-2, 500_000_000)
    again = publish(tree, tmp_path / "repo", keys_dir)
    assert again.files_reused == again.files, "unchanged files are recognised as such"


def test_every_object_is_named_by_its_sha1_and_inflates_with_zlib(tree: Path, tmp_path: Path, keys_dir: Path) -> None:
    repo = tmp_path / "repo"
    publish(tree, repo, keys_dir)
    objects = [path for path in (repo / "data").glob("??/*")]
    assert len(objects) > 10
    for path in objects:
        data = path.read_bytes()
        name = path.parent.name + path.name
        assert ContentHash.of(data).hex == name.rstrip("CHXP"), path
        zlib.decompress(data)
    assert not list((repo / "data" / "txn").glob(".tmp-*"))


def test_cvmfs_compression_and_other_hash_algorithms(tree: Path, tmp_path: Path, keys_dir: Path) -> None:
    for name, ingest in [
        ("cvmfs", IngestOptions(compression=Compression.CVMFS)),
        ("plain", IngestOptions(compression=Compression.NONE)),
        ("shake", IngestOptions(algorithm=__import__("ucernvm.cvmfs.hashing", fromlist=["x"]).HashAlgorithm.SHAKE128)),
        ("tiny-chunks", IngestOptions(chunking=ChunkingParams(1024, 2048, 4096))),
    ]:
        repo = tmp_path / name
        publish(tree, repo, keys_dir, ingest=ingest)
        assert read_back(open_repo(repo, keys_dir)) == snapshot_tree(tree), name


def test_incremental_republish_writes_only_what_changed(tree: Path, tmp_path: Path, keys_dir: Path) -> None:
    repo = tmp_path / "repo"
    publish(tree, repo, keys_dir)
    before = {path.relative_to(repo) for path in (repo / "data").glob("??/*")}
    (tree / "data" / "sub" / "deep" / "leaf").write_bytes(b"one changed file\n")
    result = publish(tree, repo, keys_dir)
    after = {path.relative_to(repo) for path in (repo / "data").glob("??/*")}
    new = sorted(str(path) for path in after - before)
    # The changed file, the catalogs on its path (deep, sub, root) and the history: nothing else.
    assert [name[-1] for name in new if name.endswith(("C", "H"))].count("C") == 3
    assert len([name for name in new if not name.endswith(("C", "H", "X"))]) == 1
    assert len(new) == 5
    assert result.catalogs_reused == 0 and result.catalogs_written == 3
    assert result.files_reused == result.files - 1
    assert result.bytes_in == len(b"one changed file\n")  # what was read: the catalogs are made, not read

    (tree / "etc" / "hostname").write_text("only in the root catalog\n")
    result = publish(tree, repo, keys_dir)
    assert result.catalogs_written == 1 and result.catalogs_reused == 2  # /data/sub and /data/sub/deep


def test_a_revision_published_over_a_cvmfs_server_repository(legacy, tmp_path: Path) -> None:
    """The next revision of the repository cvmfs_server wrote (catalog schema revision 2): a nested catalog
    at a mountpoint it had too is written anew, in this layout, and the whole tree reads back."""
    repo = str(legacy.repo)
    resign(repo, legacy.fqrn, str(legacy.keys))
    source = tmp_path / "src"
    (source / "needs_migration").mkdir(parents=True)
    (source / "needs_migration" / ".cvmfscatalog").write_bytes(b"")
    (source / "needs_migration" / "foo").write_bytes(b"foo\n")
    (source / "new").write_bytes(b"new\n")
    result = Publisher(repo, legacy.fqrn, str(legacy.keys)).publish(str(source))
    assert (result.revision, result.catalogs_written, result.catalogs_reused) == (3, 2, 0)
    repository = Repository(DirectorySource(legacy.repo), legacy.fqrn, load_master_keys(legacy.pub))
    assert read_back(repository) == snapshot_tree(source)
    assert repository.catalog_for("/needs_migration").schema_revision == 7
    assert repository.find_tag("trunk-previous").revision == 2


def test_revisions_published_within_a_second_keep_a_generic_tag_each(tree: Path, tmp_path: Path, keys_dir: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """cvmfs names the automatic tag to the millisecond: generic-YYYY-MM-DDThh:mm:ss.sssZ."""
    clock = iter(range(1_700_000_000_100_000_000, 1_700_000_000_900_000_000, 1_000_000))
    monkeypatch.setattr(time, "time", lambda: next(clock) / 1e9)
    monkeypatch.setattr(time, "time_ns", lambda: next(clock))
    publish(tree, tmp_path / "repo", keys_dir)
    publish(tree, tmp_path / "repo", keys_dir)
    generic = {tag.name: tag.revision for tag in open_repo(tmp_path / "repo", keys_dir).tags() if tag.name.startswith("generic-")}
    assert sorted(generic.values()) == [1, 2]
    assert all(re.fullmatch(r"generic-2023-11-14T22:13:20\.[1-8]\d\dZ", name) for name in generic), generic


def test_interrupted_publish_leaves_the_previous_revision(tree: Path, tmp_path: Path, keys_dir: Path) -> None:
    repo = tmp_path / "repo"
    publish(tree, repo, keys_dir, tag="good")
    manifest = (repo / ".cvmfspublished").read_bytes()
    for index in range(12):  # enough new data that the publish is still running when it is killed
        (tree / "data" / f"more{index}.bin").write_bytes(os.urandom(12 << 20))
    process = subprocess.Popen(
        [sys.executable, "-m", "ucernvm", "publish", str(tree), "--repo", str(repo), "--name", FQRN, "--keys", str(keys_dir), "--workers", "1"],
        cwd=PROJECT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    initial = len(list((repo / "data").glob("??/*")))
    while len(list((repo / "data").glob("??/*"))) < initial + 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (repo / ".cvmfspublished").read_bytes() == manifest, "the publish finished before it could be interrupted"
    repository = open_repo(repo, keys_dir)
    assert repository.manifest.revision == 1
    assert repository.read("/etc/hostname") == b"cernvm\n"
    result = publish(tree, repo, keys_dir)  # the next publish succeeds over the debris
    assert result.revision == 2 and open_repo(repo, keys_dir).read("/data/more3.bin") == (tree / "data" / "more3.bin").read_bytes()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs to fill needs root")
def test_full_disk_is_a_clear_error_and_loses_nothing(tree: Path, tmp_path: Path, keys_dir: Path) -> None:
    repo = tmp_path / "small"
    repo.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(repo)], check=True)
    try:
        publish(tree, repo, keys_dir, tag="fits")
        manifest = (repo / ".cvmfspublished").read_bytes()
        (tree / "data" / "too-big.bin").write_bytes(os.urandom(30 << 20))
        result = run_cli("publish", tree, "--repo", repo, "--name", FQRN, "--keys", keys_dir)
        assert result.returncode != 0
        assert b"No space left on device" in result.stderr and b"Traceback" not in result.stderr
        assert (repo / ".cvmfspublished").read_bytes() == manifest
        assert open_repo(repo, keys_dir).read("/etc/hostname") == b"cernvm\n"
        assert not list((repo / "data" / "txn").glob(".tmp-*"))
    finally:
        subprocess.run(["umount", "-l", str(repo)], check=True)


def test_expired_whitelist_blocks_publishing_until_resign(tree: Path, tmp_path: Path, keys_dir: Path) -> None:
    repo = tmp_path / "repo"
    run_cli("publish", tree, "--repo", repo, "--name", FQRN, "--keys", keys_dir, check=True)
    resign(str(repo), FQRN, str(keys_dir), 0)  # expires at once (the command refuses such a whitelist)
    refused = run_cli("publish", tree, "--repo", repo, "--name", FQRN, "--keys", keys_dir)
    assert refused.returncode != 0 and b"whitelist expired" in refused.stderr and b"ucernvm resign" in refused.stderr
    renewed = run_cli("resign", "--repo", repo, "--name", FQRN, "--keys", keys_dir, check=True)
    expected = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=30)
    assert f"expires {expected:%Y-%m-%d}".encode() in renewed.stdout
    run_cli("publish", tree, "--repo", repo, "--name", FQRN, "--keys", keys_dir, check=True)
    assert open_repo(repo, keys_dir).manifest.revision == 2


def test_the_first_publish_makes_a_whitelist_valid_for_the_days_asked(tree: Path, tmp_path: Path,
                                                                      keys_dir: Path) -> None:
    """publish -d as resign -d; a later publish keeps the whitelist and says that -d was not used."""
    repo = tmp_path / "repo"
    common = (tree, "--repo", repo, "--name", FQRN, "--keys", keys_dir)
    first = run_cli("publish", *common, "-d", "90", check=True)
    assert b"whitelist created (90 days; renew with `ucernvm resign`)" in first.stdout
    whitelist = (repo / ".cvmfswhitelist").read_bytes()
    expected = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=90)
    assert SignedWhitelist.parse(whitelist).whitelist.expires.date() == expected.date()
    later = run_cli("publish", *common, "--days", "7", "--quiet", check=True)
    assert later.stderr.decode().splitlines() == [
        f"ucernvm: warning: --days 7 not used: {FQRN} has a whitelist already; `ucernvm resign --days 7` renews it"]
    assert (repo / ".cvmfswhitelist").read_bytes() == whitelist
    refused = run_cli("publish", *common[:-2], "--keys", tmp_path / "none", "-d", "0")
    assert refused.returncode != 0 and b"--days must be at least 1" in refused.stderr


def test_a_new_certificate_is_put_on_the_whitelist_by_resign_before_it_signs(tree: Path, tmp_path: Path,
                                                                            keys_dir: Path) -> None:
    """A publish or a tag change signed with a certificate the whitelist does not list is refused: no client
    would read it. resign lists a new certificate beside the manifest's, so that the revision served keeps
    verifying; once a revision signed with the new one is out, resign lists it alone."""
    repo = tmp_path / "repo"
    publish(tree, repo, keys_dir, tag="v1")
    new_keys = tmp_path / "new-keys"
    generate_repository_keys(FQRN, new_keys)
    for suffix in ("masterkey", "pub"):  # the same master key, a new signing key and certificate
        (new_keys / f"{FQRN}.{suffix}").write_bytes((keys_dir / f"{FQRN}.{suffix}").read_bytes())
    old, new = (load_certificate((directory / f"{FQRN}.crt").read_bytes()) for directory in (keys_dir, new_keys))
    manifest = (repo / ".cvmfspublished").read_bytes()
    for args in (["publish", tree, "--repo", repo], ["tag", "--repo", repo, "-a", "x"]):
        refused = run_cli(*args, "--name", FQRN, "--keys", new_keys)
        assert refused.returncode == 2, refused.stderr
        assert (f"the certificate {new_keys / f'{FQRN}.crt'} is not on the repository's whitelist: every client "
                "would refuse what it signs").encode() in refused.stderr
        assert b"run `ucernvm resign` with it first" in refused.stderr
    assert (repo / ".cvmfspublished").read_bytes() == manifest

    resigned = run_cli("resign", "--repo", repo, "--name", FQRN, "--keys", new_keys, check=True).stdout
    assert f"it lists {new_keys / f'{FQRN}.crt'} beside the certificate".encode() in resigned
    both = open_repo(repo, keys_dir).whitelist
    assert both.lists(old) and both.lists(new)
    publish(tree, repo, new_keys)
    assert open_repo(repo, keys_dir).manifest.revision == 2
    resign(str(repo), FQRN, str(new_keys))
    alone = open_repo(repo, keys_dir).whitelist
    assert alone.lists(new) and not alone.lists(old)


def test_publish_rejects_bad_input(tree: Path, tmp_path: Path, keys_dir: Path) -> None:
    with pytest.raises(ConfigError, match="is not a directory"):
        publish(tree / "etc" / "hostname", tmp_path / "r1", keys_dir)
    with pytest.raises(ConfigError, match="does not exist"):
        Publisher(str(tmp_path / "r2"), "unknown.cern.ch", str(keys_dir))
    with pytest.raises(ConfigError, match="reserved"):
        publish(tree, tmp_path / "r3", keys_dir, tag="trunk")
    mismatched = tmp_path / "mismatched"
    mismatched.mkdir()
    for suffix in ("crt", "pub", "masterkey"):
        (mismatched / f"{FQRN}.{suffix}").write_bytes((keys_dir / f"{FQRN}.{suffix}").read_bytes())
    (mismatched / f"{FQRN}.key").write_bytes((keys_dir / "other.cern.ch.key").read_bytes())
    with pytest.raises(ConfigError, match="is not the private key of"):
        Publisher(str(tmp_path / "r4"), FQRN, str(mismatched))
    result = run_cli("publish", tree, "--repo", tmp_path / "r5", "--name", FQRN, "--keys", keys_dir, "--chunk-sizes", "9,8,7")
    assert result.returncode == 2 and b"invalid chunk sizes" in result.stderr


def test_meta_info_is_published_kept_by_later_revisions_and_replaced(tree: Path, tmp_path: Path, keys_dir: Path) -> None:
    """As cvmfs_server update-repoinfo: a JSON object stored as a zlib object with the M suffix, named by the
    manifest's M line; a revision published without one keeps the one before."""
    repo, info = tmp_path / "repo", tmp_path / "info.json"
    info.write_text('{"administrator": "Ada", "email": "ada@example.org", "recommended-stratum1s": []}\n')
    run_cli("publish", tree, "--repo", repo, "--name", FQRN, "--keys", keys_dir, "--meta-info", info, check=True)
    first = open_repo(repo, keys_dir)
    assert first.meta_info() == info.read_bytes() and first.manifest.metainfo is not None
    stored = repo / first.manifest.metainfo.object_path(ObjectType.METAINFO)
    assert stored.name.endswith("M") and zlib.decompress(stored.read_bytes()) == info.read_bytes()
    assert b"\nM" + first.manifest.metainfo.hex.encode() + b"\n" in (repo / ".cvmfspublished").read_bytes()
    verified = run_cli("repo", "verify", repo, "--name", FQRN, "--key", keys_dir / f"{FQRN}.pub", check=True)
    assert b'meta-info:      {"administrator": "Ada", "email": "ada@example.org", "recommended-stratum1s": []}\nOK' \
        in verified.stdout
    publish(tree, repo, keys_dir)
    assert open_repo(repo, keys_dir).meta_info() == info.read_bytes()  # kept
    publish(tree, repo, keys_dir, meta_info=b'{"administrator": "Grace"}')
    assert open_repo(repo, keys_dir).meta_info() == b'{"administrator": "Grace"}'
    publish(tree, tmp_path / "none", keys_dir)
    assert open_repo(tmp_path / "none", keys_dir).meta_info() is None


@pytest.mark.parametrize(("meta_info", "message"), [
    (b"administrator: Ada", "is not JSON"),
    (b'["a list"]', "must be a JSON object"),
    (b'{"custom": "' + b"x" * 70_000 + b'"}', "clients read at most 65536"),
])
def test_meta_info_that_no_client_could_show_is_refused_before_anything_is_written(
        tree: Path, tmp_path: Path, keys_dir: Path, meta_info: bytes, message: str) -> None:
    info = tmp_path / "info"
    info.write_bytes(meta_info)
    refused = run_cli("publish", tree, "--repo", tmp_path / "repo", "--name", FQRN, "--keys", keys_dir, "--meta-info", info)
    assert refused.returncode == 2 and message.encode() in refused.stderr
    assert not (tmp_path / "repo" / ".cvmfspublished").exists()
    missing = run_cli("publish", tree, "--repo", tmp_path / "repo", "--name", FQRN, "--keys", keys_dir,
                      "--meta-info", tmp_path / "nowhere.json")
    assert missing.returncode == 2 and b"cannot read the meta-info file" in missing.stderr


def test_a_prefetch_list_is_published_at_the_root_without_touching_the_source(tree: Path, tmp_path: Path,
                                                                               keys_dir: Path) -> None:
    """`publish --prefetch-list FILE`: the list becomes the snapshot's /.ucernvm_prefetch (root's, 0644), the
    tree's own file of that name is replaced, the source is left as it was, and the summary counts the
    listed paths the tree lacks."""
    (tree / PREFETCH_LIST).write_text("/an/old/list\n")
    before = snapshot_tree(tree)
    listing = tmp_path / "read-order.txt"
    listing.write_bytes(b"/bin/hello\n/etc/hostname\n/etc/not-there\n" + os.fsencode("/data/ünïcödé name ✓") + b"\n")
    repo = tmp_path / "repo"
    result = run_cli("publish", tree, "--repo", repo, "--name", FQRN, "--keys", keys_dir, "--prefetch-list", listing,
                     check=True)
    assert b"prefetch list /.ucernvm_prefetch: 4 paths, 1 not in the tree (skipped at boot), the first: /etc/not-there" \
        in result.stdout
    assert snapshot_tree(tree) == before
    repository = open_repo(repo, keys_dir)
    entry = repository.lookup("/" + PREFETCH_LIST)
    assert entry is not None and entry.is_regular
    assert (stat.S_IMODE(entry.mode), entry.uid, entry.gid) == (0o644, 0, 0)
    assert repository.read("/" + PREFETCH_LIST) == listing.read_bytes()
    assert parse_prefetch_list(repository.read("/" + PREFETCH_LIST))[:2] == ["/bin/hello", "/etc/hostname"]
    published = read_back(repository)
    del published["/" + PREFETCH_LIST], before["/" + PREFETCH_LIST]
    assert published == before, "the rest of the tree is published as it is"


def test_a_prefetch_list_that_names_nothing_of_the_tree_is_refused(tree: Path, tmp_path: Path, keys_dir: Path) -> None:
    repo = tmp_path / "repo"
    for content in (b"", b"/no/such/file\n# a comment\n/nor/this\n"):
        listing = tmp_path / "list"
        listing.write_bytes(content)
        result = run_cli("publish", tree, "--repo", repo, "--name", FQRN, "--keys", keys_dir, "--prefetch-list", listing)
        assert result.returncode != 0
        assert b"names no file of" in result.stderr and b"/usr/bin/bash" in result.stderr
    missing = run_cli("publish", tree, "--repo", repo, "--name", FQRN, "--keys", keys_dir,
                      "--prefetch-list", tmp_path / "absent")
    assert missing.returncode != 0 and b"cannot read the prefetch list" in missing.stderr
    assert not (repo / ".cvmfspublished").exists(), "nothing is published from a refused list"


def test_a_tag_name_in_use_is_refused_before_anything_is_written(tree: Path, tmp_path: Path, keys_dir: Path) -> None:
    """As cvmfs_server publish -a: a tag names one revision for good; publishing with a name in use (or with a
    space, which cvmfs tag names never have) fails before any object is written, and the tag stays where it
    was."""
    repo = tmp_path / "repo"
    run_cli("publish", tree, "--repo", repo, "--name", FQRN, "--keys", keys_dir, "--tag", "v1", check=True)
    manifest = (repo / ".cvmfspublished").read_bytes()
    objects = sorted((repo / "data").glob("??/*"))
    (tree / "etc" / "hostname").write_text("changed\n")
    for tag, message in [("v1", b"the tag name 'v1' is already in use (revision 1)"), ("v 2", b"has a space")]:
        refused = run_cli("publish", tree, "--repo", repo, "--name", FQRN, "--keys", keys_dir, "--tag", tag)
        assert refused.returncode == 2 and message in refused.stderr and b"Traceback" not in refused.stderr
    assert (repo / ".cvmfspublished").read_bytes() == manifest
    assert sorted((repo / "data").glob("??/*")) == objects
    assert open_repo(repo, keys_dir, tag="v1").read("/etc/hostname") == b"cernvm\n"
    run_cli("publish", tree, "--repo", repo, "--name", FQRN, "--keys", keys_dir, "--tag", "v2", check=True)
    tags = {tag.name: tag.revision for tag in open_repo(repo, keys_dir).tags()}
    assert (tags["v1"], tags["v2"]) == (1, 2)
    assert open_repo(repo, keys_dir, tag="v2").read("/etc/hostname") == b"changed\n"


def test_a_new_nested_catalog_counts_its_own_revisions_from_one(tree: Path, tmp_path: Path, keys_dir: Path) -> None:
    """As cvmfs_server: a catalog made in a later revision starts its own count (created at 0, counted up
    once when committed) with the null hash as its previous revision; a changed one counts on from its own,
    whatever the repository's revision."""
    repo = tmp_path / "repo"
    publish(tree, repo, keys_dir)
    first_sub = open_repo(repo, keys_dir).catalog_for("/data/sub").content_hash
    (tree / "etc" / ".cvmfscatalog").write_bytes(b"")
    (tree / "data" / "sub" / "file").write_text("changed\n")
    publish(tree, repo, keys_dir)
    repository = open_repo(repo, keys_dir)
    assert repository.root_catalog.revision == 2
    new = repository.catalog_for("/etc")
    assert new.revision == 1
    assert new.properties["previous_revision"] == "0" * 40
    changed = repository.catalog_for("/data/sub")
    assert (changed.revision, changed.previous_revision) == (2, first_sub)


def test_publish_help_says_the_defaults() -> None:
    text = " ".join(run_cli("publish", "--help", check=True).stdout.decode().split())
    for default in ["content hash algorithm (default: sha1", "a newer one (default: 240;",
                    "(default: 4194304,8388608,16777216, the cvmfs sizes", "(default: as the previous revision;",
                    "(default: generic-<UTC time>;", "(default: CPUs)", "fast (ISA-L, default)"]:
        assert default in text


def tag_cli(repo: Path, keys: Path, *args: object, check: bool = False) -> subprocess.CompletedProcess[bytes]:
    return run_cli("tag", "--repo", repo, "--name", FQRN, "--keys", keys, *args, check=check)


def listing(repo: Path, keys: Path, tag: str) -> subprocess.CompletedProcess[bytes]:
    return run_cli("repo", "ls", repo, "/etc", "--name", FQRN, "--key", keys / f"{FQRN}.pub", "--tag", tag)


def test_a_tag_is_added_moved_and_removed_on_purpose(tree: Path, tmp_path: Path, keys_dir: Path) -> None:
    """As cvmfs_server tag -a/-h/-r: a new history database and the manifest signed anew, the revision and
    its catalogs as they were; a client then reads the snapshot the tag names now."""
    repo = tmp_path / "repo"
    publish(tree, repo, keys_dir, tag="v1")
    (tree / "etc" / "new").write_text("only in revision 2\n")
    publish(tree, repo, keys_dir, tag="v2")
    before = open_repo(repo, keys_dir)
    v1, v2 = before.find_tag("v1"), before.find_tag("v2")

    added = tag_cli(repo, keys_dir, "--add", "stable", "--root-hash", v1.root_hash.hex, "--description", "tested",
                    check=True)
    assert f"added tag stable: revision 1, root catalog {v1.root_hash}".encode() in added.stdout
    assert b"new" not in listing(repo, keys_dir, "stable").stdout.split()
    history_with_stable = open_repo(repo, keys_dir).manifest.history
    moved = tag_cli(repo, keys_dir, "--add", "stable", "--root-hash", v2.root_hash.hex, check=True)
    assert b"moved tag stable from revision 1" in moved.stdout
    assert b"new" in listing(repo, keys_dir, "stable").stdout.split()
    after = open_repo(repo, keys_dir)
    stable = after.find_tag("stable")
    assert (stable.revision, stable.timestamp, stable.description) == (2, v2.timestamp, "tested")
    assert (after.manifest.revision, after.root_hash) == (before.manifest.revision, before.root_hash)
    assert after.history.properties["previous_revision"] == history_with_stable.hex  # type: ignore[union-attr]
    assert {tag.name: tag.revision for tag in after.tags()}.items() >= {"v1": 1, "v2": 2, "trunk": 2}.items()

    tag_cli(repo, keys_dir, "--add", "head", check=True)
    assert open_repo(repo, keys_dir).find_tag("head").root_hash == before.root_hash
    removed = tag_cli(repo, keys_dir, "--remove", "stable", "head", check=True)
    assert b"removed tag stable (revision 2" in removed.stdout
    gone = listing(repo, keys_dir, "stable")
    assert gone.returncode != 0 and b"has no tag 'stable'" in gone.stderr
    publish(tree, repo, keys_dir, tag="v3")  # publishing goes on from the edited history
    assert {"v1", "v2", "v3"} <= {tag.name for tag in open_repo(repo, keys_dir).tags()}


def test_a_file_with_more_extended_attributes_than_an_entry_holds_keeps_the_first_255_with_a_warning(
        xattr_source: Path, tmp_path: Path, keys_dir: Path) -> None:
    """A catalog entry counts its extended attributes in one byte: the first 255 by name are published and
    the publish warns naming the file, where cvmfs_server would keep 256 and count them as none."""
    crowded = xattr_source / "crowded"
    crowded.write_text("many attributes\n")
    try:
        for number in range(300):
            os.setxattr(crowded, f"user.k{number:03d}", str(number).encode())
    except OSError as error:
        pytest.skip(f"no file system here holds 300 extended attributes on one file: {error.strerror}")
    (xattr_source / "plain").write_text("none\n")
    repo = tmp_path / "repo"
    result = run_cli("publish", xattr_source, "--repo", repo, "--name", FQRN, "--keys", keys_dir, "--quiet",
                     check=True)
    assert result.stderr.decode().splitlines() == [
        f"ucernvm: warning: {crowded}: 300 extended attributes, of which a catalog entry holds 255; published "
        "the first 255 by name, left out 45 (user.k255 to user.k299)"]
    entry = open_repo(repo, keys_dir).entry("/crowded")
    assert entry.xattrs == {f"user.k{number:03d}": str(number).encode() for number in range(255)}


def test_tags_are_listed_and_inspected_as_cvmfs_server_tag_does(tree: Path, tmp_path: Path, keys_dir: Path) -> None:
    """cvmfs_server tag -l (the default action), -i TAG and -x: read with the master public key alone, as a
    site that keeps the signing keys elsewhere has it."""
    repo = tmp_path / "repo"
    publish(tree, repo, keys_dir, tag="v1", description="first release")
    (tree / "etc" / "new").write_text("only in revision 2\n")
    publish(tree, repo, keys_dir)
    tags = open_repo(repo, keys_dir).tags()
    public_only = keys_without(keys_without(keys_without(keys_dir, tmp_path / "k1", "key"), tmp_path / "k2", "crt"),
                               tmp_path / "k3", "masterkey")

    listed = tag_cli(repo, public_only, check=True).stdout.decode().splitlines()
    assert listed == tag_cli(repo, public_only, "-l", check=True).stdout.decode().splitlines()
    assert [cell.strip() for cell in listed[0].split("\u2502")] == ["Name", "Revision", "Timestamp", "Branch",
                                                                    "Description"]
    rows = [[cell.strip() for cell in line.split("\u2502")] for line in listed[2:-2]]
    assert [row[0] for row in rows] == [tag.name for tag in reversed(tags)]  # oldest first, as cvmfs_server
    assert ["v1", "1", "first release"] == [rows[0][0], rows[0][1], rows[0][4]]
    assert listed[-1] == f"listing contains {len(tags)} tags"

    lines = tag_cli(repo, public_only, "-x", check=True).stdout.decode().splitlines()
    assert lines == [f"{tag.name} {tag.root_hash} {tag.size} {tag.revision} {tag.timestamp} (default) "
                     f"{tag.description}" for tag in tags]
    v1 = next(tag for tag in tags if tag.name == "v1")
    assert tag_cli(repo, public_only, "-i", "v1", "-x", check=True).stdout.decode().splitlines() == [
        lines[[tag.name for tag in tags].index("v1")]]
    details = dict(line.split(":", 1) for line in tag_cli(repo, public_only, "--inspect", "v1",
                                                         check=True).stdout.decode().splitlines())
    assert {key: value.strip() for key, value in details.items()} == {
        "Name": "v1", "Revision": "1", "Timestamp": utc_time(v1.timestamp), "Branch": "",
        "Root Hash": str(v1.root_hash), "Catalog Size": f"{v1.size / 1024:.3f} kiB", "Description": "first release"}

    for args, message in [(["-i", "nosuch"], f"the repository {FQRN} has no tag 'nosuch'"),
                          (["-a", "x", "-x"], "-x goes with -l or -i"),
                          (["-l", "-m", "text"], "--root-hash and --description go with --add")]:
        refused = tag_cli(repo, public_only, *args)
        assert refused.returncode == 2 and message.encode() in refused.stderr, refused.stderr


def test_another_repositorys_name_is_refused_before_its_keys_are_tried(tree: Path, tmp_path: Path,
                                                                       keys_dir: Path) -> None:
    """A --name that is not the one the directory's manifest holds is named as such by publish, tag and
    resign, instead of a whitelist or certificate that the other name's keys do not verify."""
    repo = tmp_path / "repo"
    publish(tree, repo, keys_dir, tag="v1")
    signed = {name: (repo / name).read_bytes() for name in (".cvmfspublished", ".cvmfswhitelist")}
    common = ["--repo", repo, "--name", "other.cern.ch", "--keys", keys_dir]
    for args in (["publish", tree, *common], ["tag", *common, "--add", "x"], ["resign", *common]):
        refused = run_cli(*args)
        assert refused.returncode == 2, refused.stderr
        assert f"{repo} holds the repository {FQRN}, not other.cern.ch".encode() in refused.stderr, refused.stderr
        assert f"give --name {FQRN}".encode() in refused.stderr
    assert {name: (repo / name).read_bytes() for name in signed} == signed


def test_a_wrong_tag_name_or_root_hash_is_refused_and_changes_nothing(tree: Path, tmp_path: Path,
                                                                      keys_dir: Path) -> None:
    repo = tmp_path / "repo"
    publish(tree, repo, keys_dir, tag="v1")
    repository = open_repo(repo, keys_dir)
    nested = repository.catalog_for("/data/sub").content_hash
    manifest = (repo / ".cvmfspublished").read_bytes()
    for args, message in [
        (["--add", "v1"], "the tag name 'v1' is already in use (revision 1)"),
        (["--add", "v1", "--root-hash", repository.root_hash.hex], "names root catalog"),
        (["--add", "x", "--root-hash", "0123abc"], "--root-hash '0123abc' is not a content hash"),
        (["--add", "x", "--root-hash", "ab" * 20], f"the repository has no catalog {'ab' * 20}"),
        (["--add", "x", "--root-hash", nested.hex], "is the nested catalog of /data/sub, not a root catalog"),
        (["--add", "trunk"], "the tag name 'trunk' is reserved"),
        (["--add", "a b"], "has a space"),
        (["--remove", "v1", "nosuch", "other"], "the repository has no tag 'nosuch', 'other'"),
        (["--remove", "trunk-previous"], "the tag 'trunk-previous' cannot be removed"),
        (["--remove", "v1", "--root-hash", repository.root_hash.hex], "--root-hash and --description go with --add"),
    ]:
        refused = tag_cli(repo, keys_dir, *args)
        assert refused.returncode == 2 and b"Traceback" not in refused.stderr, refused.stderr
        assert message.encode() in refused.stderr, (args, refused.stderr)
    assert (repo / ".cvmfspublished").read_bytes() == manifest
    assert tag_cli(tmp_path, keys_dir, "--add", "x").returncode == 2


def keys_without(keys_dir: Path, target: Path, suffix: str) -> Path:
    """A copy of the test repository's keys without its .<suffix> file."""
    target.mkdir()
    for path in keys_dir.glob(f"{FQRN}.*"):
        if path.suffix != f".{suffix}":
            (target / path.name).write_bytes(path.read_bytes())
    return target


def contents(directory: Path) -> list[Path] | None:
    """What a directory holds, to the bottom; None if there is no such directory."""
    return sorted(directory.rglob("*")) if directory.exists() else None


@pytest.mark.parametrize("state", ["absent", "empty"])
@pytest.mark.parametrize(("case", "message"), [
    ("negative ttl", "the TTL must be 0 or more seconds, not -5"),
    ("no master key", "a new repository needs its master key"),
    ("no master public key", f"the master public key {{keys}}/{FQRN}.pub does not exist"),
    ("unreadable pub", "cannot read the master public key"),
    ("another master public key", f"the master key {{keys}}/{FQRN}.masterkey is not the private key of "
                                  f"{{keys}}/{FQRN}.pub"),
    ("unreadable masterkey", "cannot read the private key"),
    ("unreadable key", "cannot read the private key"),
    ("unreadable crt", "cannot read the certificate"),
    ("reserved tag", "the tag name 'trunk' is reserved"),
    ("tag with a space", "has a space"),
    ("source no directory", "is not a directory"),
    ("source with /.cvmfs", "the source tree has a /.cvmfs directory"),
    ("contradicting dirtab", "contradicts line 1"),
    ("invalid name", "'../test.cern.ch' is not a repository name"),
])
def test_a_refused_first_publish_leaves_the_directory_as_it_was(tree: Path, tmp_path: Path, keys_dir: Path,
                                                                 state: str, case: str, message: str) -> None:
    repo = tmp_path / "repo"
    if state == "empty":
        repo.mkdir()
    source, keys, name, options = tree, keys_dir, FQRN, []
    if case == "invalid name":  # its key files exist, found through the name: it was published as it was
        keys, name = keys_without(keys_dir, tmp_path / "keys", "none") / "sub", f"../{FQRN}"
        keys.mkdir()
    elif case == "negative ttl":
        options = ["--ttl", "-5"]
    elif case.startswith("no master"):
        keys = keys_without(keys_dir, tmp_path / "keys", "masterkey" if case == "no master key" else "pub")
    elif case == "another master public key":
        keys = keys_without(keys_dir, tmp_path / "keys", "pub")
        (keys / f"{FQRN}.pub").write_bytes((keys_dir / "other.cern.ch.pub").read_bytes())
    elif case.startswith("unreadable"):
        suffix = case.split()[1]
        keys = keys_without(keys_dir, tmp_path / "keys", suffix)
        (keys / f"{FQRN}.{suffix}").mkdir()
    elif case == "reserved tag":
        options = ["--tag", "trunk"]
    elif case == "tag with a space":
        options = ["--tag", "v 1"]
    elif case == "source no directory":
        source = tree / "etc" / "hostname"
    elif case == "source with /.cvmfs":
        (tree / ".cvmfs").mkdir()
        options = ["--virtual-dir"]
    else:
        (tree / ".cvmfsdirtab").write_text("/etc\n!/etc\n")
    before = contents(repo)
    refused = run_cli("publish", source, "--repo", repo, "--name", name, "--keys", keys, *options)
    assert refused.returncode == 2 and message.format(keys=keys).encode() in refused.stderr, refused.stderr
    assert contents(repo) == before


@pytest.mark.parametrize("state", ["absent", "empty", "laid out, never published"])
@pytest.mark.parametrize("failing", ["reading a file", "writing the manifest"])
def test_a_first_publish_that_fails_late_removes_what_it_made(tree: Path, tmp_path: Path, keys_dir: Path,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              state: str, failing: str) -> None:
    repo = tmp_path / "deeper" / "repo"
    if state != "absent":
        repo.mkdir(parents=True)
    if state == "laid out, never published":
        (repo / "data" / "txn").mkdir(parents=True)
        (repo / "data" / "00").mkdir()
        (repo / "notes").write_text("not the publisher's\n")
    before = contents(tmp_path)
    if failing == "reading a file":
        ingest_file = Ingester.ingest_file

        def refused(self: Ingester, fs_path: str) -> object:
            if fs_path.endswith("hard_a"):
                raise ConfigError(f"cannot read {fs_path}: Input/output error")
            return ingest_file(self, fs_path)

        monkeypatch.setattr(Ingester, "ingest_file", refused)
    else:
        put_named = RepositoryStorage.put_named

        def full(self: RepositoryStorage, name: str, data: bytes) -> None:
            if name == ".cvmfspublished":
                raise StorageError(f"cannot write {name}: No space left on device")
            put_named(self, name, data)

        monkeypatch.setattr(RepositoryStorage, "put_named", full)
    with pytest.raises((ConfigError, StorageError)):
        publish(tree, repo, keys_dir, workers=1)
    assert contents(tmp_path) == before


def test_a_later_publish_that_fails_removes_nothing(tree: Path, tmp_path: Path, keys_dir: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "repo"
    publish(tree, repo, keys_dir)
    before = {path: path.read_bytes() for path in contents(repo) if path.is_file()}
    (tree / "etc" / "new").write_text("only in the failed revision\n")

    def full(self: RepositoryStorage, name: str, data: bytes) -> None:
        raise StorageError(f"cannot write {name}: No space left on device")

    monkeypatch.setattr(RepositoryStorage, "put_named", full)
    with pytest.raises(StorageError):
        publish(tree, repo, keys_dir)
    after = {path: path.read_bytes() for path in contents(repo) if path.is_file()}
    assert before.items() <= after.items() and len(after) > len(before)  # the new objects, unreferenced
    assert open_repo(repo, keys_dir).manifest.revision == 1


def test_a_repository_path_that_is_a_file_is_refused_as_such(tree: Path, tmp_path: Path, keys_dir: Path) -> None:
    (tmp_path / "file").write_text("not a directory\n")
    for repo in (tmp_path / "file", tmp_path / "file" / "repo"):
        refused = run_cli("publish", tree, "--repo", repo, "--name", FQRN, "--keys", keys_dir)
        assert refused.returncode != 0 and b"Traceback" not in refused.stderr, refused.stderr
        assert f"cannot lay out the repository in {repo}".encode() in refused.stderr
    assert (tmp_path / "file").read_text() == "not a directory\n"
