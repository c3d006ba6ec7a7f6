"""`ucernvm mount`: a real FUSE mount of published snapshots, served by real HTTP servers."""

from __future__ import annotations

import calendar
import errno
import hashlib
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import daemon_statistics, fuse_unusable, run_cli, snapshot_tree
from squid import Squid, squid  # noqa: F401  (fixture)
from test_cache import fill
from test_publish import BIG, FQRN, make_tree, open_repo, publish
from test_virtual_dir import publish_tags
from ucernvm.cli import main
from ucernvm.client.cache import ABANDONED_AFTER
from ucernvm.client.fuse.kernel import mounted_file_system
from ucernvm.client.repository import Repository
from ucernvm.client.sources import DirectorySource
from ucernvm.cvmfs.hashing import ObjectType
from ucernvm.cvmfs.trust import load_master_keys
from ucernvm.errors import VerificationError
from ucernvm.server import StratumServer


pytestmark = pytest.mark.skipif(fuse_unusable() is not None, reason=str(fuse_unusable()))

DEAD_SERVER = "http://127.0.0.1:9/cvmfs/test.cern.ch"  # the discard port: nothing listens on it
DEAD_PROXY = "http://127.0.0.1:9"


class Mounts:
    """Mount points created by a test; all unmounted at the end, whatever happened."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.points: list[Path] = []

    def mount(self, source: str, keys: Path, cache: Path, *extra: str, check: bool = True) -> tuple[Path, subprocess.CompletedProcess[bytes]]:
        point = self.base / f"mnt{len(self.points)}"
        point.mkdir()
        self.points.append(point)
        result = run_cli("mount", source, point, "--name", FQRN, "--key", keys, "--cache", cache, *extra, check=check)
        return point, result

    def unmount_all(self) -> None:
        for point in self.points:
            subprocess.run(["umount", "-l", str(point)], capture_output=True)


@pytest.fixture
def mounts(tmp_path: Path) -> Iterator[Mounts]:
    mounts = Mounts(tmp_path)
    yield mounts
    mounts.unmount_all()


def publish_tree(tmp_path: Path, keys_dir: Path, **options) -> tuple[Path, Path]:  # type: ignore[no-untyped-def]
    """The test tree (without variant symlinks, which the client expands), published: (source, stratum)."""
    source, stratum = tmp_path / "src", tmp_path / "stratum"
    make_tree(source)
    os.unlink(source / "etc" / "variant")
    publish(source, stratum / FQRN, keys_dir, **options)
    return source, stratum


@pytest.fixture
def published(tmp_path: Path, keys_dir: Path) -> Iterator[tuple[Path, Path, StratumServer]]:
    """A published tree and a server for it."""
    source, stratum = publish_tree(tmp_path, keys_dir, tag="v1")
    with StratumServer(stratum) as server:
        yield source, stratum, server


def read_tree(root: Path) -> dict[str, tuple]:
    return snapshot_tree(root)


@pytest.fixture
def tagged(tmp_path: Path, keys_dir: Path) -> Iterator[tuple[Path, dict[str, dict[str, tuple]], StratumServer]]:
    """Tags v1, v2 and v3 published with the virtual directory (test_virtual_dir.publish_tags), served."""
    repo, trees = publish_tags(tmp_path, keys_dir)
    with StratumServer(repo.parent) as server:
        yield repo, trees, server


def test_mount_through_a_dead_then_a_live_server_reads_everything(published, mounts, keys_dir, tmp_path) -> None:
    source, _, server = published
    point, result = mounts.mount(f"{DEAD_SERVER};{server.url}/cvmfs/{FQRN}", keys_dir, tmp_path / "cache")
    assert b"mounted test.cern.ch revision 1" in result.stdout
    assert read_tree(point) == snapshot_tree(source)
    hard = [os.stat(point / "etc" / f"hard_{name}") for name in "abc"]
    assert len({st.st_ino for st in hard}) == 1 and hard[0].st_nlink == 3
    assert os.getxattr(point / "etc" / "hostname", "user.origin") == b"test suite"
    assert os.getxattr(point, "user.root_hash").decode() == run_cli(
        "repo", "verify", server.url + f"/cvmfs/{FQRN}", "--key", keys_dir, check=True
    ).stdout.decode().split("root catalog:")[1].split()[0]
    assert os.getxattr(point, "user.fqrn") == FQRN.encode()
    assert os.listxattr(point / "etc" / "hostname") == ["user.origin"]  # informational ones are not listed
    with pytest.raises(OSError) as refused:
        (point / "etc" / "new").write_text("x")
    assert refused.value.errno == errno.EROFS


def test_monitoring_attributes_report_the_mount_in_cvmfs_terms(published, mounts, keys_dir, tmp_path) -> None:
    """The attributes cvmfs_config stat and site probes read: loaded catalogs, downloads, bytes and
    speed, cache hit rate, timeouts, uptime and expiry."""
    source, _, server = published
    url, cache = f"{server.url}/cvmfs/{FQRN}", tmp_path / "cache"
    point, _ = mounts.mount(url, keys_dir, cache, "-o", "CVMFS_TIMEOUT=7", "-o", "CVMFS_TIMEOUT_DIRECT=9")

    def attribute(mountpoint: Path, name: str) -> str:
        return os.getxattr(mountpoint, name).decode()

    at_mount = int(attribute(point, "user.ndownload"))  # whitelist, manifest, certificate, root catalog
    assert at_mount >= 4 and attribute(point, "user.nclg") == "1"
    assert read_tree(point) == snapshot_tree(source)
    assert int(attribute(point, "user.ndownload")) > at_mount
    assert attribute(point, "user.nclg") == "3"  # with /data/sub and /data/sub/deep, loaded by the walk
    transfers = daemon_statistics(point, cache)["transfer"]
    assert attribute(point, "user.rx") == str(transfers["bytes"] // 1024)
    assert int(attribute(point, "user.speed")) == int(transfers["bytes"] / 1024 / transfers["seconds"])
    assert float(attribute(point, "user.hitrate")) < 100  # every object came from the server
    assert (attribute(point, "user.timeout"), attribute(point, "user.timeout_direct")) == ("7", "9")
    assert attribute(point, "user.uptime") == "0"
    assert attribute(point, "user.expires") == "never (fixed root catalog)"
    # Files the daemon opened for its readers: at most one per open(2), fewer where the kernel opens
    # without asking (zero-message open: an inode once, an empty file never); held while in use.
    files = [path for path in source.rglob("*") if path.is_file() and not path.is_symlink()]
    opened, held = int(attribute(point, "user.nopen")), int(attribute(point, "user.usedfd"))
    assert 0 < opened <= len(files) and 0 <= held <= opened
    assert int(attribute(point, "user.maxfd")) >= 1024 and attribute(point, "user.timestamp_last_ioerr") == "0"
    cached = sum(path.stat().st_size for path in cache.glob("??/*"))
    assert int(attribute(point, "user.cache_use")) >= cached // 1024  # counted at the mount, then each download
    assert attribute(point, "user.cache_max") == str(4000 * 1024)  # --quota's default, 4000 MiB
    assert attribute(point, "user.ncleanup24") == "0"

    header, row = run_cli("stat", point, check=True).stdout.decode().splitlines()  # as cvmfs_config stat
    state = dict(zip(header.split(), row.split(), strict=True))
    assert (state["FQRN"], state["REVISION"], state["EXPIRES(M)"], state["NOCATALOGS"]) == (FQRN, "1", "never", "3")
    assert state["PID"] == attribute(point, "user.pid") and int(state["MEM(K)"]) > 0
    assert (state["HOST"], state["PROXY"], state["ONLINE"]) == (url, "DIRECT", "1")
    assert state["RX(K)"] == attribute(point, "user.rx") and state["NOIOERR"] == "0"
    assert (state["NOFDUSE"], state["NOOPEN"]) == (str(held), str(opened))
    assert state["CACHEMAX(K)"] == attribute(point, "user.cache_max")
    refused = run_cli("stat", tmp_path)
    assert refused.returncode == 2 and f"{tmp_path} is not mounted by `ucernvm mount`" in refused.stderr.decode()
    run_cli("umount", point, check=True)

    again, _ = mounts.mount(url, keys_dir, cache)
    assert read_tree(again) == snapshot_tree(source)
    assert attribute(again, "user.hitrate") == "100.000"  # every object from the cache
    assert attribute(again, "user.timeout_direct") == "10"  # cvmfs's default


def test_cvmfs_attributes_name_the_servers_catalogs_chunks_and_cached_copies(published, mounts, keys_dir, tmp_path) -> None:
    """host_list, logbuffer, lhash, chunk_list, catalog_counters and repo_counters, in cvmfs's formats."""
    source, stratum, server = published
    live = f"{server.url}/cvmfs/{FQRN}"
    point, _ = mounts.mount(f"{DEAD_SERVER};{live}", keys_dir, tmp_path / "cache")

    def attribute(path: str, name: str) -> str:
        return os.getxattr(point / path, name).decode()

    # The master keys the mount verifies with: every *.pub of --key's directory, as PEM.
    assert attribute("", "user.pubkeys") == "".join(path.read_text() for path in sorted(keys_dir.glob("*.pub")))
    assert attribute("", "user.repo_metainfo") == "metainfo not available"  # published without any
    assert attribute("", "user.inode_max") == "1"  # the root's, until its entries are numbered
    listed = os.listdir(point)
    assert int(attribute("", "user.inode_max")) == 1 + len(listed)

    # The dead server failed first: the live one is in use, the dead one is next in turn; the switch was logged.
    assert attribute("", "user.host_list") == f"{live};{DEAD_SERVER}"
    log = attribute("", "user.logbuffer")
    assert re.match(r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\] ", log)
    assert f"switching server from {DEAD_SERVER} to {live}" in log
    switch = f"ucernvm mount: warning: switching server from {DEAD_SERVER} to {live}"
    assert (tmp_path / "cache" / "mount.log").read_text().count(switch) == 1  # said before the fork, kept there

    # lhash hashes the cached copy anew: the inflated bytes, not the stored object user.hash names.
    hostname = "etc/hostname"
    assert attribute(hostname, "user.lhash") == "Not in cache"
    assert (point / hostname).read_bytes() == b"cernvm\n"
    assert attribute(hostname, "user.lhash") == hashlib.sha1(b"cernvm\n").hexdigest() != attribute(hostname, "user.hash")
    assert attribute(hostname, "user.chunk_list") == f"hash,offset,size\n{attribute(hostname, 'user.hash')},0,7\n"
    assert (attribute(hostname, "user.external_file"), attribute(hostname, "user.direct_io")) == ("0", "0")

    # A chunked file's list covers it, and each chunk's object inflates to that piece of the file.
    header, *rows = attribute("data/big.bin", "user.chunk_list").splitlines()
    chunks = [(digest, int(offset), int(size)) for digest, offset, size in (row.split(",") for row in rows)]
    assert header == "hash,offset,size" and len(chunks) == int(attribute("data/big.bin", "user.chunks")) > 1
    assert [offset for _, offset, _ in chunks] == [sum(size for *_, size in chunks[:i]) for i in range(len(chunks))]
    big = (source / "data" / "big.bin").read_bytes()
    assert sum(size for *_, size in chunks) == len(big) == BIG
    for digest, offset, size in chunks:
        stored = (stratum / FQRN / "data" / digest[:2] / f"{digest[2:]}P").read_bytes()
        assert zlib.decompress(stored) == big[offset:offset + size]

    # Counters: the whole tree's from the root catalog, a nested catalog's own for what it holds.
    entries = [path for path in source.rglob("*")]
    regular = sum(1 for path in entries if path.is_file() and not path.is_symlink())
    symlinks = sum(1 for path in entries if path.is_symlink())
    totals = dict(line.split(",") for line in attribute("", "user.repo_counters").splitlines())
    assert list(totals) == sorted(totals) and (totals["regular"], totals["symlink"]) == (str(regular), str(symlinks))
    assert (totals["nested"], totals["chunked"], totals["chunks"]) == ("2", "1", str(len(chunks)))
    stats = os.statvfs(point)  # statfs counts the same tree's entries
    assert stats.f_files == sum(int(totals[kind]) for kind in ("regular", "dir", "symlink", "special"))
    assert int(totals["file_size"]) >= len(big)
    root_lines = attribute("etc", "user.catalog_counters").splitlines()
    assert root_lines[:2] == [f"catalog_hash: {attribute('', 'user.root_hash')}", "catalog_mountpoint: "]
    assert dict(line.split(",") for line in root_lines[2:]) == totals
    deep = attribute("data/sub/deep/leaf", "user.catalog_counters").splitlines()
    assert deep[0] != root_lines[0] and deep[1] == "catalog_mountpoint: /data/sub/deep"
    assert dict(line.split(",") for line in deep[2:])["regular"] == "2"  # leaf and .cvmfscatalog


