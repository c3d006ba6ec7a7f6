"""The image boots a snapshot chosen by µCernVM kernel options into the OS's own init, under QEMU."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from boot_env import (FQRN, GUEST_HOST, BootRepository, boot, build_boot_image, make_repository, new_disk,
                      power_cut)
from ucernvm import __version__
from ucernvm.cli import main as ucernvm
from ucernvm.cvmfs.publisher import resign
from ucernvm.cvmfs.signing import generate_repository_keys
from ucernvm.image.builder import BuildResult
from ucernvm.image.demo_os import console_marker, console_report
from ucernvm.server import StratumServer

STAGES = ["early", "modules", "network", "clock", "context", "storage", "servers", "snapshot", "mount", "handoff"]


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BootRepository]:
    repository = make_repository(tmp_path_factory.mktemp("boot-repo"))
    yield repository
    repository.server.stop()


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory, repository: BootRepository) -> BuildResult:
    return build_boot_image(tmp_path_factory.mktemp("boot-image") / "image", repository.keys)


def print_timings(label: str, result, capsys: pytest.CaptureFixture[str]) -> None:
    report = result.report
    with capsys.disabled():
        print(f"\n{label}: accel {result.vm.accel}; OS init at {result.marker('UCERNVM-OS-INIT')} s guest")
        for stage in report["stages"]:
            print(f"  {stage['name']:<9} {stage['start']:7.2f} {stage['seconds']:6.2f} s  {stage['status']}")
        transfer = report.get("transfer", {})
        print(f"  fetched {transfer.get('bytes_fetched')} bytes in {transfer.get('requests')} requests; cache {report.get('cache')}")


@pytest.mark.vm
def test_boot_twice_on_one_disk(image: BuildResult, repository: BootRepository, tmp_path: Path, qemu: str,
                                capsys: pytest.CaptureFixture[str]) -> None:
    disk = new_disk(tmp_path / "scratch.raw")
    first = boot(image.output, disk, repository.cmdline(), tmp_path / "first.log", ports=repository.ports)
    print_timings("cold boot", first, capsys)
    assert first.code == 0, first.tail
    assert first.marker("UCERNVM-OS-INIT") is not None, "the OS's init did not run"
    report = first.report
    assert [stage["name"] for stage in report["stages"]] == STAGES
    assert all(stage["status"] in ("ok", "running") for stage in report["stages"]), report["stages"]
    assert report["snapshot"]["repository"] == FQRN and report["snapshot"]["tag"] == "v1"
    assert report["snapshot"]["pinned"] is False
    assert report["root"]["xattrs"] is False  # ucernvm.xattrs=auto: the demo OS stores none
    assert first.marker("UCERNVM-OS-BOOTS") == "1"  # the root is writable
    assert "overlay" in first.marker("UCERNVM-OS-ROOT")
    assert first.marker("UCERNVM-OS-LAYERS") == "2"  # /mnt/.rw and /mnt/.ro
    assert first.marker("UCERNVM-OS-CACHE-LOCKED") == "1"  # by the daemon: a mount in the OS is refused it
    assert first.marker("UCERNVM-OS-MODULES") == "present"
    assert first.marker("UCERNVM-OS-DAEMON") == "@"
    # The initramfs, as the daemon's root, freed but for its name resolution and TLS files
    assert first.marker("UCERNVM-OS-OLD-ROOT") == "etc usr"
    assert "ucernvm: root detached" in first.serial  # the OS's shutdown went through the hand-back
    assert f"[INF] ucernvm boot loader {__version__}" in first.serial

    repository.publish("v2")  # a newer snapshot appears; the pinned machine must not move
    # fuse.max_user_bgreq: a module parameter on the kernel command line reaches the module the boot loads
    second = boot(image.output, disk, repository.cmdline("ucernvm.xattrs=on fuse.max_user_bgreq=77"),
                  tmp_path / "second.log", ports=repository.ports)
    print_timings("warm boot", second, capsys)
    assert second.code == 0, second.tail
    again = second.report
    assert again["snapshot"]["pinned"] is True and again["snapshot"]["tag"] == "v1"  # the pin's, not the newest
    assert again["root"]["xattrs"] is True
    assert again["snapshot"]["root_hash"] == report["snapshot"]["root_hash"]
    assert second.marker("UCERNVM-OS-BOOTS") == "2"  # the writable layer persisted
    assert again["transfer"]["bytes_fetched"] < report["transfer"]["bytes_fetched"]
    assert again["cache"]["hits"] > 0
    assert again["storage"]["fresh"] is False
    assert again["storage"].get("fsck", "clean") == "clean", again["storage"]
    # The network came up in a child process while the scratch disk was mounted (the context saved
    # on the first boot needs no metadata service), and the servers stage started after both.
    stages = {stage["name"]: stage for stage in again["stages"]}
    assert stages["storage"]["start"] < stages["network"]["end"] <= stages["servers"]["start"], again["stages"]
    assert again["background"]["stages"] == "network, clock"
    assert first.marker("UCERNVM-OS-FUSE-BGREQ") != "77"
    assert second.marker("UCERNVM-OS-FUSE-BGREQ") == "77", again["modules"]

    # Without a network (its driver kept out), the pinned snapshot boots from the cache, as µCernVM's did.
    offline = boot(image.output, disk, repository.cmdline("module_blacklist=virtio_net"), tmp_path / "offline.log",
                   ports=repository.ports)
    assert offline.code == 0, offline.tail
    assert offline.marker("UCERNVM-OS-INIT") is not None, "the OS's init did not run"
    report = offline.report
    stages = {stage["name"]: stage for stage in report["stages"]}
    assert stages["network"]["status"] == "warning" and "no network interface" in stages["network"]["message"]
    assert report["snapshot"]["offline"] is True and report["snapshot"]["root_hash"] == again["snapshot"]["root_hash"]
    assert offline.marker("UCERNVM-OS-BOOTS") == "3"


@pytest.mark.vm
def test_a_power_cut_right_after_the_first_boot_keeps_the_pin(image: BuildResult, repository: BootRepository,
                                                              tmp_path: Path, qemu: str) -> None:
    """The machine is switched off the moment its first boot has chosen the snapshot, long before the scratch
    disk's file system would commit on its own; a newer revision appears; the next boot keeps the pin."""
    disk = new_disk(tmp_path / "scratch.raw")
    chosen = power_cut(image.output, disk, repository.cmdline(), tmp_path / "cut.log", ports=repository.ports,
                       at=r"snapshot: \S+ revision (\d+) ([0-9a-f]{40})")
    repository.publish("after-the-power-cut")
    result = boot(image.output, disk, repository.cmdline(), tmp_path / "next.log", ports=repository.ports)
    assert result.code == 0, result.tail
    snapshot = result.report["snapshot"]
    assert snapshot["pinned"] is True, snapshot
    assert (snapshot["revision"], snapshot["root_hash"]) == (int(chosen.group(1)), chosen.group(2))


