"""Every action the boot applies is timed, and the boot report names the slowest: in a VM that is where
a stage's time went besides its own code (a mkfs, a mount, the daemon's start)."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import NamedTuple

import pytest

from ucernvm.boot.log import BootLog
from ucernvm.boot.report import build_report, render_text
from ucernvm.boot.state import BootState
from ucernvm.boot.system import DryRunSystem, RealSystem, Run, WriteFile
from ucernvm.errors import UcernvmError


class Wait(NamedTuple):
    seconds: float

    def describe(self) -> str:
        return f"wait {self.seconds} s"

    def apply(self) -> None:
        time.sleep(self.seconds)


def test_the_report_names_the_slowest_actions_first(tmp_path: Path) -> None:
    state = BootState(RealSystem(), BootLog(io.StringIO()))
    state.system.do(WriteFile(str(tmp_path / "a"), b"x"))
    state.system.do(Wait(0.2))
    state.system.do(Wait(0.05))
    with pytest.raises(UcernvmError):
        state.system.do(Run(("sh", "-c", "sleep 0.1; exit 3")))  # a failed action took its time too

    report = build_report(state, "switching root")
    slowest = report["slowest_actions"]
    assert [action for action, _ in slowest] == [
        "wait 0.2 s", "run sh -c sleep 0.1; exit 3", "wait 0.05 s", f"write {tmp_path / 'a'} (1 bytes)"]
    seconds = [value for _, value in slowest]
    assert seconds[0] >= 0.2 and seconds[1] >= 0.1 and seconds[2] >= 0.05
    assert len(RealSystem().slowest()) == 0
    shown = [line for line in render_text(report).splitlines() if line.startswith("slow:")]  # `ucernvm report`
    assert [line.split(" s  ", 1)[1] for line in shown] == [action for action, _ in slowest]


def test_a_dry_run_times_nothing_it_did_not_do() -> None:
    state = BootState(DryRunSystem(), BootLog(io.StringIO()))
    state.system.do(Wait(0.05))
    assert state.system.actions == ["wait 0.05 s"]
    assert build_report(state, "dry run")["slowest_actions"] == []


def test_a_program_gets_its_input_and_is_killed_at_its_timeout() -> None:
    assert RealSystem().do(Run(("cat",), input=b"user-data")).stdout == b"user-data"
    started = time.monotonic()
    with pytest.raises(UcernvmError, match="timed out after 0.2 seconds"):
        RealSystem().do(Run(("sleep", "30"), timeout=0.2))
    assert time.monotonic() - started < 5