@pytest.mark.parametrize("live", ["squid", "DIRECT"])
def test_a_proxy_failover_is_logged_as_a_server_switch_is(published, mounts, keys_dir, tmp_path, squid: Squid,
                                                          live: str) -> None:
    """At the mount on the command's stderr, later in mount.log, and in user.logbuffer throughout."""
    _, _, server = published
    proxy = squid.url if live == "squid" else live
    cache = tmp_path / "cache"
    point, result = mounts.mount(f"{server.url}/cvmfs/{FQRN}", keys_dir, cache, "--proxy", f"{DEAD_PROXY};{proxy}",
                                 "-o", "CVMFS_PROXY_RESET_AFTER=1", "-o", "CVMFS_MAX_RETRIES=0")
    failover = f"switching proxy from {DEAD_PROXY} to {proxy} (cannot connect: Connection refused for "
    assert failover in result.stderr.decode()
    time.sleep(1.1)  # the dead proxy is tried again: it fails again, now in the daemon
    assert (point / "etc" / "hostname").read_bytes() == b"cernvm\n"
    daemon_log = (cache / "mount.log").read_text()
    assert f"switching proxy from {proxy} to {DEAD_PROXY} (reset after 1 s)" in daemon_log
    assert daemon_log.count(failover) == 2  # the mount's, written there at the fork, and the daemon's
    assert os.getxattr(point, "user.logbuffer").decode().count(failover) == 2
    switches = [line for text in (daemon_log, result.stderr.decode()) for line in text.splitlines() if "switching" in line]
    assert len(switches) == 4 and all("ucernvm mount: warning: switching proxy from" in line for line in switches)
    assert (squid.access_log().count(f"{server.url}/cvmfs/{FQRN}/") > 0) == (live == "squid")


