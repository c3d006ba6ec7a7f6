"""The boot's FUSE daemon imports nothing once it serves.

It serves from the initramfs, which the handoff frees behind the switch of root: a module first imported
after that is not there, and the request that needed it fails (EIO), as /sbin/init's first library did when
the readahead's thread pool imported concurrent.futures on its first task. Here a fresh interpreter mounts a
published snapshot as the daemon does, then refuses every import, as the freed root would, and reads it all.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import PROJECT, fuse_unusable
from test_publish import FQRN, make_tree, publish

SERVE_WITH_THE_ROOT_FREED = r"""
import hashlib, json, os, sys, threading
from ucernvm.client.cache import ObjectCache
from ucernvm.client.filesystem import SnapshotFilesystem
from ucernvm.client.fuse.kernel import MountOptions, mount, unmount
from ucernvm.client.repository import Repository
from ucernvm.client.sources import DirectorySource
from ucernvm.cvmfs.trust import load_master_keys

repo, key, cache, target, fqrn = sys.argv[1:]
repository = Repository(DirectorySource(repo), fqrn, load_master_keys(key), cache=ObjectCache(cache))
fuse = mount(SnapshotFilesystem(repository), target, MountOptions(fsname=fqrn, subtype="cvmfs", xattrs=True))
fuse.start()
os.stat(target)  # answered once the daemon's init() ran: its threads and pools are made


class FreedRoot:
    asked = []

    def find_spec(self, name, path=None, target=None):
        self.asked.append(name)
        raise ImportError(f"{name}: the initramfs is freed")


sys.meta_path.insert(0, FreedRoot())
files, failed = {}, {}
for directory, _, names in os.walk(target):
    os.listxattr(directory)
    for name in names:
        path = os.path.join(directory, name)
        relative = os.path.relpath(path, target)
        try:
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as handle:
                    files[relative] = hashlib.sha256(handle.read()).hexdigest()
        except OSError as error:
            failed[relative] = error.strerror
os.statvfs(target)
unmount(target)
fuse.join(10)
print(json.dumps({"files": files, "failed": failed, "imports": FreedRoot.asked}))
"""


def test_the_daemon_imports_nothing_once_it_serves(tmp_path: Path, keys_dir: Path) -> None:
    reason = fuse_unusable()
    if reason:
        pytest.skip(reason)
    source, repo = tmp_path / "src", tmp_path / "repo"
    make_tree(source)  # with a chunked file, whose open has its next chunks read ahead by a pool
    for marker in source.rglob(".cvmfscatalog"):
        marker.unlink()  # no nested catalogs: their pool, given its first task at init(), would import too soon
    publish(source, repo, keys_dir)
    (tmp_path / "mnt").mkdir()
    result = subprocess.run([sys.executable, "-c", SERVE_WITH_THE_ROOT_FREED, str(repo), str(keys_dir / f"{FQRN}.pub"),
                             str(tmp_path / "cache"), str(tmp_path / "mnt"), FQRN],
                            capture_output=True, text=True, cwd=PROJECT, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["imports"] == [] and report["failed"] == {}
    expected = {str(path.relative_to(source)): hashlib.sha256(path.read_bytes()).hexdigest()
                for path in source.rglob("*") if path.is_file() and not path.is_symlink()}
    assert report["files"] == expected
