"""`.cvmfsdirtab`: nested catalogs for the directories its patterns select, as cvmfs_server publish makes them."""

from __future__ import annotations

import ctypes
import itertools
import locale
import os
import random
import stat
from pathlib import Path

import pytest

from helpers import fuse_unusable, run_cli, snapshot_tree
from test_mount import Mounts
from test_publish import FQRN, open_repo, publish, read_back
from ucernvm.client.repository import Repository
from ucernvm.cvmfs.dirtab import Dirtab, _glob_string
from ucernvm.cvmfs.source_tree import scan
from ucernvm.errors import ConfigError
from ucernvm.server import StratumServer

# The example of cvmfs's documentation ("Managing Nested Catalogs with .cvmfsdirtab"), and what it selects.
DOCUMENTED = b"""# Nested catalogs for every platform
/software/*
# Nested catalogs for every version
/software/*/*
! */common
/grid-certificates
"""
DOCUMENTED_CATALOGS = [
    "/grid-certificates",
    "/software/i686",
    "/software/i686/1.0",
    "/software/i686/2.0",
    "/software/x86_64",
    "/software/x86_64/1.0",
]


def make_software_tree(root: Path, dirtab: bytes = DOCUMENTED) -> None:
    """The repository of cvmfs's example, a file in every directory, plus what the example does not show."""
    for directory in ("software/i686/1.0", "software/i686/2.0", "software/i686/common", "software/x86_64/1.0",
                      "software/x86_64/common", "grid-certificates", "docs", "manual/sub"):
        (root / directory).mkdir(parents=True, exist_ok=True)
        (root / directory / "README").write_text(f"this is /{directory}\n")
    (root / "software" / "i686" / "1.0" / "lib.so").write_bytes(os.urandom(70_000))
    (root / "software" / "x86_64" / "common" / ".cvmfscatalog").write_bytes(b"")  # excluded, yet made by hand
    (root / "manual" / ".cvmfscatalog").write_bytes(b"")
    (root / "software" / "notes.txt").write_text("a file: never a nested catalog\n")
    (root / ".cvmfsdirtab").write_bytes(dirtab)


def mountpoints(repository: Repository) -> list[str]:
    """Every nested catalog of the snapshot by its mountpoint, each checked to be mounted where it says."""
    found, pending = [], [repository.root_catalog]
    while pending:
        for reference in pending.pop().nested_catalogs():
            catalog = repository.catalog_for(reference.path)
            assert catalog.root_prefix == reference.path
            found.append(reference.path)
            pending.append(catalog)
    return sorted(found)


def with_markers(tree: dict[str, tuple], directories: list[str]) -> dict[str, tuple]:
    """The source tree as published: an empty .cvmfscatalog of mode 0644 in each of ``directories`` that
    lacks one."""
    markers = {f"{directory}/.cvmfscatalog": ("file", stat.S_IFREG | 0o644, b"") for directory in directories}
    return dict(sorted((markers | tree).items()))


@pytest.fixture
def software(tmp_path: Path) -> Path:
    make_software_tree(tmp_path / "src")
    return tmp_path / "src"


def select(source: Path, dirtab: bytes) -> list[str]:
    return sorted(node.path for node in Dirtab.parse(dirtab, "dirtab").select(scan(str(source))))


def test_the_documented_example_makes_the_documented_catalogs(software: Path, tmp_path: Path,
                                                             keys_dir: Path) -> None:
    """The catalogs the example creates, plus the ones made by hand (one where the dirtab excludes it); every
    file reads back exactly, the dirtab among them; each selected directory holds an empty .cvmfscatalog of
    the publishing user; the source is left as it was."""
    before = snapshot_tree(software)
    repo = tmp_path / "repo"
    run_cli("publish", software, "--repo", repo, "--name", FQRN, "--keys", keys_dir, check=True)
    assert snapshot_tree(software) == before
    repository = open_repo(repo, keys_dir)
    assert mountpoints(repository) == sorted(DOCUMENTED_CATALOGS + ["/manual", "/software/x86_64/common"])
    assert read_back(repository) == with_markers(before, DOCUMENTED_CATALOGS)
    assert repository.read("/.cvmfsdirtab") == DOCUMENTED
    marker = repository.entry("/software/i686/1.0/.cvmfscatalog")
    assert (marker.uid, marker.gid) == (os.getuid(), os.getgid())
    assert repository.catalog_for("/software/i686/1.0/lib.so").root_prefix == "/software/i686/1.0"
    verified = run_cli("repo", "verify", repo, "--name", FQRN, "--key", keys_dir / f"{FQRN}.pub", check=True)
    assert b"catalogs:       9 verified" in verified.stdout