@pytest.mark.vm
def test_context_iso_sets_the_tag(image: BuildResult, repository: BootRepository, tmp_path: Path, qemu: str) -> None:
    """A context ISO made by `ucernvm context`: its [ucernvm-begin] tag wins over the newest revision."""
    repository.publish("v3")
    user_data = tmp_path / "user-data"
    user_data.write_text("#cloud-config\nruncmd: []\n[ucernvm-begin]\ncvmfs_tag=v1\n[ucernvm-end]\n")
    assert ucernvm(["context", str(user_data), "-o", str(tmp_path / "context.iso")]) == 0
    result = boot(image.output, new_disk(tmp_path / "d.raw"), repository.cmdline(), tmp_path / "context.log",
                  ports=repository.ports, context=tmp_path / "context.iso")
    assert result.code == 0, result.tail
    report = result.report
    assert report["context"]["source"] == "ConfigDrive"
    assert report["context"]["ucernvm_keys"] == ["cvmfs_tag"]
    # The CD's file system (a module of Debian's kernel) was loaded for the CD, not by the modules stage.
    assert "isofs" in report["media_modules"] and "isofs" not in report["modules"]["loaded"]
    assert report["snapshot"]["tag"] == "v1" and report["snapshot"]["revision"] == 1
    assert result.marker("UCERNVM-OS-SEED") == "#cloud-config"  # cloud-init's NoCloud seed is in the OS


@pytest.mark.vm
def test_launch_makes_a_context_cd_of_user_data(image: BuildResult, repository: BootRepository,
                                                tmp_path: Path, qemu: str) -> None:
    """`ucernvm launch --context USER_DATA`, as a user runs it: the launcher writes the ISO, the boot reads it."""
    user_data = tmp_path / "user-data"
    user_data.write_text("#cloud-config\nruncmd: []\n[ucernvm-begin]\ncvmfs_tag=v1\n[ucernvm-end]\n")
    log = tmp_path / "launch.log"
    port = repository.server.port
    launched = subprocess.run(
        [sys.executable, "-m", "ucernvm", "launch", "--image", str(image.output), "--disk-size", "4G",
         "--context", str(user_data), "--cmdline", repository.cmdline(), "--isolated",
         "--guest-forward", f"{GUEST_HOST}:{port}=127.0.0.1:{port}", "--serial-log", str(log), "-q",
         "--timeout", "300"],
        capture_output=True, text=True, timeout=400)
    assert launched.returncode == 0, launched.stderr + log.read_text()[-3000:]
    assert f"context {user_data} (" in launched.stderr  # the launcher said what it attached
    report = console_report(log.read_text())
    assert report["context"]["source"] == "ConfigDrive" and report["context"]["ucernvm_keys"] == ["cvmfs_tag"]
    assert report["snapshot"]["tag"] == "v1"
    assert console_marker(log.read_text(), "UCERNVM-OS-SEED") == "#cloud-config"


