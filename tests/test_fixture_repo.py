"""The repository written by the real cvmfs_server reads exactly as its README describes."""

from __future__ import annotations

import datetime
import http.server
import threading
from collections.abc import Iterator
from functools import partial

import pytest

from helpers import run_cli
from ucernvm.client.fetcher import HttpSource
from ucernvm.client.repository import Repository
from ucernvm.client.sources import DirectorySource
from ucernvm.cvmfs.trust import load_master_keys

FOO, BAR, BAZ = b"foo\n", b"bar\n", b"baz\n"


def _plain(prefix: str) -> dict[str, bytes]:
    return {f"{prefix}/foo": FOO, f"{prefix}/bar": BAR, f"{prefix}/baz": BAZ}


# path -> file content (bytes), link target (str) or None for a directory; from the fixture's README.
EXPECTED: dict[str, bytes | str | None] = {
    **_plain(""),
    "/hardlink_foo": FOO,
    "/hardlink_bar": BAR,
    "/hardlink_baz": BAZ,
    "/needs_migration": None,
    "/needs_migration/.cvmfscatalog": b"",
    **_plain("/needs_migration"),
    "/needs_migration/symlink_foo": "foo",
    "/needs_migration/hardlink_bar": BAR,
    "/needs_migration/hardlink_symlink_foo_1": "foo",
    "/needs_migration/hardlink_symlink_foo_2": "foo",
    "/needs_migration/doesnt_need_migration": None,
    "/needs_migration/doesnt_need_migration/.cvmfscatalog": b"",
    **_plain("/needs_migration/doesnt_need_migration"),
    "/needs_migration/simple_directory": None,
    **_plain("/needs_migration/simple_directory"),
    "/needs_migration/simple_directory/symlink_foo": "foo",
    "/needs_migration/simple_directory/hardlink_foo": FOO,
    "/doesnt_need_migration": None,
    "/doesnt_need_migration/.cvmfscatalog": b"",
    **_plain("/doesnt_need_migration"),
    "/doesnt_need_migration/symlink_foo": "foo",
    "/doesnt_need_migration/symlink_bar": "bar",
    "/doesnt_need_migration/doesnt_need_migration_either": None,
    "/doesnt_need_migration/doesnt_need_migration_either/.cvmfscatalog": b"",
    **_plain("/doesnt_need_migration/doesnt_need_migration_either"),
    "/doesnt_need_migration/doesnt_need_migration_either/symlink_foo": FOO,
    "/doesnt_need_migration/simple_directory": None,
    **_plain("/doesnt_need_migration/simple_directory"),
    "/doesnt_need_migration/simple_directory/symlink_foo": "foo",
    "/needs_commit_due_to_child": None,
    "/needs_commit_due_to_child/.cvmfscatalog": b"",
    **_plain("/needs_commit_due_to_child"),
    "/needs_commit_due_to_child/symlink_baz": "baz",
    "/needs_commit_due_to_child/needs_migration": None,
    "/needs_commit_due_to_child/needs_migration/.cvmfscatalog": b"",
    **_plain("/needs_commit_due_to_child/needs_migration"),
    "/needs_commit_due_to_child/needs_migration/hardlink_foo": FOO,
    "/needs_commit_due_to_child/needs_migration/hardlink_bar_1": BAR,
    "/needs_commit_due_to_child/needs_migration/hardlink_bar_2": BAR,
    "/needs_commit_due_to_child/simple_directory": None,
    **_plain("/needs_commit_due_to_child/simple_directory"),
    "/needs_commit_due_to_child/simple_directory/symlink_foo": "foo",
}

