"""The runner: stages in order, each timed and logged; a critical failure stops the boot with a cause
and a hint, a best-effort failure becomes a warning."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import NamedTuple

from ucernvm.boot.log import uptime
from ucernvm.boot.state import BootState, StageRecord
from ucernvm.errors import UcernvmError


class Stage(NamedTuple):
    """A named step; ``steps`` are ``"module:function"`` names, imported when the stage runs (or callables).

    Naming instead of importing keeps PID 1's start cheap: each stage's code (and its libraries) is
    imported just in time. (Importing them in a background thread while the kernel loads modules was
    measured: the two compete for the interpreter and the emulated CPUs, and the boot got slower.)
    """

    name: str
    steps: tuple[str | Callable[[BootState], None], ...]
    critical: bool = True
    hint: str = ""  # what to try when this stage fails without a more specific hint

    @property
    def modules(self) -> list[str]:
        return [step.partition(":")[0] for step in self.steps if isinstance(step, str)]

    def run(self, state: BootState, record: StageRecord) -> None:
        for step in self.steps:
            if isinstance(step, str):
                started = uptime()
                module, _, function = step.partition(":")
                step = getattr(importlib.import_module(module), function)
                record.imports += uptime() - started
            step(state)


class BootFailure(Exception):
    def __init__(self, stage: Stage, message: str, hint: str) -> None:
        super().__init__(message)
        self.stage = stage
        self.message = message
        self.hint = hint


def run_stages(state: BootState, stages: list[Stage], before_stage: Callable[[Stage], None] | None = None) -> None:
    """Run every stage; raise BootFailure at the first critical one that fails."""
    for stage in stages:
        if before_stage is not None:
            before_stage(stage)
        record = StageRecord(stage.name, uptime())
        state.stages.append(record)
        state.log.info(f"{stage.name}: started")
        try:
            stage.run(state, record)
        except UcernvmError as error:
            _finish(record, "failed" if stage.critical else "warning", error.message)
            if stage.critical:
                state.log.error(f"{stage.name}: failed after {record.seconds:.2f} s: {error.message}")
                raise BootFailure(stage, error.message, error.hint or stage.hint) from error
            state.warn(f"{stage.name}: {error.message}")
            continue
        except Exception as error:  # a bug: still a clear screen, never a silent hang
            message = f"internal error: {type(error).__name__}: {error}"
            _finish(record, "failed" if stage.critical else "warning", message)
            import traceback  # only for a bug's report: a boot that works does without it

            state.log.error(f"{stage.name}: {message}\n{traceback.format_exc()}")
            if stage.critical:
                raise BootFailure(stage, message, "this is a bug in ucernvm; the log has the details") from error
            state.warn(f"{stage.name}: {message}")
            continue
        _finish(record, "ok", "")
        state.log.info(f"{stage.name}: finished in {record.seconds:.2f} s (imports {record.imports:.2f} s)")


def _finish(record: StageRecord, status: str, message: str) -> None:
    record.end = uptime()
    record.status = status
    record.message = message


def timing_table(state: BootState) -> str:
    lines = [f"{'stage':<10} {'start':>8} {'seconds':>8} {'imports':>8}  status"]
    for record in state.stages:
        lines.append(f"{record.name:<10} {record.start:8.2f} {record.seconds:8.2f} {record.imports:8.2f}  {record.status}")
    if state.stages:
        total = state.stages[-1].end - state.stages[0].start
        lines.append(f"{'total':<10} {state.stages[0].start:8.2f} {total:8.2f}")
    return "\n".join(lines)
