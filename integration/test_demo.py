"""`ucernvm demo` runs the whole chain: keys, publish, serve, build, an isolated boot, the timeline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ucernvm.cli import main as ucernvm


@pytest.mark.vm
def test_demo_boots_the_demo_os(tmp_path: Path, qemu: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert ucernvm(["demo", "--workdir", str(tmp_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "report.json").read_text())
    assert [stage["name"] for stage in report["stages"]][-1] == "handoff"
    assert report["snapshot"]["repository"] == "demo.cern.ch" and report["snapshot"]["tag"] == "demo"
    assert report["transfer"]["bytes_fetched"] > 0
    assert "accelerator: " in out and "the demo OS's init ran " in out
    assert "UCERNVM-REPORT-BEGIN" in (tmp_path / "console.log").read_text()
    manifest = json.loads((tmp_path / "image" / "manifest.json").read_text())
    assert manifest["components"]["keys"]["files"] == 1  # demo.cern.ch.pub, none of the private keys


@pytest.mark.vm
def test_demo_with_the_ucernvm_kernel(tmp_path: Path, qemu: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert ucernvm(["demo", "--workdir", str(tmp_path), "--quiet", "--kernel-source"]) == 0
    assert "the demo OS's init ran " in capsys.readouterr().out
    manifest = json.loads((tmp_path / "image" / "manifest.json").read_text())
    assert manifest["kernel"]["release"].endswith("-ucernvm") and manifest["kernel_modules"] == []
    assert manifest["initrd"]["compression"].split()[0] == "lz4"
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["modules"]["loaded"] == [] and report["snapshot"]["tag"] == "demo"