# Hard-link groups: every name of the group has this link count.
HARDLINKS = {
    ("/foo", "/hardlink_foo"): 2,
    ("/bar", "/hardlink_bar"): 2,
    ("/baz", "/hardlink_baz"): 2,
    ("/needs_migration/bar", "/needs_migration/hardlink_bar"): 2,
    (
        "/needs_migration/symlink_foo",
        "/needs_migration/hardlink_symlink_foo_1",
        "/needs_migration/hardlink_symlink_foo_2",
    ): 3,
    ("/needs_migration/simple_directory/foo", "/needs_migration/simple_directory/hardlink_foo"): 2,
    ("/needs_commit_due_to_child/needs_migration/foo", "/needs_commit_due_to_child/needs_migration/hardlink_foo"): 2,
    (
        "/needs_commit_due_to_child/needs_migration/bar",
        "/needs_commit_due_to_child/needs_migration/hardlink_bar_1",
        "/needs_commit_due_to_child/needs_migration/hardlink_bar_2",
    ): 3,
}

NESTED = {
    "/needs_migration",
    "/doesnt_need_migration",
    "/needs_commit_due_to_child",
    "/needs_migration/doesnt_need_migration",
    "/doesnt_need_migration/doesnt_need_migration_either",
    "/needs_commit_due_to_child/needs_migration",
}