def test_patterns_match_as_cvmfs_globs_them(software: Path) -> None:
    """A wildcard matches hidden names too (glob's GLOB_PERIOD), never a file or a symlink; ? is one
    character; \\ escapes a wildcard; [...] is a bracket expression; an exclusion's * spans slashes and a
    relative exclusion matches the end of a path."""
    (software / "software" / ".hidden").mkdir()
    (software / "software" / "a*b").mkdir()
    (software / "software" / "link").symlink_to("i686")
    assert select(software, b"/software/*\n") == [
        "/software/.hidden", "/software/a*b", "/software/i686", "/software/x86_64"]
    assert select(software, b"/software/????\n") == ["/software/i686"]
    assert select(software, b"/software/a\\*b\n") == ["/software/a*b"]
    assert select(software, b"/software/[ix]*\n") == ["/software/i686", "/software/x86_64"]
    assert select(software, b"/software/[!ix.]*\n") == ["/software/a*b"]
    assert select(software, b"  /software/*/*  \n!/software/*\n") == []
    assert select(software, b"/software/*/*\n!/software/*6\n") == select(software, b"/software/*/*\n")
    assert select(software, b"/software/*/*\n! 1.0\n") == select(software, b"/software/*/*\n")
    assert select(software, b"/software/*/*\n!*/i686/*\n!*/link/*\n") == [
        "/software/x86_64/1.0", "/software/x86_64/common"]
    assert select(software, b"/software//i686/\n/software/i686\n\n\t# indented comment\n") == ["/software/i686"]
    assert select(software, b"/no/such/dir\n") == []


@pytest.mark.parametrize(("content", "line", "message"), [
    (b"/docs\nsoftware/*\n", 2, "starts with /"),
    (b"# only a slash\n/\n", 2, "names no directory"),
    (b"/software/\\x\n", 1, "can follow a \\"),
    (b"/docs\n/software/*\n\n! /software/*\n", 4, "contradicts line 2"),
])
def test_a_malformed_dirtab_is_refused_naming_its_line(software: Path, tmp_path: Path, keys_dir: Path,
                                                       content: bytes, line: int, message: str) -> None:
    (software / ".cvmfsdirtab").write_bytes(content)
    repo = tmp_path / "repo"
    refused = run_cli("publish", software, "--repo", repo, "--name", FQRN, "--keys", keys_dir)
    assert refused.returncode == 2 and b"Traceback" not in refused.stderr
    assert f"error: {software}/.cvmfsdirtab:{line}: ".encode() in refused.stderr
    assert message.encode() in refused.stderr
    assert not (repo / ".cvmfspublished").exists()


def test_a_second_publish_follows_the_changed_dirtab_and_tree(software: Path, tmp_path: Path,
                                                             keys_dir: Path) -> None:
    """A new version directory becomes a catalog; a directory the dirtab stops selecting is merged back into
    its parent's catalog (its files stay); a marker the dirtab made before keeps its time, so a catalog
    whose directory did not change is reused."""
    repo = tmp_path / "repo"
    publish(software, repo, keys_dir)
    first = open_repo(repo, keys_dir)
    (software / "software" / "x86_64" / "2.0").mkdir()
    (software / "software" / "x86_64" / "2.0" / "README").write_text("new version\n")
    (software / ".cvmfsdirtab").write_bytes(DOCUMENTED.replace(b"/grid-certificates\n", b"/docs\n"))
    result = publish(software, repo, keys_dir)
    second = open_repo(repo, keys_dir)
    selected = sorted(set(DOCUMENTED_CATALOGS) - {"/grid-certificates"} | {"/docs", "/software/x86_64/2.0"})
    assert mountpoints(second) == sorted(selected + ["/manual", "/software/x86_64/common"])
    assert read_back(second) == with_markers(snapshot_tree(software), selected)
    assert second.catalog_for("/grid-certificates/README").root_prefix == ""
    unchanged = "/software/i686/1.0"
    assert second.entry(f"{unchanged}/.cvmfscatalog").mtime == first.entry(f"{unchanged}/.cvmfscatalog").mtime
    assert second.catalog_for(unchanged).content_hash == first.catalog_for(unchanged).content_hash
    # Written: the root, /docs, /software/x86_64 (a new subdirectory) and /software/x86_64/2.0; the other
    # six are reused.
    assert (result.catalogs_written, result.catalogs_reused) == (4, 6)


