"""Extended attributes longer than 255 bytes (cvmfs 2.14's version-2 blobs), read through a real FUSE mount."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import fuse_unusable
from test_mount import Mounts, mounts  # noqa: F401  (fixture)
from test_publish import FQRN, publish
from ucernvm.server import StratumServer

pytestmark = pytest.mark.skipif(fuse_unusable() is not None, reason=str(fuse_unusable()))


def test_a_1000_byte_attribute_reads_back_through_getxattr(tmp_path: Path, keys_dir: Path, mounts: Mounts) -> None:
    source, stratum = tmp_path / "src", tmp_path / "stratum"
    source.mkdir()
    (source / "signed").write_text("a file with a long attribute\n")
    value = bytes(range(256)) * 3 + b"e" * 232
    os.setxattr(source / "signed", "user.ima", value)
    os.setxattr(source / "signed", "user.short", b"s")
    publish(source, stratum / FQRN, keys_dir)
    with StratumServer(stratum) as server:
        point, _ = mounts.mount(f"{server.url}/cvmfs/{FQRN}", keys_dir, tmp_path / "cache")
        assert os.getxattr(point / "signed", "user.ima") == value and len(value) == 1000
        assert os.getxattr(point / "signed", "user.short") == b"s"
        assert sorted(os.listxattr(point / "signed")) == ["user.ima", "user.short"]