@pytest.fixture(scope="module")
def http_url(legacy_pristine) -> Iterator[str]:
    """The fixture served by a plain static web server (Python's http.server)."""
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(legacy_pristine.base / "srv"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/cvmfs/{legacy_pristine.fqrn}"
    server.shutdown()
    server.server_close()


def assert_reads_as_described(repository: Repository) -> None:
    seen = {}
    for path, entry in repository.walk():
        if entry.is_directory:
            seen[path] = None
        elif entry.is_symlink:
            seen[path] = entry.symlink
        else:
            seen[path] = repository.read(path)
    assert seen == EXPECTED
    for names, count in HARDLINKS.items():
        entries = [repository.entry(name) for name in names]
        assert {entry.linkcount for entry in entries} == {count}, names
        assert len({entry.hardlink_group for entry in entries}) == 1 and entries[0].hardlink_group > 0
    for path in NESTED:
        assert repository.catalog_for(path).root_prefix == path
    assert repository.revision == 2
    assert {tag.name for tag in repository.tags()} >= {"trunk", "trunk-previous"}


def test_fixture_reads_as_described_from_directory(legacy_pristine) -> None:
    repository = Repository(
        DirectorySource(legacy_pristine.repo), legacy_pristine.fqrn, load_master_keys(legacy_pristine.pub), now=legacy_pristine.now
    )
    assert_reads_as_described(repository)
    # cvmfs_server records extended attributes only with CVMFS_INCLUDE_XATTRS; its counters say so.
    assert "self_xattr" in repository.root_catalog.statistics() and not repository.stores_xattrs()


def test_fixture_catalog_properties(legacy_pristine) -> None:
    """Each catalog's revision, modification time and previous version, including the 64 zeros that
    cvmfs_server 2.1 wrote for "no previous version" into a new nested catalog."""
    repository = Repository(
        DirectorySource(legacy_pristine.repo), legacy_pristine.fqrn, load_master_keys(legacy_pristine.pub), now=legacy_pristine.now
    )
    root, nested = repository.root_catalog, repository.catalog_for("/needs_migration")
    assert (root.schema, root.schema_revision, root.revision, root.last_modified) == (2.5, 2, 2, 1445428515)
    assert root.previous_revision is not None and root.previous_revision.hex == "e6ceff5bfeded1ddc5d21dd0ce32aca99013e31e"
    assert (root.root_prefix, root.ttl) == ("", 240)
    assert nested.properties["previous_revision"] == "0" * 64 and nested.previous_revision is None
    assert (nested.revision, nested.root_prefix) == (1, "/needs_migration")


def test_fixture_reads_as_described_over_http(legacy_pristine, http_url: str) -> None:
    repository = Repository(
        HttpSource([http_url]), legacy_pristine.fqrn, load_master_keys(legacy_pristine.keys), now=legacy_pristine.now
    )
    assert_reads_as_described(repository)


def test_fixture_previous_revision_by_tag(legacy_pristine) -> None:
    repository = Repository(
        DirectorySource(legacy_pristine.repo),
        legacy_pristine.fqrn,
        load_master_keys(legacy_pristine.pub),
        now=legacy_pristine.now,
        tag="trunk-previous",
    )
    assert [entry.name for entry in repository.listdir("/")] == ["new_repository"]
    assert repository.revision == 1


def test_cli_verify_and_long_listing(legacy_pristine, http_url: str) -> None:
    now = str(int(legacy_pristine.now.timestamp()))
    verify = run_cli("repo", "verify", http_url, "--key", legacy_pristine.pub, "--now", now, check=True)
    out = verify.stdout.decode()
    assert f"name:           {legacy_pristine.fqrn}" in out
    assert "revision:       2" in out
    assert "6ed3d49a5c64f21f36936ab350d49aaf57585b9a" in out
    assert "catalogs:       7 verified" in out
    assert "trunk-previous" in out

    listing = run_cli("repo", "ls", legacy_pristine.repo, "/needs_migration", "-l", "--key", legacy_pristine.pub, "--now", now, check=True)
    lines = {line.rsplit(" ", 1)[-1] if " -> " not in line else line.split(" ")[4]: line for line in listing.stdout.decode().splitlines()}
    assert lines["/needs_migration/hardlink_symlink_foo_1"].startswith("lrwxrwxrwx 3 3 ")
    assert lines["/needs_migration/hardlink_symlink_foo_1"].endswith(" -> foo")
    assert lines["/needs_migration/bar"].startswith("-rw-rw-r-- 2 4 2015-10-21T11:55:15Z ")
    assert lines["/needs_migration/simple_directory"].startswith("drwxrwxr-x 2 4096 ")

    cat = run_cli("repo", "cat", http_url, "/needs_commit_due_to_child/needs_migration/hardlink_bar_2", "--key", legacy_pristine.keys, "--now", now, check=True)
    assert cat.stdout == BAR


def test_expired_whitelist_is_refused_without_now(legacy_pristine) -> None:
    result = run_cli("repo", "verify", legacy_pristine.repo, "--key", legacy_pristine.pub)
    assert result.returncode != 0
    assert b"whitelist expired on 2015-11-20" in result.stderr
    assert b"Traceback" not in result.stderr
    assert result.stdout == b""


def test_tags_of_a_repository_whose_whitelist_expired_are_read_with_now(legacy_pristine) -> None:
    """tag -l and -i refuse it, as cvmfs_server tag does, pointing at --now, which reads it as repo --now does."""
    common = ["tag", "--repo", legacy_pristine.repo, "--name", legacy_pristine.fqrn, "--keys", legacy_pristine.keys]
    refused = run_cli(*common, "-l")
    assert refused.returncode != 0 and b"whitelist expired on 2015-11-20" in refused.stderr
    assert b"--now EPOCH" in refused.stderr and b"Traceback" not in refused.stderr
    now = str(int(legacy_pristine.now.timestamp()))
    assert "listing contains 4 tags" in run_cli(*common, "-l", "--now", now, check=True).stdout.decode()
    inspected = run_cli(*common, "-i", "trunk", "--now", now, check=True).stdout.decode()
    assert "Revision:     2" in inspected
    changing = run_cli(*common, "-a", "v1", "--now", now)
    assert changing.returncode != 0 and b"--now goes with -l or -i" in changing.stderr
    for bad in ("1e20", "nan", "soon"):
        result = run_cli(*common, "--now", bad)
        assert result.returncode == 2 and f"not a Unix time in seconds: '{bad}'".encode() in result.stderr
        assert b"Traceback" not in result.stderr


def test_repo_tags_writes_the_times_tag_l_writes(legacy_pristine) -> None:
    """The two listings of a repository's tags, the client's (repo tags) and the publisher's (tag -l), write
    a tag's time alike, in UTC; so do repo verify and resign for the times they print."""
    now = str(int(legacy_pristine.now.timestamp()))
    listed = run_cli("repo", "tags", legacy_pristine.repo, "--key", legacy_pristine.pub, "--now", now, check=True)
    assert listed.stdout.decode().splitlines() == [
        "generic-2015-10-21T11:55:15Z\t2\t2015-10-21 11:55:15 UTC\t6ed3d49a5c64f21f36936ab350d49aaf57585b9a\t",
        "trunk\t2\t2015-10-21 11:55:15 UTC\t6ed3d49a5c64f21f36936ab350d49aaf57585b9a\tcurrent HEAD",
        "generic-2015-10-21T11:55:14Z\t1\t2015-10-21 11:55:14 UTC\te6ceff5bfeded1ddc5d21dd0ce32aca99013e31e\t",
        "trunk-previous\t1\t2015-10-21 11:55:14 UTC\te6ceff5bfeded1ddc5d21dd0ce32aca99013e31e\tdefault undo target",
    ]
    table = run_cli("tag", "--repo", legacy_pristine.repo, "--name", legacy_pristine.fqrn, "--keys",
                    legacy_pristine.keys, "--now", now, check=True).stdout.decode()
    assert "\u2502 2015-10-21 11:55:15 UTC \u2502" in table and "\u2502 2015-10-21 11:55:14 UTC \u2502" in table
    verified = run_cli("repo", "verify", legacy_pristine.repo, "--key", legacy_pristine.pub, "--now", now,
                       check=True).stdout.decode()
    assert "published:      2015-10-21 11:55:15 UTC\n" in verified
    assert "whitelist:      expires 2015-11-20 11:" in verified and verified.count(" UTC\n") == 2


def test_whitelist_expiry_counts_from_the_hour(legacy_pristine) -> None:
    keys = load_master_keys(legacy_pristine.pub)
    source = DirectorySource(legacy_pristine.repo)
    utc = datetime.timezone.utc
    Repository(source, legacy_pristine.fqrn, keys, now=datetime.datetime(2015, 11, 20, 10, 59, tzinfo=utc))
    with pytest.raises(Exception, match="whitelist expired"):
        Repository(source, legacy_pristine.fqrn, keys, now=datetime.datetime(2015, 11, 20, 11, 0, tzinfo=utc))


def test_tags_of_the_repository_cvmfs_server_wrote_in_its_tag_lines(legacy) -> None:
    """`ucernvm tag -x` and `-i` read the history database cvmfs_server wrote (schema revision 2, no branch
    column) and print cvmfs_server tag -x's lines: name, root hash, catalog size, revision, time, branch."""
    run_cli("resign", "--repo", legacy.repo, "--name", legacy.fqrn, "--keys", legacy.keys, check=True)
    common = ["tag", "--repo", legacy.repo, "--name", legacy.fqrn, "--keys", legacy.keys]
    assert run_cli(*common, "-x", check=True).stdout.decode().splitlines() == [
        "generic-2015-10-21T11:55:15Z 6ed3d49a5c64f21f36936ab350d49aaf57585b9a 14336 2 1445428515 (default) ",
        "trunk 6ed3d49a5c64f21f36936ab350d49aaf57585b9a 14336 2 1445428515 (default) current HEAD",
        "generic-2015-10-21T11:55:14Z e6ceff5bfeded1ddc5d21dd0ce32aca99013e31e 14336 1 1445428514 (default) ",
        "trunk-previous e6ceff5bfeded1ddc5d21dd0ce32aca99013e31e 14336 1 1445428514 (default) default undo target",
    ]
    inspected = run_cli(*common, "-i", "trunk-previous", check=True).stdout.decode().splitlines()
    assert inspected[1:6] == ["Revision:     1", "Timestamp:    2015-10-21 11:55:14 UTC", "Branch:       ",
                              "Root Hash:    e6ceff5bfeded1ddc5d21dd0ce32aca99013e31e", "Catalog Size: 14.000 kiB"]