@pytest.mark.skipif(fuse_unusable() is not None, reason=str(fuse_unusable()))
def test_a_mount_reads_every_file_from_the_catalog_the_dirtab_made(software: Path, tmp_path: Path,
                                                                   keys_dir: Path) -> None:
    stratum = tmp_path / "stratum"
    publish(software, stratum / FQRN, keys_dir)
    mounts = Mounts(tmp_path)
    try:
        with StratumServer(stratum) as server:
            point, _ = mounts.mount(f"{server.url}/cvmfs/{FQRN}", keys_dir, tmp_path / "cache")
            assert snapshot_tree(point) == with_markers(snapshot_tree(software), DOCUMENTED_CATALOGS)
            for path, mountpoint in [("software/i686/1.0/lib.so", "/software/i686/1.0"), ("software/notes.txt", ""),
                                     ("software/i686/common/README", "/software/i686")]:
                counters = os.getxattr(point / path, "user.catalog_counters").decode().splitlines()
                assert counters[1] == f"catalog_mountpoint: {mountpoint}", path
    finally:
        mounts.unmount_all()


def test_bracket_expressions_take_classes_as_fnmatch_does(software: Path) -> None:
    """POSIX classes, equivalence classes and collating symbols in brackets, in the forms of glob(7), as the
    C locale defines them. fnmatch tries the members in order and gives up at an unknown class: the members
    before it still match, a negated expression then matches nothing."""
    for name in ("v2", "V3", "_9", "x-y", "11"):
        (software / "software" / name).mkdir()
    assert select(software, b"/software/[[:digit:]]*\n") == ["/software/11"]
    assert select(software, b"/software/[![:digit:]]*\n") == [
        "/software/V3", "/software/_9", "/software/i686", "/software/v2", "/software/x-y", "/software/x86_64"]
    assert select(software, b"/software/[[:upper:][:digit:]]?\n") == ["/software/11", "/software/V3"]
    assert select(software, b"/software/[[:alpha:]][[:digit:]]\n") == ["/software/V3", "/software/v2"]
    assert select(software, b"/software/[[:alnum:]_][[:alnum:]]\n") == [
        "/software/11", "/software/V3", "/software/_9", "/software/v2"]
    assert select(software, b"/software/*[[:punct:]]*\n") == ["/software/_9", "/software/x-y", "/software/x86_64"]
    assert select(software, b"/software/*/[[:digit:]].[[:digit:]]\n") == [
        "/software/i686/1.0", "/software/i686/2.0", "/software/x86_64/1.0"]
    assert select(software, b"/software/x[[.-.]]y\n") == select(software, b"/software/x[[=-=]]y\n") == [
        "/software/x-y"]
    assert select(software, b"/software/[[:lower:]][[:xdigit:]]*\n") == [
        "/software/i686", "/software/v2", "/software/x86_64"]
    assert select(software, b"/software/[[:bogus:]]*\n") == select(software, b"/software/[![:bogus:]]*\n") == []
    assert select(software, b"/software/[v[:bogus:]V]?\n") == ["/software/v2"]


