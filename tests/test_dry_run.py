"""`ucernvm --dry-run`: the boot pipeline on a developer's machine, against a real stratum server.

Run without any capability when the tests run as root (setpriv empties the bounding set, so even uid 0
may not mount or configure the network): the dry run must need no privilege.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import PROJECT
from ntp import chronyd
from ucernvm.cvmfs.publisher import Publisher, PublishOptions
from ucernvm.cvmfs.signing import generate_repository_keys
from ucernvm.server import StratumServer

FQRN = "test.cern.ch"


@dataclass
class Served:
    url: str
    keys: Path
    root_hashes: dict[str, str]  # tag -> root catalog hash
    ntp: str  # host:port of a real NTP server (the clock stage asks it)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    base = tmp_path_factory.mktemp("dry-run")
    secret = base / "keys"
    generate_repository_keys(FQRN, secret)
    tree = base / "os"
    (tree / "sbin").mkdir(parents=True)
    (tree / "sbin/init").write_text("#!/bin/sh\nexec /bin/sh\n")
    publisher = Publisher(str(base / "stratum" / FQRN), FQRN, str(secret), PublishOptions(tag="v1"))
    hashes = {"v1": publisher.publish(str(tree)).root_hash.hex}
    (tree / "etc").mkdir()
    (tree / "etc/release").write_text("v2\n")
    publisher = Publisher(str(base / "stratum" / FQRN), FQRN, str(secret), PublishOptions(tag="v2"))
    hashes["v2"] = publisher.publish(str(tree)).root_hash.hex
    with StratumServer(base / "stratum") as server:
        for ntp_port in chronyd(base, synchronised=True):
            yield Served(f"http://127.0.0.1:{server.port}/cvmfs/{FQRN}", secret, hashes, f"127.0.0.1:{ntp_port}")


def dry_run(*args: str) -> subprocess.CompletedProcess[str]:
    setpriv = shutil.which("setpriv")
    unprivileged = [setpriv, "--bounding-set=-all", "--inh-caps=-all"] if os.geteuid() == 0 and setpriv else []
    return subprocess.run([*unprivileged, sys.executable, "-m", "ucernvm", "--dry-run", *args], capture_output=True,
                          text=True, cwd=PROJECT, timeout=120)


def cmdline(served: Served, extra: str = "") -> str:
    return (f"cvmfs_repos={FQRN} cvmfs_url={served.url} cvmfs_proxy=DIRECT ucernvm.context=none ucernvm.ntp={served.ntp} "
            f"{extra}").strip()


def test_the_plan_names_the_verified_snapshot(served: Served) -> None:
    result = dry_run("--json", "--keys", str(served.keys), "--cmdline", cmdline(served, "cvmfs_repository_tag=v1"))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["dry_run"] is True and report["outcome"] == "would boot"
    snapshot = report["snapshot"]
    assert (snapshot["tag"], snapshot["root_hash"]) == ("v1", served.root_hashes["v1"])
    assert report["servers"]["order"] == [served.url] and report["transfer"]["bytes_fetched"] > 0
    assert report["clock"]["server"] == served.ntp and report["clock"]["set"] is False  # asked, and in time
    assert [stage["name"] for stage in report["stages"]][-1] == "handoff"
    # Each stage's code is imported as it runs, and that share of its time is reported apart.
    assert all(0 <= stage["imports"] <= stage["seconds"] for stage in report["stages"])
    assert sum(stage["imports"] for stage in report["stages"]) > 0
    plan = "\n".join(report["plan"])
    assert "aux/cvmfs_snapshot" in plan and f"mount {FQRN} with FUSE" in plan and "mount overlay" in plan
    assert report["root"]["boot_layer"] is None  # no earlier boot laid one out
    root_dir = Path(report["root"]["lower"]).parent
    assert not root_dir.exists()  # recorded, not done: nothing is left behind


def test_without_a_tag_the_newest_revision_and_a_readable_plan(served: Served) -> None:
    result = dry_run("--keys", str(served.keys), "--cmdline", cmdline(served))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("plan:\n") and result.stdout.rstrip().endswith("would boot")
    assert "snapshot" in result.stdout  # the timing table lists every stage
    assert served.root_hashes["v2"] in result.stderr  # the boot log names the snapshot it chose


def test_a_boot_that_would_fail_says_why(served: Served, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong"
    generate_repository_keys(FQRN, wrong)
    result = dry_run("--json", "--keys", str(wrong), "--cmdline", cmdline(served, "cvmfs_repository_tag=v1"))
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["failure"]["stage"] == "snapshot" and "whitelist" in report["failure"]["error"].lower()
    result = dry_run("--json", "--keys", str(served.keys), "--cmdline", cmdline(served, "cvmfs_repository_tag=v9"))
    assert result.returncode == 1 and "v9" in json.loads(result.stdout)["failure"]["error"]


def test_keys_missing_from_the_dry_runs_keys_are_asked_of_its_keys(served: Served, tmp_path: Path) -> None:
    """A boot's hint is to build the image with --keys; the dry run's own --keys stand for the image's."""
    result = dry_run("--json", "--keys", str(tmp_path), "--cmdline", cmdline(served, "cvmfs_repository_tag=v1"))
    assert result.returncode == 1
    failure = json.loads(result.stdout)["failure"]
    assert failure["error"] == f"no master public key for {FQRN} in {tmp_path}"
    assert failure["hint"] == f"give --keys a directory holding {FQRN}.pub"
    result = dry_run("--keys", str(tmp_path), "--cmdline", cmdline(served, "cvmfs_repository_tag=v1"))
    assert f"hint:  give --keys a directory holding {FQRN}.pub" in result.stdout and "build the image" not in result.stdout


def test_a_dry_run_system_leaves_nothing_in_the_temporary_directory(tmp_path: Path) -> None:
    """Its temporary root goes when the system is dropped, and when the program using it exits."""
    from ucernvm.boot.system import DryRunSystem, MakeDirs

    system = DryRunSystem()
    root = system.root
    system.do(MakeDirs(str(root / "run" / "ucernvm")))
    assert (root / "run" / "ucernvm").is_dir()
    del system
    assert not root.exists()

    program = "from ucernvm.boot.system import DryRunSystem\nkept = DryRunSystem()\nprint(kept.root)\n"
    ran = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True, cwd=PROJECT)
    left = Path(ran.stdout.strip())
    assert left.name.startswith("ucernvm-dry-run-") and not left.exists()