# The OS of the first snapshot changes a file of the snapshot, adds a user and a file of its own, and asks
# for the second snapshot as cernvm-update does; the second snapshot's OS reports what it finds.
PREPARE_MOVE_HOOK = """
echo "tool 1, patched" > /usr/bin/tool
echo "alice:x:1000:1000::/home/alice:/bin/sh" >> /etc/passwd
mkdir -p /home/alice && echo "alice's notes" > /home/alice/notes
echo rebase-b > /mnt/.rw/aux/cvmfs_force_tag
echo "UCERNVM-REBASE-ASKED yes"
"""
REPORT_MOVE_HOOK = """
echo "UCERNVM-REBASE-TOOL $(cat /usr/bin/tool)"
echo "UCERNVM-REBASE-ASIDE $(cat /mnt/.rw/aux/rebase-*/usr/bin/tool)"
echo "UCERNVM-REBASE-NOTES $(cat /home/alice/notes)"
echo "UCERNVM-REBASE-USERS $(cut -d: -f1 /etc/passwd | busybox tr '\\n' ' ')"
busybox sed 's/^/UCERNVM-REBASE-LOG /' /mnt/.rw/aux/rebase-*.log
"""


@pytest.mark.vm
def test_a_move_to_another_tag_rebases_the_writable_layer(image: BuildResult, repository: BootRepository,
                                                          tmp_path: Path, qemu: str) -> None:
    """After aux/cvmfs_force_tag the next boot moves to that tag and rebases what the OS changed: the new
    snapshot's version of a file the OS had modified shows (the modified copy is kept aside on the scratch
    disk), the user's own files and the accounts stay, and the snapshot's new user is added."""
    tree = repository.os_tree
    (tree / "usr" / "bin").mkdir(parents=True, exist_ok=True)
    added = (tree / "usr" / "bin" / "tool", tree / "etc" / "passwd", tree / "test-hook")
    try:
        for contents, tag in ((("tool 1\n", "root:x:0:0:root:/root:/bin/sh\n", PREPARE_MOVE_HOOK), "rebase-a"),
                              (("tool 2\n", "root:x:0:0:root:/root:/bin/sh\nnewsvc:x:999:999::/:/bin/false\n",
                                REPORT_MOVE_HOOK), "rebase-b")):
            for path, text in zip(added, contents):
                path.write_text(text)
            repository.publish(tag)
    finally:
        for path in added:
            path.unlink(missing_ok=True)
        repository.publish("without-rebase-files")  # the other tests boot the plain demo OS
    disk = new_disk(tmp_path / "d.raw")
    cmdline = repository.cmdline("cvmfs_repository_tag=rebase-a")
    first = boot(image.output, disk, cmdline, tmp_path / "first.log", ports=repository.ports)
    assert first.code == 0 and first.marker("UCERNVM-REBASE-ASKED") == "yes", first.tail
    assert first.report["snapshot"]["tag"] == "rebase-a" and "rebase" not in first.report
    second = boot(image.output, disk, cmdline, tmp_path / "second.log", ports=repository.ports)
    assert second.code == 0 and second.marker("UCERNVM-OS-INIT") is not None, second.tail
    report = second.report
    assert report["snapshot"]["tag"] == "rebase-b" and report["snapshot"]["pinned"] is False
    assert report["rebase"] == {"restored": 0, "set_aside": 1, "preserved": 1, "accounts_added": 1}
    assert second.marker("UCERNVM-REBASE-TOOL") == "tool 2"
    assert second.marker("UCERNVM-REBASE-ASIDE") == "tool 1, patched"
    assert second.marker("UCERNVM-REBASE-NOTES") == "alice's notes"
    assert second.marker("UCERNVM-REBASE-USERS") == "root alice newsvc"
    assert second.marker("UCERNVM-OS-BOOTS") == "2"  # /var stays the machine's