def test_a_pattern_goes_down_symlinks_to_directories_of_the_tree(software: Path, tmp_path: Path,
                                                                 keys_dir: Path) -> None:
    """As cvmfs's glob: a symlink to a directory of the repository is followed on the way down, and the
    directory it leads to becomes the catalog; an exclusion matches the path the pattern found. A symlink
    as the last name is no catalog, nor is one leading out of the tree followed."""
    (software / "software" / "i386").symlink_to("i686")
    (software / "software" / "arch").symlink_to(software / "software" / "x86_64")  # absolute, into the tree
    (tmp_path / "elsewhere" / "9.0").mkdir(parents=True)
    (software / "software" / "outside").symlink_to(tmp_path / "elsewhere")
    (software / "software" / "to-file").symlink_to("notes.txt")
    i686 = ["/software/i686/1.0", "/software/i686/2.0", "/software/i686/common"]
    assert select(software, b"/software/i386/*\n") == i686
    assert select(software, b"/software/arch/*\n") == ["/software/x86_64/1.0", "/software/x86_64/common"]
    assert select(software, b"/software/i386/*\n! /software/i686/common\n") == i686
    assert select(software, b"/software/i386/*\n! /software/i386/common\n") == i686[:2]
    assert select(software, b"/software/*/9.0\n/software/to-file/*\n/software/i386\n") == []
    (software / ".cvmfsdirtab").write_bytes(b"/software/i386/[12].0\n")
    repo = tmp_path / "repo"
    publish(software, repo, keys_dir)
    repository = open_repo(repo, keys_dir)
    assert mountpoints(repository) == sorted(i686[:2] + ["/manual", "/software/x86_64/common"])
    assert read_back(repository) == with_markers(snapshot_tree(software), i686[:2])


def test_on_the_way_down_a_wildcard_matches_no_hidden_name_and_dot_names_are_opened(software: Path) -> None:
    """glibc's glob globs the directories above the last name without GLOB_PERIOD: there a leading . is
    matched only by a . that begins the pattern, and . and .. are names too (cvmfs checks the last name
    only). Nothing above the repository's root is opened."""
    (software / "software" / ".hidden" / "3.0").mkdir(parents=True)
    assert "/software/.hidden/3.0" not in select(software, b"/software/*/*\n")
    assert select(software, b"/software/.*/3.0\n") == ["/software/.hidden/3.0"]
    assert select(software, b"/software/.*/i686\n") == ["/software/i686"]  # as /software/./i686
    assert select(software, b"/software/../docs\n/software/./x86_64/../i686/1.0\n") == ["/docs", "/software/i686/1.0"]
    assert select(software, b"/*/../docs\n") == ["/docs"]
    assert select(software, b"/../software\n/.*/software\n") == ["/software"]  # /.. is refused, /. is the root
    assert select(software, b"/software/.\n/software/i686/..\n") == []
    assert select(software, b"/software/.*\n") == ["/software/.hidden"]  # the last name: hidden names match


def test_names_are_matched_as_bytes_as_in_the_c_locale(software: Path) -> None:
    """cvmfs_server matches in the C locale, which knows bytes: ? is one byte of a UTF-8 name, a bracket
    expression holds the bytes of its characters, a class ASCII characters only; in an exclusion too."""
    for name in ("é", "日本", "éa"):
        (software / "software" / name).mkdir()
    assert select(software, b"/software/??\n") == ["/software/é"]
    assert select(software, b"/software/??????\n") == ["/software/x86_64", "/software/日本"]
    assert select(software, "/software/[é]?a\n".encode()) == ["/software/éa"]
    assert select(software, b"/software/[[:alpha:]]*\n") == ["/software/i686", "/software/x86_64"]
    everything = select(software, b"/software/*\n")
    assert select(software, b"/software/*\n!/software/?a\n") == everything
    assert select(software, b"/software/*\n!/software/??a\n") == [path for path in everything
                                                                 if path != "/software/éa"]


def test_an_exclusion_is_matched_line_by_line_as_cvmfs_regex_with_reg_newline(software: Path) -> None:
    """cvmfs compiles an exclusion into a POSIX regex with REG_NEWLINE: no wildcard matches the newline of a
    name, and ^ and $ match at it."""
    (software / "software" / "a\nb").mkdir()
    everything = select(software, b"/software/*\n")
    assert "/software/a\nb" in everything
    assert select(software, b"/software/*\n! /software/a?b\n") == everything
    others = [path for path in everything if path != "/software/a\nb"]
    assert select(software, b"/software/*\n! /software/a*\n") == others  # its first line matches
    assert select(software, b"/software/*\n! b\n") == others  # and its second


