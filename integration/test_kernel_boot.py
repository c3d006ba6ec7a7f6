"""The ucernvm kernel (``ucernvm build --kernel-source``: Debian's kernel source, every boot driver built
in) boots the demo OS with no modules to load, and shuts it down cleanly."""

from __future__ import annotations

from pathlib import Path

import pytest

from boot_env import BootRepository, boot, build_boot_image, new_disk
from test_boot import STAGES, print_timings, repository  # noqa: F401 (repository: the module's fixture)
from ucernvm.commands.build import SIZE_GOAL
from ucernvm.image.builder import BuildResult
from ucernvm.image.kernel_source import DEFAULT_SOURCE_PACKAGE


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory, repository: BootRepository) -> BuildResult:
    # The first build on a machine compiles the kernel (about 10-15 min on 2 cores); later ones reuse it.
    # LZ4, the fastest initramfs to unpack, still fits the size goal with this kernel.
    return build_boot_image(tmp_path_factory.mktemp("kernel-image") / "image", repository.keys,
                            kernel_source=DEFAULT_SOURCE_PACKAGE, compression="lz4")


def test_the_image_has_no_modules_and_fits_the_size_goal(image: BuildResult) -> None:
    manifest = image.manifest
    assert manifest["kernel"]["release"].endswith("-ucernvm")
    assert manifest["kernel_modules"] == []
    assert "kernel-modules" not in manifest["components"]
    assert manifest["initrd"]["compression"].split()[0] == "lz4"  # the command that compressed it
    assert manifest["boot_bytes"] <= SIZE_GOAL


@pytest.mark.vm
def test_the_ucernvm_kernel_boots_and_shuts_down_cleanly(image: BuildResult, repository: BootRepository,
                                                         tmp_path: Path, qemu: str,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    disk = new_disk(tmp_path / "scratch.raw")
    first = boot(image.output, disk, repository.cmdline(), tmp_path / "first.log", ports=repository.ports)
    print_timings("cold boot, ucernvm kernel", first, capsys)
    assert first.code == 0, first.tail
    assert first.marker("UCERNVM-OS-KERNEL") == image.manifest["kernel"]["release"]
    report = first.report
    assert [stage["name"] for stage in report["stages"]] == STAGES
    assert all(stage["status"] in ("ok", "running") for stage in report["stages"]), report["stages"]
    assert report["modules"]["loaded"] == []  # the disk, NIC and file system drivers are built in
    assert first.marker("UCERNVM-OS-BOOTS") == "1" and first.marker("UCERNVM-OS-LAYERS") == "2"
    assert "ucernvm: root detached" in first.serial  # the shutdown hand-back ran under this kernel too

    second = boot(image.output, disk, repository.cmdline(), tmp_path / "second.log", ports=repository.ports)
    print_timings("warm boot, ucernvm kernel", second, capsys)
    assert second.code == 0, second.tail
    again = second.report
    assert again["snapshot"]["pinned"] is True and again["cache"]["hits"] > 0
    assert second.marker("UCERNVM-OS-BOOTS") == "2"
    assert again["storage"]["fresh"] is False
    assert again["storage"].get("fsck", "clean") == "clean", again["storage"]