def test_statfs_and_df_report_how_full_the_cache_is(published, mounts, keys_dir, tmp_path) -> None:
    """As cvmfs's: the quota is the size, the cached bytes are used, the rest is free; without a quota,
    the cached bytes are the size and nothing is free."""
    source, _, server = published
    url = f"{server.url}/cvmfs/{FQRN}"
    for quota, size in (("50", 50 << 20), ("0", None)):  # MiB, as cvmfs counts them
        cache = tmp_path / f"cache-{quota}"
        point, _ = mounts.mount(url, keys_dir, cache, "--quota", quota)
        assert read_tree(point) == snapshot_tree(source)
        # Mounted again, the cache is counted while nothing is downloaded (the nested catalogs fetched
        # ahead at a first mount may be counted twice, an overestimate that only cleans early).
        run_cli("umount", point, check=True)
        point, _ = mounts.mount(url, keys_dir, cache, "--quota", quota)
        _wait_for_the_cache_count(point)
        cached = sum(path.stat().st_size for path in cache.glob("??/*"))
        stats = os.statvfs(point)
        used = -(-cached // stats.f_frsize)
        blocks = used if size is None else size // stats.f_frsize
        assert (stats.f_blocks, stats.f_bfree, stats.f_bavail) == (blocks, blocks - used, blocks - used)
        assert BIG < cached < 50 << 20  # the whole tree, nothing evicted
        df = subprocess.run(["df", f"-B{stats.f_frsize}", "--output=size,used,avail", point],
                            capture_output=True, text=True, check=True).stdout.splitlines()[1]
        assert [int(value) for value in df.split()] == [blocks, used, blocks - used]


def test_statfs_reports_as_free_inodes_the_entries_of_catalogs_not_loaded(published, mounts, keys_dir,
                                                                          tmp_path) -> None:
    """As cvmfs's: every entry of the snapshot is an inode, those of the loaded catalogs are used."""
    source, _, server = published
    point, _ = mounts.mount(f"{server.url}/cvmfs/{FQRN}", keys_dir, tmp_path / "cache")
    stats = os.statvfs(point)
    assert 0 < stats.f_ffree == stats.f_favail < stats.f_files  # the root catalog only
    assert (point / "data" / "sub" / "file").read_bytes() == b"in a nested catalog\n"
    assert os.statvfs(point).f_ffree < stats.f_ffree  # data/sub's catalog loaded too
    assert read_tree(point) == snapshot_tree(source)
    stats = os.statvfs(point)
    assert (stats.f_ffree, stats.f_favail) == (0, 0)  # every catalog loaded


def _wait_for_the_cache_count(point: Path) -> None:
    """Until the daemon counted the cached bytes it found at the mount (user.cache_use is - before)."""
    deadline = time.monotonic() + 20
    while os.getxattr(point, "user.cache_use") == b"-":
        assert time.monotonic() < deadline, "the cache was never counted"
        time.sleep(0.05)


def test_the_repository_meta_info_is_read_through_the_mount(tmp_path, keys_dir, mounts) -> None:
    info = b'{"administrator": "Ada", "email": "ada@example.org"}'
    _, stratum = publish_tree(tmp_path, keys_dir, meta_info=info)
    with StratumServer(stratum) as server:
        point, _ = mounts.mount(f"{server.url}/cvmfs/{FQRN}", keys_dir, tmp_path / "cache")
        assert os.getxattr(point, "user.repo_metainfo") == info


def test_a_wrong_master_key_is_refused_with_a_hint_for_any_caller(published, mounts, keys_dir, tmp_path) -> None:
    """The hint names no option: a boot, whose keys are the image's, shows it too."""
    _, stratum, server = published
    point, refused = mounts.mount(f"{server.url}/cvmfs/{FQRN}", keys_dir / "other.cern.ch.pub", tmp_path / "cache",
                                  check=False)
    assert refused.returncode == 1 and mounted_file_system(str(point)) is None
    assert refused.stderr.decode().splitlines() == [
        "ucernvm: error: whitelist signature does not verify with the trusted master key(s)",
        f"ucernvm: hint: check that the trusted master keys include the repository's own ({FQRN}.pub)"]
    whitelist = stratum / FQRN / ".cvmfswhitelist"
    whitelist.write_bytes(whitelist.read_bytes().replace(b"\n--\n", b"\n--\nnot a hash", 1))
    with pytest.raises(VerificationError) as altered:  # signed by no key now, but that is not what went wrong
        Repository(DirectorySource(stratum / FQRN), FQRN, load_master_keys(keys_dir / f"{FQRN}.pub"))
    assert "malformed hash line" in altered.value.message and altered.value.hint == ""


def test_all_servers_gone_remount_from_cache(published, mounts, keys_dir, tmp_path) -> None:
    source, stratum, server = published
    cache = tmp_path / "cache"
    url = f"{server.url}/cvmfs/{FQRN}"
    point, _ = mounts.mount(url, keys_dir, cache)
    assert read_tree(point) == snapshot_tree(source)  # every object is now cached
    run_cli("umount", point, check=True)
    server.stop()
    shutil.rmtree(stratum)
    again, result = mounts.mount(f"{DEAD_SERVER};{url}", keys_dir, cache)
    assert b"offline" in result.stderr
    assert read_tree(again) == snapshot_tree(source)
    assert os.getxattr(again, "user.offline") == b"1"


def test_the_quota_tag_and_root_hash_of_the_configuration_apply(tagged, mounts, keys_dir, tmp_path) -> None:
    """CVMFS_QUOTA_LIMIT (MiB, -1: none), CVMFS_REPOSITORY_TAG and CVMFS_ROOT_HASH given as -o or in a
    --config file are what the mount uses; its own options (--quota, --tag, --root-hash) come first."""
    repo, trees, server = tagged
    url = f"{server.url}/cvmfs/{FQRN}"
    config = tmp_path / "site.conf"
    config.write_text("CVMFS_HTTP_PROXY=DIRECT\nCVMFS_QUOTA_LIMIT=7\nCVMFS_REPOSITORY_TAG=v1\n")
    caches = iter(tmp_path / f"cache{number}" for number in range(4))  # the mounts run side by side
    point, result = mounts.mount(url, keys_dir, next(caches), "--config", config)
    assert os.getxattr(point, "user.cache_max") == str(7 * 1024).encode()
    assert os.getxattr(point, "user.tag") == b"v1" and b"revision 1 " in result.stdout
    point, _ = mounts.mount(url, keys_dir, next(caches), "--config", config, "-o", "CVMFS_QUOTA_LIMIT=-1",
                            "--tag", "v2")
    assert os.getxattr(point, "user.cache_max") == b"-1" and os.getxattr(point, "user.tag") == b"v2"
    point, _ = mounts.mount(url, keys_dir, next(caches), "--config", config, "--quota", "9")
    assert os.getxattr(point, "user.cache_max") == str(9 * 1024).encode()
    v2 = os.getxattr(mounts.points[1], "user.root_hash").decode()
    point, result = mounts.mount(url, keys_dir, next(caches), "-o", f"CVMFS_ROOT_HASH={v2}")
    assert os.getxattr(point, "user.root_hash").decode() == v2


@pytest.mark.parametrize(("setting", "said"), [
    ("CVMFS_HTTP_PROXY=\n", "empty or not set in the --config files"),
    ("CVMFS_TIMEOUT=3\n", "empty or not set in the --config files"), ("-o", "empty"), ("--proxy", "empty"),
])
def test_a_mount_configured_without_a_proxy_is_refused_as_cvmfs_refuses_it(published, mounts, keys_dir, tmp_path,
                                                                           setting: str, said: str) -> None:
    """Set empty, or left out of the files read, CVMFS_HTTP_PROXY names no proxy: no DIRECT past the site's
    proxies, as cvmfs does not mount then; DIRECT said so still mounts."""
    source, _, server = published
    url, config = f"{server.url}/cvmfs/{FQRN}", tmp_path / "site.conf"
    config.write_text(setting)
    given = {"-o": ("-o", "CVMFS_HTTP_PROXY="), "--proxy": ("--proxy", "")}.get(setting, ("--config", str(config)))
    point, refused = mounts.mount(url, keys_dir, tmp_path / "cache", *given, check=False)
    assert refused.returncode == 2 and mounted_file_system(str(point)) is None  # a configuration error
    assert refused.stderr.decode().startswith(f"ucernvm: error: no proxy is configured: CVMFS_HTTP_PROXY is {said}\n"
                                              "ucernvm: hint: set CVMFS_HTTP_PROXY=DIRECT (or --proxy DIRECT)")
    point, _ = mounts.mount(url, keys_dir, tmp_path / "cache", *given, "--proxy", "DIRECT")
    assert (point / "etc" / "hostname").read_bytes() == (source / "etc" / "hostname").read_bytes()


def test_the_owner_maps_of_the_configuration_give_the_owners_stat_shows(published, mounts, keys_dir,
                                                                        tmp_path) -> None:
    """CVMFS_UID_MAP and CVMFS_GID_MAP as cvmfs reads them: 'FROM TO' lines, '#' comments, '*' for every other ID;
    stat, a listing's attributes (find) and the kernel's checks see the mapped owners."""
    source, _, server = published
    url = f"{server.url}/cvmfs/{FQRN}"
    uid_map, gid_map = tmp_path / "uid.map", tmp_path / "gid.map"
    uid_map.write_text("# the publisher's root\n0 1234\n\n  7   8  \n")
    gid_map.write_text("5 6\n* 4321\n")
    point, _ = mounts.mount(url, keys_dir, tmp_path / "cache", "--proxy", "DIRECT", "-o", f"CVMFS_UID_MAP={uid_map}",
                            "-o", f"CVMFS_GID_MAP={gid_map}")
    assert {(st.st_uid, st.st_gid) for st in (os.stat(point), os.lstat(point / "etc" / "hostname"))} == {(1234, 4321)}
    listed = subprocess.run(["find", str(point), "-printf", "%U:%G\n"], capture_output=True, check=True).stdout
    assert set(listed.split()) == {b"1234:4321"} and len(listed.split()) == len(list(source.rglob("*"))) + 1


@pytest.mark.parametrize(("text", "line"), [("0 1\n1 2 3\n", 2), ("root 5\n", 1), ("5 -1\n", 1), ("0 4294967296\n", 1)])
def test_a_malformed_owner_map_is_refused_naming_its_file_and_line(published, mounts, keys_dir, tmp_path, text: str,
                                                                    line: int) -> None:
    _, _, server = published
    owner_map = tmp_path / "uid.map"
    owner_map.write_text(text)
    point, refused = mounts.mount(f"{server.url}/cvmfs/{FQRN}", keys_dir, tmp_path / "cache", "--proxy", "DIRECT",
                                  "-o", f"CVMFS_UID_MAP={owner_map}", check=False)
    assert refused.returncode == 2 and mounted_file_system(str(point)) is None
    assert refused.stderr.decode().startswith(f"ucernvm: error: {owner_map}:{line}: ")
    point, refused = mounts.mount(f"{server.url}/cvmfs/{FQRN}", keys_dir, tmp_path / "cache", "--proxy", "DIRECT",
                                  "-o", f"CVMFS_GID_MAP={tmp_path / 'none'}", check=False)
    assert refused.returncode == 2 and f"owner map {tmp_path / 'none'} cannot be read" in refused.stderr.decode()


def test_variant_symlinks_are_expanded_and_sized_as_their_target(tmp_path, keys_dir, mounts, monkeypatch) -> None:
    """A symlink's size is the length of what readlink returns (as cvmfs's), also once ``$(VAR)`` was
    expanded from the daemon's environment: programs size their buffer from lstat."""
    source = tmp_path / "src"
    make_tree(source)  # etc/variant -> $(CVMFS_ARCH)/lib
    (source / "etc" / "unset").symlink_to("$(UCERNVM_TEST_UNSET:-/opt/default)/bin")
    publish(source, tmp_path / "stratum" / FQRN, keys_dir)
    monkeypatch.setenv("CVMFS_ARCH", "a-rather-long-architecture-name")  # inherited by the daemon
    monkeypatch.delenv("UCERNVM_TEST_UNSET", raising=False)
    with StratumServer(tmp_path / "stratum") as server:
        point, _ = mounts.mount(f"{server.url}/cvmfs/{FQRN}", keys_dir, tmp_path / "cache")
        expected = {"variant": "a-rather-long-architecture-name/lib", "unset": "/opt/default/bin",
                    "motd": "hostname"}
        for name, target in expected.items():
            link = point / "etc" / name
            assert os.readlink(link) == target
            assert os.lstat(link).st_size == len(target), name
        listed = {entry.name: entry.stat(follow_symlinks=False).st_size for entry in os.scandir(point / "etc")}
        assert listed["variant"] == len(expected["variant"])


def test_a_cache_serves_one_mount_at_a_time(published, mounts, keys_dir, tmp_path) -> None:
    """As a cvmfs2 instance locks its cache: a second mount with it is refused, naming the first, which
    serves on; the lock goes with the first one's daemon, unmounted or killed."""
    source, _, server = published
    url, cache = f"{server.url}/cvmfs/{FQRN}", tmp_path / "cache"
    first, _ = mounts.mount(url, keys_dir, cache)
    second, refused = mounts.mount(url, keys_dir, cache, check=False)
    assert refused.returncode == 1 and mounted_file_system(str(second)) is None
    assert f"error: the cache {cache} is in use by the mount on {first}\n" in refused.stderr.decode()
    assert f"hint: unmount it first (ucernvm umount {first}), or give this mount a cache directory of its own " \
           "(--cache)" in refused.stderr.decode()
    assert read_tree(first) == snapshot_tree(source)
    run_cli("umount", first, check=True)
    third, _ = mounts.mount(url, keys_dir, cache)  # as soon as the first one's daemon has ended
    pid = int(os.getxattr(third, "user.pid"))
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    fourth, _ = mounts.mount(url, keys_dir, cache)  # beside the killed one's dead mount
    assert read_tree(fourth) == snapshot_tree(source)


def _alive(pid: int) -> bool:
    """Whether the process runs (a zombie has closed its files: its locks are gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_older_manifest_after_a_newer_one_keeps_the_newer_revision(tmp_path, keys_dir, mounts) -> None:
    """As cvmfs: a server that offers an older revision than the cache has seen (a stale mirror, a
    replayed manifest) never rolls the mount back; the newest revision seen stays in use, from the cache's
    verified copies, and its objects come from whichever server has them."""
    source = tmp_path / "src"
    make_tree(source)
    repo = tmp_path / "stratum" / FQRN
    publish(source, repo, keys_dir)
    mirror = tmp_path / "mirror"
    shutil.copytree(repo.parent, mirror)  # a Stratum 1 that stays at revision 1
    (source / "etc" / "hostname").write_text("newer\n")
    (source / "etc" / "added").write_text("only in revision 2\n")
    publish(source, repo, keys_dir)
    cache = tmp_path / "cache"
    with StratumServer(tmp_path / "stratum") as server, StratumServer(mirror) as stale:
        url, stale_url = f"{server.url}/cvmfs/{FQRN}", f"{stale.url}/cvmfs/{FQRN}"
        point, _ = mounts.mount(url, keys_dir, cache)
        assert (point / "etc" / "hostname").read_text() == "newer\n"
        run_cli("umount", point, check=True)
        again, result = mounts.mount(f"{stale_url};{url}", keys_dir, cache)
        assert b"revision 2" in result.stdout
        older = re.search(r"revision 1 \(published \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\), older than revision 2 "
                          r"\(published \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\)", result.stderr.decode())
        assert older is not None and older[0] in os.getxattr(again, "user.logbuffer").decode()
        assert (cache / "mount.log").read_text().count(older[0]) == 1
        assert (again / "etc" / "hostname").read_text() == "newer\n"
        assert (again / "etc" / "added").read_text() == "only in revision 2\n"  # from the server that has it
        assert os.getxattr(again, "user.revision") == b"2"
        _, fresh = mounts.mount(stale_url, keys_dir, tmp_path / "fresh-cache")  # a cache that never saw revision 2
        assert b"revision 1" in fresh.stdout


def test_corrupted_everywhere_is_eio_never_wrong_bytes(published, mounts, keys_dir, tmp_path) -> None:
    source, stratum, server = published
    from ucernvm.client.repository import Repository
    from ucernvm.client.sources import DirectorySource
    from ucernvm.cvmfs.trust import load_master_keys

    repository = Repository(DirectorySource(stratum / FQRN), FQRN, load_master_keys(keys_dir))
    entry = repository.entry("/etc/hostname")
    stored = stratum / FQRN / entry.content_hash.object_path()
    stored.write_bytes(stored.read_bytes()[::-1])  # tampered on the only server
    point, _ = mounts.mount(f"{server.url}/cvmfs/{FQRN}", keys_dir, tmp_path / "cache")
    with pytest.raises(OSError) as failed:
        (point / "etc" / "hostname").read_bytes()
    assert failed.value.errno == errno.EIO
    assert (point / "etc" / "motd").is_symlink()  # the rest of the tree is fine
    assert (point / "bin" / "hello").read_bytes() == (source / "bin" / "hello").read_bytes()
    # Counted per failed request: the kernel retries a read whose readahead failed.
    assert int(os.getxattr(point, "user.nioerr")) >= 1
    assert time.time() - 60 < int(os.getxattr(point, "user.timestamp_last_ioerr")) <= time.time()


def test_every_snapshot_of_the_virtual_directory_reads_as_at_its_tag(tagged, mounts, keys_dir, tmp_path) -> None:
    """/.cvmfs is hidden but there; below /.cvmfs/snapshots/<tag> every file is the tag's, nested catalogs
    and chunked files too; a snapshot's attributes name the tag's catalogs and the mount's root."""
    repo, trees, server = tagged
    point, _ = mounts.mount(f"{server.url}/cvmfs/{FQRN}", keys_dir, tmp_path / "cache")
    assert ".cvmfs" not in os.listdir(point) and sorted(os.listdir(point / ".cvmfs")) == [".cvmfscatalog", "snapshots"]
    assert sorted(os.listdir(point / ".cvmfs" / "snapshots")) == ["v1", "v2"]
    for tag in ("v1", "v2"):
        assert read_tree(point / ".cvmfs" / "snapshots" / tag) == trees[tag], tag
    assert read_tree(point) == trees["v3"]

    def attribute(path: str, name: str) -> str:
        return os.getxattr(point / path, name).decode()

    v1 = open_repo(repo, keys_dir, tag="v1")
    top = attribute(".cvmfs/snapshots/v1/etc", "user.catalog_counters").splitlines()
    assert top[:2] == [f"catalog_hash: {v1.root_hash.hex}", "catalog_mountpoint: /.cvmfs/snapshots/v1"]
    assert dict(line.split(",") for line in top[2:]) == {
        name: str(value) for name, value in v1.root_catalog.tree_counters().items()}
    nested = attribute(".cvmfs/snapshots/v1/data/sub/file", "user.catalog_counters").splitlines()
    assert nested[:2] == [f"catalog_hash: {v1.catalog_for('/data/sub').content_hash.hex}",
                          "catalog_mountpoint: /.cvmfs/snapshots/v1/data/sub"]
    # The mount's own snapshot, wherever it is asked.
    assert attribute(".cvmfs/snapshots/v1/etc", "user.root_hash") == open_repo(repo, keys_dir).root_hash.hex
    assert attribute(".cvmfs/snapshots/v1/etc/hostname", "user.hash") == v1.entry("/etc/hostname").content_hash.hex


def test_a_snapshot_whose_root_catalog_does_not_match_its_bind_mountpoint_is_eio(tagged, mounts, keys_dir,
                                                                                 tmp_path) -> None:
    repo, trees, server = tagged
    repository = open_repo(repo, keys_dir)
    v1, v2 = (repository.find_tag(tag).root_hash.object_path(ObjectType.CATALOG) for tag in ("v1", "v2"))
    (repo / v1).write_bytes((repo / v2).read_bytes())  # another snapshot's catalog, under v1's name
    point, _ = mounts.mount(f"{server.url}/cvmfs/{FQRN}", keys_dir, tmp_path / "cache")
    for reading in (lambda: os.listdir(point / ".cvmfs" / "snapshots" / "v1"),
                    lambda: (point / ".cvmfs" / "snapshots" / "v1" / "etc" / "hostname").read_bytes()):
        with pytest.raises(OSError) as failed:
            reading()
        assert failed.value.errno == errno.EIO
    assert read_tree(point / ".cvmfs" / "snapshots" / "v2") == trees["v2"]


def test_a_download_cut_off_by_a_killed_daemon_is_removed_by_the_next_mount(published, mounts, keys_dir, tmp_path) -> None:
    """An object's file sits in the cache's txn/ while it arrives; a daemon killed meanwhile (a VM powered
    off) leaves it there, and the next mount of the cache removes it and reads the file whole."""
    source, stratum, server = published
    from faults import Fault, FaultServer
    from ucernvm.client.repository import Repository
    from ucernvm.client.sources import DirectorySource
    from ucernvm.cvmfs.trust import load_master_keys

    entry = Repository(DirectorySource(stratum / FQRN), FQRN, load_master_keys(keys_dir)).entry("/bin/hello")
    cache, txn = tmp_path / "cache", tmp_path / "cache" / "txn"
    with FaultServer(stratum) as hanging:
        hanging.inject(entry.content_hash.object_path(), Fault.hang())
        point, _ = mounts.mount(f"{hanging.url}/cvmfs/{FQRN}", keys_dir, cache)
        daemon = int(os.getxattr(point, "user.pid"))
        reader = subprocess.Popen(["cat", str(point / "bin" / "hello")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not os.listdir(txn) and time.monotonic() < deadline:
            time.sleep(0.02)
        left = os.listdir(txn)
        assert left and left[0].split(".")[1] == str(daemon)  # the download under way: <object>.<pid>.<thread>
        os.kill(daemon, 9)
        reader.wait(10)
        subprocess.run(["umount", "-l", str(point)], check=True)
    assert os.listdir(txn) == left  # nothing removed it: the daemon was gone at once
    powered_off = time.time() - 2 * ABANDONED_AFTER  # the VM comes back a while later
    os.utime(txn / left[0], (powered_off, powered_off))

    again, _ = mounts.mount(f"{server.url}/cvmfs/{FQRN}", keys_dir, cache)
    deadline = time.monotonic() + 10
    while os.listdir(txn) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not os.listdir(txn)
    assert (again / "bin" / "hello").read_bytes() == (source / "bin" / "hello").read_bytes()


def test_tight_cache_quota_still_reads_every_file(published, mounts, keys_dir, tmp_path) -> None:
    source, _, server = published
    cache = tmp_path / "cache"
    # 1 MiB: far less than the 26 MB file and the rest of the tree.
    point, _ = mounts.mount(f"{server.url}/cvmfs/{FQRN}", keys_dir, cache, "--quota", "1")
    for _ in range(2):
        assert read_tree(point) == snapshot_tree(source)
        subprocess.run(["sh", "-c", "echo 3 > /proc/sys/vm/drop_caches"], check=False)
    cached = sum(path.stat().st_size for path in cache.glob("??/*"))
    assert cached < 20_000_000, cached
    # What the next mount needs with every server gone (catalogs, the certificate) outlived the evictions.
    url = f"{server.url}/cvmfs/{FQRN}"
    run_cli("umount", point, check=True)
    server.stop()
    again, result = mounts.mount(url, keys_dir, cache)
    assert b"offline" in result.stderr
    assert _listing(again) == _listing(source)


def test_many_parallel_readers(published, mounts, keys_dir, tmp_path) -> None:
    source, _, server = published
    point, _ = mounts.mount(f"{server.url}/cvmfs/{FQRN}", keys_dir, tmp_path / "cache")
    expected = (source / "data" / "big.bin").read_bytes()
    results: list[bool] = []

    def reader(offset: int) -> None:
        with open(point / "data" / "big.bin", "rb") as handle:
            handle.seek(offset)
            part = handle.read(3_000_000)
        results.append(part == expected[offset : offset + 3_000_000])

    threads = [threading.Thread(target=reader, args=(index * 1_700_000,)) for index in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [True] * 16


@pytest.mark.parametrize("plant", ["link", "fifo"])
def test_the_daemon_log_goes_neither_through_a_link_nor_into_a_fifo_left_in_its_place(published, mounts, keys_dir,
                                                                                    tmp_path, plant: str) -> None:
    """A boot's cache lies on the scratch disk, which the OS writes: the daemon serves, and writes its reports
    to no file of the loader's, whatever was left as mount.log."""
    source, _, server = published
    cache, outside = tmp_path / "cache", tmp_path / "outside"
    cache.mkdir()
    outside.write_bytes(b"")
    if plant == "link":
        (cache / "mount.log").symlink_to(outside)
    else:
        os.mkfifo(cache / "mount.log")
    point, result = mounts.mount(f"{server.url}/cvmfs/{FQRN}", keys_dir, cache)
    assert (point / "etc" / "hostname").read_bytes() == (source / "etc" / "hostname").read_bytes()
    os.kill(int(os.getxattr(point, "user.pid")), signal.SIGUSR1)  # the daemon reports its statistics in its log
    found = {"link": "a symbolic link", "fifo": "a FIFO"}[plant]
    warning = (f"the daemon's log {cache / 'mount.log'} is {found}, no log file: left alone, the daemon's reports go "
               "to /dev/null")
    assert f"ucernvm fuse: warning: {warning}\n" in result.stderr.decode()
    assert warning in os.getxattr(point, "user.logbuffer").decode()
    run_cli("umount", point, check=True)
    assert outside.read_bytes() == b""


def test_mount_at_a_tag_and_umount_ends_the_daemon(published, mounts, keys_dir, tmp_path) -> None:
    source, stratum, server = published
    (source / "etc" / "hostname").write_text("second\n")
    publish(source, stratum / FQRN, keys_dir, tag="v2")
    point, _ = mounts.mount(f"{server.url}/cvmfs/{FQRN}", keys_dir, tmp_path / "cache", "--tag", "v1")
    assert (point / "etc" / "hostname").read_text() == "cernvm\n"
    assert os.getxattr(point, "user.tag") == b"v1"
    pid = int(os.getxattr(point, "user.pid"))
    (tmp_path / "link").symlink_to(point)
    assert main(["umount", str(tmp_path / "link")]) == 0  # in this process: looked at the moment it returns
    assert not _alive(pid), "the daemon still runs after umount returned"  # its cache is free for the next mount
    assert not os.path.ismount(point)


def test_a_mount_with_relative_paths_serves_from_the_cache_it_named(published, keys_dir, tmp_path) -> None:
    """The daemon leaves the directory it was started in: a relative --cache and mount point still name
    the directories they named there."""
    source, _, server = published
    (tmp_path / "mnt").mkdir()
    try:
        result = subprocess.run([sys.executable, "-m", "ucernvm", "mount", f"{server.url}/cvmfs/{FQRN}", "mnt",
                                 "--name", FQRN, "--key", str(keys_dir), "--cache", "cache"],
                                cwd=tmp_path, capture_output=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert (tmp_path / "mnt" / "etc" / "hostname").read_bytes() == (source / "etc" / "hostname").read_bytes()
        assert (tmp_path / "cache" / "mount.log").exists() and any((tmp_path / "cache").glob("??/*"))
        run_cli("umount", tmp_path / "mnt", check=True)
    finally:
        subprocess.run(["umount", "-l", str(tmp_path / "mnt")], capture_output=True)


def test_a_local_repository_named_by_a_relative_path_is_read_from_there(published, keys_dir, tmp_path) -> None:
    """The daemon reads every object of a local SOURCE after leaving the directory it was started in."""
    source, _, _ = published
    (tmp_path / "mnt").mkdir()
    try:
        result = subprocess.run([sys.executable, "-m", "ucernvm", "mount", f"stratum/{FQRN}/", "mnt",
                                 "--key", str(keys_dir), "--cache", "cache"],
                                cwd=tmp_path, capture_output=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert (tmp_path / "mnt" / "etc" / "hostname").read_bytes() == (source / "etc" / "hostname").read_bytes()
        assert os.getxattr(tmp_path / "mnt", "user.host") == str(tmp_path / "stratum" / FQRN).encode()
        run_cli("umount", tmp_path / "mnt", check=True)
    finally:
        subprocess.run(["umount", "-l", str(tmp_path / "mnt")], capture_output=True)


def test_a_listing_holds_dot_and_dotdot_also_through_an_overlay(published, mounts, keys_dir, tmp_path) -> None:
    """As on cvmfs and a local disk: a booted OS sees the snapshot through overlayfs, which passes a lower
    directory's listing on as it is (`ls -a /usr/bin` there shows "." and ".." only if the mount lists them)."""
    _, _, server = published
    point, _ = mounts.mount(f"{server.url}/cvmfs/{FQRN}", keys_dir, tmp_path / "cache")

    def listing(directory: Path) -> list[tuple[int, str]]:
        lines = subprocess.run(["ls", "-a1i", str(directory)], capture_output=True, text=True, check=True).stdout
        return [(int(ino), name) for ino, name in (line.split(None, 1) for line in lines.splitlines())]

    (dot, dotdot, *rest) = listing(point / "etc")
    assert dot == (os.stat(point / "etc").st_ino, ".") and dotdot == (os.stat(point).st_ino, "..")
    assert sorted(name for _, name in rest) == sorted(os.listdir(point / "etc"))
    layers = {name: tmp_path / name for name in ("upper", "work", "merged")}
    for directory in layers.values():
        directory.mkdir()
    options = f"lowerdir={point},upperdir={layers['upper']},workdir={layers['work']}"
    mounted = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(layers["merged"])],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"overlayfs cannot be mounted here: {mounted.stderr.decode().strip()}")
    try:
        assert [name for _, name in listing(layers["merged"] / "etc")][:2] == [".", ".."]
    finally:
        subprocess.run(["umount", str(layers["merged"])], check=True)


def test_umount_leaves_alone_what_is_not_a_mounted_snapshot(tmp_path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    result = run_cli("umount", plain)
    assert result.returncode == 1 and b"is not a mount point" in result.stderr
    other = tmp_path / "other"
    other.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(other)], check=True)
    try:
        result = run_cli("umount", other)
        assert result.returncode == 1 and b"holds a tmpfs file system" in result.stderr
        assert os.path.ismount(other)
    finally:
        subprocess.run(["umount", "-l", str(other)], capture_output=True)


def test_daemon_survives_its_cache_being_moved(published, mounts, keys_dir, tmp_path) -> None:
    """As after switch_root: the scratch disk holding the cache is moved to another mount point."""
    source, _, server = published
    scratch, moved = tmp_path / "scratch", tmp_path / "moved"
    scratch.mkdir()
    moved.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(scratch)], check=True)
    try:
        point, _ = mounts.mount(f"{server.url}/cvmfs/{FQRN}", keys_dir, scratch / "cache")
        subprocess.run(["mount", "--move", str(scratch), str(moved)], check=True)
        assert not (scratch / "cache").exists()
        # Nothing below /data was read yet: its nested catalog and objects are fetched and cached now.
        assert (point / "data" / "sub" / "deep" / "leaf").read_bytes() == (source / "data" / "sub" / "deep" / "leaf").read_bytes()
        assert (point / "data" / "big.bin").read_bytes() == (source / "data" / "big.bin").read_bytes()
        assert any((moved / "cache").glob("??/*"))
    finally:
        run_cli("umount", "--lazy", point)
        subprocess.run(["umount", "-l", str(moved)], capture_output=True)
        subprocess.run(["umount", "-l", str(scratch)], capture_output=True)


def test_a_full_cache_disk_lists_everything_and_reads_again_once_there_is_room(published, mounts, keys_dir,
                                                                               tmp_path) -> None:
    """The scratch disk filled up by the writable layer: the mount still comes up and lists the whole
    snapshot (the verified catalogs are read in memory); a file whose bytes cannot be cached fails with
    EIO, never with other bytes, and reads as soon as there is room again, without a remount."""
    source, _, server = published
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(scratch)], check=True)
    try:
        (scratch / "cache").mkdir()
        fill(scratch)
        point, result = mounts.mount(f"{server.url}/cvmfs/{FQRN}", keys_dir, scratch / "cache")
        assert b"is full" in result.stderr + result.stdout  # the mount says why it keeps no offline copy
        assert _listing(point) == _listing(source)
        leaf = Path("data", "sub", "deep", "leaf")
        with pytest.raises(OSError) as refused:
            (point / leaf).read_bytes()
        assert refused.value.errno == errno.EIO
        (scratch / "user-files").unlink()
        assert (point / leaf).read_bytes() == (source / leaf).read_bytes()
    finally:
        mounts.unmount_all()
        subprocess.run(["umount", "-l", str(scratch)], capture_output=True)


