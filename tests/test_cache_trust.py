"""What a later mount makes of a cache that someone changed between mounts: the scratch disk that holds it is
writable by the OS it booted (root in the guest) and by anyone with the disk image. A damaged or planted file
is passed over, removed or refused with a clear error; it never gets past the signature chain or the refusal
of an older revision."""

from __future__ import annotations

from pathlib import Path

import pytest

from test_publish import FQRN, publish
from ucernvm.client.cache import ObjectCache
from ucernvm.client.repository import Repository
from ucernvm.client.sources import DirectorySource
from ucernvm.cvmfs.trust import load_master_keys


@pytest.fixture
def repo(tmp_path: Path, keys_dir: Path) -> Path:
    tree = tmp_path / "os"
    (tree / "sbin").mkdir(parents=True)
    (tree / "sbin" / "init").write_text("#!/bin/sh\n")
    publish(tree, tmp_path / "repo", keys_dir)
    return tmp_path / "repo"


def mount(repo: Path, keys_dir: Path, cache: Path) -> Repository:
    repository = Repository(DirectorySource(repo), FQRN, load_master_keys(keys_dir / f"{FQRN}.pub"),
                            cache=ObjectCache(cache))
    assert repository.read("/sbin/init") == b"#!/bin/sh\n"
    for catalog in repository.loaded_catalogs():
        catalog.close()
    return repository


def test_a_damaged_breadcrumb_is_passed_over_with_a_warning_and_replaced(repo: Path, keys_dir: Path,
                                                                         tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    mount(repo, keys_dir, cache)
    breadcrumb = cache / f"cvmfschecksum.{FQRN}"
    recorded = breadcrumb.read_bytes()
    breadcrumb.write_bytes(b"\xff garbage" * 1000)
    again = mount(repo, keys_dir, cache)
    assert any("malformed cache breadcrumb" in warning for warning in again.warnings)
    assert max(len(warning) for warning in again.warnings) < 200
    assert breadcrumb.read_bytes() == recorded
