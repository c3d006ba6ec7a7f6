"""The ucernvm kernel (``ucernvm build --kernel-source``: Debian's kernel source, every boot driver built
in) boots the demo OS with no modules to load, shuts it down cleanly, and boots within the time goal."""

from __future__ import annotations

from pathlib import Path

import pytest

from boot_env import BOOT_TIME_GOAL, BootRepository, boot, build_boot_image, new_disk
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


@pytest.mark.vm
def test_the_boot_meets_its_time_goal(image: BuildResult, repository: BootRepository, tmp_path: Path,
                                      qemu: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Kernel start → the OS's init, in the guest's seconds, cold and warm, within BOOT_TIME_GOAL, with the
    boot tests' own kernel options (the context search included). The guest's clock runs with the host's,
    so a host busy with other work slows a boot: when a pair misses, one more pair is booted on a new disk
    and the faster boot of each kind counts."""
    best: dict[str, float] = {}
    for attempt in (1, 2):
        disk = new_disk(tmp_path / f"scratch-{attempt}.raw")
        for kind in BOOT_TIME_GOAL:
            result = boot(image.output, disk, repository.cmdline(), tmp_path / f"{kind}-{attempt}.log",
                          ports=repository.ports)
            assert result.code == 0, result.tail
            seconds = float(result.marker("UCERNVM-OS-INIT") or "nan")
            with capsys.disabled():
                print(f"\n{kind} boot {attempt}: accel {result.vm.accel}; OS init at {seconds:.2f} s guest "
                      f"(goal {BOOT_TIME_GOAL[kind]:.1f} s)")
            best[kind] = min(best.get(kind, seconds), seconds)
        if all(best[kind] <= goal for kind, goal in BOOT_TIME_GOAL.items()):
            break
    missed = {kind: seconds for kind, seconds in best.items() if not seconds <= BOOT_TIME_GOAL[kind]}
    assert not missed, f"kernel start → OS init over the goal {BOOT_TIME_GOAL} (best of two boots): {missed}"