def _listing(root: Path) -> dict[str, int]:
    """Every path below root and its mode, without reading a file."""
    listing = {}
    for directory, subdirectories, files in os.walk(root):
        for name in subdirectories + files:
            path = os.path.join(directory, name)
            listing[os.path.relpath(path, root)] = os.lstat(path).st_mode
    return listing


def test_the_daemon_may_hold_many_descriptors(published, mounts, keys_dir, tmp_path) -> None:
    """Its per-inode handles keep descriptors open: the daemon raises its limit as cvmfs (CVMFS_NFILES)."""
    from ucernvm.client.filesystem import NFILES

    _, _, server = published
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 1024:
        pytest.skip(f"the hard limit of open files ({hard}) leaves nothing to raise")
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, soft), hard))  # the usual default, inherited
    try:
        point, _ = mounts.mount(f"{server.url}/cvmfs/{FQRN}", keys_dir, tmp_path / "cache")
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    pid = int(os.getxattr(point, "user.pid"))
    fields = next(line.split() for line in Path(f"/proc/{pid}/limits").read_text().splitlines()
                  if line.startswith("Max open files"))
    daemon_soft, daemon_hard = (float("inf") if value == "unlimited" else int(value) for value in fields[3:5])
    assert daemon_soft >= min(NFILES, daemon_hard) > 1024