@pytest.mark.vm
def test_a_clock_a_day_behind_is_set_forward_by_the_servers_date(image: BuildResult, repository: BootRepository,
                                                                  tmp_path: Path, qemu: str) -> None:
    """The VM powers on a day in the past and no NTP server answers (the isolated guest reaches none): the
    first server's Date sets the clock forward before the snapshot is verified, and the OS runs in the present."""
    behind = time.gmtime(time.time() - 86400)
    cmdline = repository.cmdline("ucernvm.ntp=10.0.2.2:123 ucernvm.ntp_timeout=0.5")  # the last ntp= counts
    result = boot(image.output, new_disk(tmp_path / "d.raw"), cmdline, tmp_path / "clock.log", ports=repository.ports,
                  clock_base=time.strftime("%Y-%m-%dT%H:%M:%S", behind))
    assert result.code == 0, result.tail
    clock = result.report["clock"]
    assert clock["set"] is True and abs(clock["offset"] - 86400) < 120, clock
    assert clock["date_of"].startswith(repository.url())
    assert abs(int(result.marker("UCERNVM-OS-DATE") or 0) - time.time()) < 300  # SetClock was applied


def expect_failure(result, stage: str, cause: str) -> None:
    assert result.code == 0, f"QEMU did not exit by a guest power-off:\n{result.tail}"
    assert f"the boot failed in stage '{stage}'" in result.serial, result.tail
    assert cause in result.serial, result.tail
    assert result.marker("UCERNVM-OS-INIT") is None


@pytest.mark.vm
def test_dead_server_fails_with_a_screen(image: BuildResult, repository: BootRepository, tmp_path: Path, qemu: str) -> None:
    cmdline = repository.cmdline().replace(f":{repository.server.port}/", ":9/")
    result = boot(image.output, new_disk(tmp_path / "d.raw"), cmdline, tmp_path / "dead.log", ports=repository.ports)
    expect_failure(result, "snapshot", "cannot fetch")


@pytest.mark.vm
def test_a_first_boot_without_a_network_stops_where_it_needs_a_server_and_names_the_cause(
        image: BuildResult, repository: BootRepository, tmp_path: Path, qemu: str) -> None:
    """The network stage runs in a child process while the storage stage goes on; its failure is a warning
    (a later boot could start from the cache), so a first boot stops at the snapshot, whose screen names
    the network's failure, and the log lands on the scratch disk, which was mounted meanwhile."""
    disk = new_disk(tmp_path / "d.raw")
    result = boot(image.output, disk, repository.cmdline("ucernvm.context=none ucernvm.net=static:10.0.2.15/99,10.0.2.2"),
                  tmp_path / "network.log", ports=repository.ports)
    expect_failure(result, "snapshot", "cannot fetch")
    assert "after: network: network='static:10.0.2.15/99,10.0.2.2' is not static:<address>/<prefix>" in result.serial
    saved = subprocess.run(["debugfs", "-R", "cat /ulogs/status.json", f"{disk}?offset={1 << 20}"],
                           capture_output=True, check=True).stdout
    status = json.loads(saved)
    assert status["outcome"] == "failed in snapshot"
    stages = {stage["name"]: stage["status"] for stage in status["stages"]}
    assert stages["network"] == "warning" and stages["storage"] == "ok" and stages["servers"] == "ok", stages


@pytest.mark.vm
def test_isolated_guest_cannot_reach_an_unforwarded_port(image: BuildResult, repository: BootRepository,
                                                         tmp_path: Path, qemu: str) -> None:
    """A second server of the same repository listens on the host but is not forwarded: were the guest able
    to reach it, the boot would succeed."""
    with StratumServer(repository.stratum) as unforwarded:
        cmdline = repository.cmdline().replace(f":{repository.server.port}/", f":{unforwarded.port}/")
        result = boot(image.output, new_disk(tmp_path / "d.raw"), cmdline, tmp_path / "isolated.log",
                      ports=repository.ports)
        expect_failure(result, "snapshot", "cannot fetch")


@pytest.mark.vm
def test_wrong_key_fails_with_a_screen(repository: BootRepository, tmp_path: Path, qemu: str) -> None:
    other = tmp_path / "other-keys"
    generate_repository_keys(FQRN, other)
    wrong = build_boot_image(tmp_path / "wrong-image", other)
    result = boot(wrong.output, new_disk(tmp_path / "d.raw"), repository.cmdline(), tmp_path / "wrong.log",
                  ports=repository.ports)
    expect_failure(result, "snapshot", "whitelist signature does not verify")


@pytest.mark.vm
def test_expired_whitelist_fails_with_a_screen(image: BuildResult, tmp_path: Path, qemu: str) -> None:
    expired = make_repository(tmp_path / "expired")
    try:
        resign(str(expired.stratum / FQRN), FQRN, str(expired.keys), days=0)
        fresh_image = build_boot_image(tmp_path / "expired-image", expired.keys)
        result = boot(fresh_image.output, new_disk(tmp_path / "d.raw"), expired.cmdline(), tmp_path / "expired.log",
                      ports=expired.ports)
        expect_failure(result, "snapshot", "whitelist expired")
    finally:
        expired.server.stop()
