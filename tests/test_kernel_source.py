"""The ucernvm kernel's configuration: the fragment is strict, and an option Kconfig dropped is an error."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ucernvm.errors import ConfigError
from ucernvm.image.builder import INPUTS_DIR
from ucernvm.image.kernel_source import dropped_options, fragment_assignments, remove_abandoned_builds


def test_the_shipped_fragment_builds_in_what_the_boot_needs() -> None:
    wanted = fragment_assignments((INPUTS_DIR / "kernel.config").read_text())
    # the drivers the boot would otherwise load as modules (initramfs/modules.txt), and no module support
    for option in ("VIRTIO_PCI", "VIRTIO_BLK", "VIRTIO_NET", "EXT4_FS", "OVERLAY_FS", "FUSE_FS", "ISO9660_FS",
                   "VFAT_FS", "UDF_FS", "E1000", "BLK_DEV_NVME", "PVH", "BLK_DEV_INITRD", "RD_ZSTD"):
        assert wanted[f"CONFIG_{option}"] == "y", option
    assert "CONFIG_MODULES" not in wanted  # allnoconfig leaves it off: nothing to load, nothing to copy
    assert wanted["CONFIG_CPU_MITIGATIONS"] == "y" and wanted["CONFIG_PAGE_TABLE_ISOLATION"] == "y"


def test_a_malformed_fragment_line_is_an_error_with_its_line_number() -> None:
    assert fragment_assignments('# comment\n\nCONFIG_A=y\nCONFIG_B="text"\n') == {"CONFIG_A": "y", "CONFIG_B": '"text"'}
    with pytest.raises(ConfigError, match=r"frag:3: not a CONFIG_NAME=value line: 'CONFIG_FUSE_FS y'"):
        fragment_assignments("CONFIG_A=y\n\nCONFIG_FUSE_FS y\n", "frag")


def test_options_that_kconfig_dropped_or_changed_are_named() -> None:
    wanted = {"CONFIG_A": "y", "CONFIG_B": "y", "CONFIG_C": '"-x"', "CONFIG_D": "64"}
    config = 'CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C="-y"\nCONFIG_D=64\nCONFIG_E=y\n'
    assert dropped_options(wanted, config) == ['CONFIG_B=y', 'CONFIG_C="-x"']
    assert dropped_options({"CONFIG_A": "y"}, config) == []


def test_work_trees_of_dead_builds_are_removed_and_running_ones_kept(tmp_path: Path) -> None:
    dead = tmp_path / "build-2147483647-abc"  # no such process (above the kernel's pid_max)
    running = tmp_path / f"build-{os.getpid()}-def"
    kept = tmp_path / "linux-source-6.1_6.1.192-2-0123456789abcdef"
    for directory in (dead / "src", running / "src", kept):
        directory.mkdir(parents=True)
    remove_abandoned_builds(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([running.name, kept.name])
