"""Shared fixtures: the real cvmfs_server repository from ../shared, generated keys, published repos."""

from __future__ import annotations

import datetime
import shutil
from pathlib import Path

import pytest

from ucernvm.cvmfs.signing import generate_repository_keys
from ucernvm.tarfiles import tarfile

from helpers import PROJECT

SHARED = PROJECT.parent / "shared"
LEGACY = SHARED / "fixtures" / "cvmfs-legacy-aufs"
LEGACY_FQRN = "legacy_aufs.cern.ch"
# The fixture's whitelist is valid from 2015-10-21 to 2015-11-20.
LEGACY_NOW = datetime.datetime(2015, 11, 1, tzinfo=datetime.timezone.utc)


class LegacyFixture:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.repo = base / "srv" / "cvmfs" / LEGACY_FQRN
        self.keys = base / "etc" / "cvmfs" / "keys"
        self.pub = self.keys / f"{LEGACY_FQRN}.pub"
        self.fqrn = LEGACY_FQRN
        self.now = LEGACY_NOW


def _unpack_legacy(target: Path) -> LegacyFixture:
    if not LEGACY.is_dir():
        pytest.skip(f"the shared fixtures are not available ({LEGACY} is missing)")
    for name in ("legacy_aufs_repo.tar.gz", "keys.tar.gz"):
        with tarfile.open(LEGACY / name) as archive:
            archive.extractall(target, filter="data")
    return LegacyFixture(target)


@pytest.fixture(scope="session")
def legacy_pristine(tmp_path_factory: pytest.TempPathFactory) -> LegacyFixture:
    """The fixture unpacked once; tests must not modify it (use ``legacy``)."""
    return _unpack_legacy(tmp_path_factory.mktemp("legacy"))


@pytest.fixture
def legacy(legacy_pristine: LegacyFixture, tmp_path: Path) -> LegacyFixture:
    """A private, modifiable copy of the fixture."""
    shutil.copytree(legacy_pristine.base, tmp_path / "legacy", symlinks=True)
    return LegacyFixture(tmp_path / "legacy")


@pytest.fixture(scope="session")
def keys_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Keys of the test repositories ``test.cern.ch`` and ``other.cern.ch``."""
    directory = tmp_path_factory.mktemp("keys")
    generate_repository_keys("test.cern.ch", directory)
    generate_repository_keys("other.cern.ch", directory)
    return directory