def test_every_line_of_the_daemons_log_opens_with_the_time_it_was_written(published, mounts, keys_dir,
                                                                         tmp_path) -> None:
    """In UTC, as cvmfs's log lines: the warnings at the fork, the daemon's failovers, its statistics."""
    _, _, server = published
    cache = tmp_path / "cache"
    before = int(time.time())
    point, _ = mounts.mount(f"{DEAD_SERVER};{server.url}/cvmfs/{FQRN}", keys_dir, cache,
                            "-o", "CVMFS_HOST_RESET_AFTER=1", "-o", "CVMFS_MAX_RETRIES=0")
    time.sleep(1.1)  # the dead server is tried again: the daemon switches back to it, then away
    assert (point / "etc" / "hostname").read_bytes() == b"cernvm\n"
    daemon_statistics(point, cache)
    after = int(time.time())
    lines = (cache / "mount.log").read_text().splitlines()
    assert any("switching back to server" in line for line in lines) and any("statistics " in line for line in lines)
    stamps = [re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC \S", line) for line in lines]
    assert all(stamps), lines
    moments = [calendar.timegm(time.strptime(stamp[1], "%Y-%m-%d %H:%M:%S")) for stamp in stamps if stamp]
    assert before <= min(moments) and max(moments) <= after


def test_sigusr1_writes_the_daemons_statistics_to_its_log(published, mounts, keys_dir, tmp_path) -> None:
    source, _, server = published
    cache = tmp_path / "cache"
    point, _ = mounts.mount(f"{server.url}/cvmfs/{FQRN}", keys_dir, cache)
    assert (point / "etc" / "hostname").read_bytes() == (source / "etc" / "hostname").read_bytes()
    assert (point / "data" / "big.bin").read_bytes() == (source / "data" / "big.bin").read_bytes()
    statistics = daemon_statistics(point, cache)
    requests = statistics["requests"]
    assert requests["lookup"] >= 4 and requests["read"] >= 2 and requests["init"] == 1  # etc, hostname, data, big.bin
    assert statistics["transfer"]["requests"] >= 3 and statistics["transfer"]["bytes"] > 0
    assert statistics["cache"]["misses"] >= 2 and statistics["io_errors"] == 0
    assert os.path.ismount(point) and (point / "etc" / "hostname").exists()  # the daemon serves on
