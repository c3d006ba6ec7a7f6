"""A real OS, streamed: Debian 12 with systemd and cloud-init, published as a tagged snapshot and booted
by the image with a context ISO made by `ucernvm context` whose ucernvm part chooses the server and the
tag (the same user-data from EC2 and CernVM Online: test_debian_context; the squid paths are
test_context_boot's: on this 2-core host a squid would take its CPU from the emulated guest and blur
the measurement).

Checked in the guest (debian_guest's hook): cloud-init ran with the user-data (user, SSH key, file),
the running kernel's modules load, the boot report is visible; the guest powers itself off with
systemd, through the loader's shutdown hand-back, and the second boot finds the scratch disk clean and
is the same cloud-init instance (the SSH host key stays).
The time target, in guest seconds from kernel start to multi-user.target: CernVM's < 30 s where KVM
runs; under TCG (10-20x slower) relative to the floor booted in the same run (the same root on a local
disk with the distribution's own initramfs, conftest.debian_floor): at most FLOOR_RATIO times it,
cold and warm. This host's speed moves between boots, the floor's most of all (27-49 s warm to
multi-user in one afternoon): while a ratio is over its target, both are booted again (up to ROUNDS
rounds), and the best of the rounds' ratios (each a streamed boot over the floor booted next to it)
counts. Printed: systemd
start, multi-user and cloud-init done of every boot. The snapshot carries its prefetch list
(debian_stream.py); the cold boot must have worked it through and laid it out as the boot layer, which
the warm boot reads instead of the mount.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from boot_env import GUEST_HOST, build_boot_image, new_disk
from debian_guest import GuestReport, guest_context
from debian_os import FQRN
from debian_stream import SCRATCH_SIZE, StreamedOs, boot_streamed, context_iso
from floor import FloorBoots, boot_floor_twice

KVM_TARGET = 30.0  # seconds to multi-user.target, CernVM's promise
FLOOR_RATIO = {"cold": 1.6, "warm": 1.3}  # the target under TCG: streamed / floor, to multi-user.target
ROUNDS = 3  # of both boots at most, while a ratio is over its target: the host's noise moves a round's by ±0.2
REPORT_CHECK = "grep -q '\"root_hash\"' /run/ucernvm/report.json && echo 'UCERNVM-CHECK ucernvm-report ok' > /dev/console"


def streamed_pair(streamed: StreamedOs, image: Path, iso: Path, work: Path) -> tuple[dict[str, GuestReport], str]:
    """A cold boot on an empty scratch disk and a warm one on the same disk, each checked in full; and
    the accelerator that ran them."""
    work.mkdir(exist_ok=True)
    disk = new_disk(work / "scratch.raw", SCRATCH_SIZE)
    runs = {}
    for name in ("cold", "warm"):
        guest, result = boot_streamed(image, disk, iso, work / f"{name}.log", streamed.server)
        assert guest.problems() == [], f"{name}: {guest.problems()}\n{result.tail}"
        assert guest.checks.get("ucernvm-report"), "the boot report is not visible in the OS"
        assert result.code == 0, f"{name}: the guest did not power itself off cleanly\n{result.tail}"
        assert "root detached" in result.serial, "systemd did not hand the machine back to the loader"
        assert f"servers: http://{GUEST_HOST}:{streamed.server.port}/cvmfs/{FQRN}" in result.serial
        runs[name], accel = guest, result.vm.accel
    # The same cloud-init instance on the second boot: its SSH host key stays, its per-instance work is done.
    assert runs["cold"].host_key and runs["warm"].host_key == runs["cold"].host_key, "a new instance on the warm boot"
    # The snapshot's prefetch list was worked through: the cold boot's files came in ahead of its reads...
    prefetch = (runs["cold"].daemon or {}).get("prefetch", {})
    assert prefetch.get("listed", 0) > 100 and prefetch.get("fetched", 0) > 0.9 * prefetch["listed"], prefetch
    # ...and laid out as the boot layer (once fetched, with a few seconds to spare before the checks)...
    assert prefetch.get("layer", {}).get("files", 0) > 0.9 * prefetch["listed"], prefetch
    # ...and the warm boot left the list alone and read the listed files from the layer, not the mount.
    warm = runs["warm"].daemon or {}
    assert warm.get("prefetch", {}).get("done_before"), warm
    assert warm.get("requests", {}).get("read", 0) < 0.1 * prefetch["listed"], warm
    return runs, accel


@pytest.mark.vm
@pytest.mark.slow
def test_debian_streamed_boot(debian_streamed: StreamedOs, debian_floor: FloorBoots, tmp_path: Path, qemu: str,
                              capsys: pytest.CaptureFixture[str]) -> None:
    iso = context_iso(tmp_path / "context.iso", guest_context(), debian_streamed.server.port, bootcmd=[REPORT_CHECK])
    image = build_boot_image(tmp_path / "image", debian_streamed.keys).output
    first, accel = streamed_pair(debian_streamed, image, iso, tmp_path / "round1")
    streamed_runs = [first]
    floor_runs = [{"cold": debian_floor.cold.report, "warm": debian_floor.warm.report}]
    for name in ("cold", "warm"):
        assert getattr(debian_floor, name).report.problems() == [], f"the floor's {name} boot failed"

    def ratios() -> dict[str, float]:
        """Per kind, the best of the rounds' ratios (each round's streamed boot over its own floor)."""
        return {name: min(run[name].marks["multi-user"] / floor_run[name].marks["multi-user"]
                          for run, floor_run in zip(streamed_runs, floor_runs)) for name in ("cold", "warm")}

    def missed() -> bool:
        return accel != "kvm" and any(ratio > FLOOR_RATIO[name] for name, ratio in ratios().items())

    while missed() and len(streamed_runs) < ROUNDS:
        # A host that ran a boot slow: another round of both; the best round's ratio counts.
        number = len(streamed_runs) + 1
        streamed_runs.append(streamed_pair(debian_streamed, image, iso, tmp_path / f"round{number}")[0])
        (tmp_path / f"floor{number}").mkdir()
        floor = boot_floor_twice(debian_streamed.root, tmp_path / f"floor{number}")
        assert floor.cold.report.problems() == [] and floor.warm.report.problems() == [], "the floor failed"
        floor_runs.append({"cold": floor.cold.report, "warm": floor.warm.report})

    with capsys.disabled():
        print(f"\nDebian 12, accel {accel}, guest seconds since kernel start: systemd starts, multi-user, cloud-init done")
        print(f"  cold boot's prefetch: {first['cold'].daemon.get('prefetch')}; "
              f"downloads: {first['cold'].daemon.get('transfer')}")
        for number, (streamed_run, floor_run) in enumerate(zip(streamed_runs, floor_runs), 1):
            for name in ("cold", "warm"):
                for kind, marks in (("streamed", streamed_run[name].marks), ("floor", floor_run[name].marks)):
                    print(f"  round {number} {kind:8} {name}: {marks['systemd-start']:6.2f} {marks['multi-user']:6.2f} "
                          f"{marks['cloud-final']:6.2f}")
        for name, ratio in ratios().items():
            print(f"  multi-user, streamed / floor, {name}: {ratio:.2f} (target {FLOOR_RATIO[name]})")
    for name, ratio in ratios().items():
        if accel == "kvm":
            seconds = streamed_runs[0][name].marks["multi-user"]
            assert seconds < KVM_TARGET, f"{name}: multi-user after {seconds:.1f} s"
        else:
            assert ratio <= FLOOR_RATIO[name], f"{name}: {ratio:.2f} x the floor"