# Pieces of dirtab names (as written in the file: \\ is a backslash, \* a star) for the comparison with glibc
# below, heavy in what makes bracket expressions malformed; and directory names to match them against.
PATTERN_PIECES = ["[", "]", "!", "^", "-", "a", "b", ".", ":", "*", "?", "\\\\", "\\*", "\\", "[:alpha:]",
                  "[:bogus:]", "[:", ":]", "[.", ".]", "[.a.]", "[.ab.]", "[=", "=]", "[=a=]"]
DIRECTORY_NAMES = ["a", "b", "ab", "x", "[", "]", "-", "!", "^", "\\", ":", "=", "*", "?", "a[", "[a", "a]", "]a",
                   "[]", "[[", "[!", "[^", "[:", "[.", "[=", "[a]", "a-", "a[b", "[:a", "a\\", "\\a", ".a", "..a"]


def glibc_glob(directory: Path, pattern: str) -> list[str] | None:
    """The paths below ``directory`` glibc's glob(3) finds for ``pattern``, with GLOB_PERIOD as cvmfs globs,
    without those that . or .. end, which cvmfs skips, or that go above ``directory``, which its directory
    functions refuse; None where the C library is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - glibc's own symbol
    except (OSError, AttributeError):
        return None

    class Glob(ctypes.Structure):
        _fields_ = [("pathc", ctypes.c_size_t), ("pathv", ctypes.POINTER(ctypes.c_char_p)),
                    ("offs", ctypes.c_size_t), ("flags", ctypes.c_int), ("functions", ctypes.c_void_p * 8)]

    found = Glob()
    top = os.fsencode(directory)
    status = libc.glob(top + b"/" + os.fsencode(pattern), 1 << 7, None, ctypes.byref(found))
    count = found.pathc if status == 0 else 0
    paths = {os.fsdecode(found.pathv[n][len(top):]).replace("//", "/") for n in range(count)}
    libc.globfree(ctypes.byref(found))
    return sorted(path for path in paths if not path.endswith(("/.", "/..")) and not path.startswith("/../"))


def test_malformed_bracket_expressions_match_as_glibc_globs_them(tmp_path: Path) -> None:
    """Names written with every piece of a bracket expression, many of them malformed (unclosed, with a
    [= or [. that is not closed, a range to the pattern's end, a \\ at the end), select the directories glibc's
    glob(3) finds with the glob pattern cvmfs makes of them, in the C locale cvmfs_server matches in: as the
    last name, and as a name on the way down."""
    for name in DIRECTORY_NAMES:
        (tmp_path / name / "x").mkdir(parents=True)
    tree = scan(str(tmp_path))
    rng = random.Random(20261128)
    texts = {"".join(pieces) for length in (1, 2) for pieces in itertools.product(PATTERN_PIECES, repeat=length)}
    texts |= {"".join(rng.choices(PATTERN_PIECES, k=rng.randint(3, 7))) for _ in range(2000)}
    previous = locale.setlocale(locale.LC_ALL)
    locale.setlocale(locale.LC_ALL, "C")
    try:
        if glibc_glob(tmp_path, "a") is None:
            pytest.skip("the C library is not glibc")
        differ = {}
        for text, below in itertools.product(sorted(texts), ("", "/x")):
            try:
                rule = Dirtab.parse(f"/{text}{below}\n".encode(), "dirtab").rules[0]
            except ConfigError:
                continue  # refused as cvmfs refuses it: an escape of another character, an empty name
            ours = sorted(path for path, _ in rule.glob(tree))
            theirs = glibc_glob(tmp_path, _glob_string(rule.elements[0]) + below)
            if ours != theirs:
                differ[text + below] = (ours, theirs)
    finally:
        locale.setlocale(locale.LC_ALL, previous)
    assert differ == {}
