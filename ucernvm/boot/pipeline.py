"""The runner: stages in order, each timed and logged; a critical failure stops the boot with a cause
and a hint, a best-effort failure becomes a warning."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

from ucernvm.boot import background
from ucernvm.boot.log import uptime
from ucernvm.boot.state import BootState, StageRecord
from ucernvm.errors import UcernvmError
from ucernvm.records import NamedTuple


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
    # Run in a child process alongside the stages after it (a real boot; consecutive ones share one
    # child, in order): see background.py. A stage after it waits for it unless ``alongside``.
    background: bool = False
    alongside: bool = False  # may run while background stages do; waits for them where it needs them
    # Steps that save this stage time later, run while PID 1 would otherwise wait for background stages
    # (after the stages' code is imported); best effort: what fails here the stage meets again itself.
    ahead: tuple[str, ...] = ()

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
    def __init__(self, stage: str, message: str, hint: str) -> None:
        super().__init__(message)
        self.stage = stage  # the name of the stage that failed
        self.message = message
        self.hint = hint


def run_stages(state: BootState, stages: list[Stage], before_stage: Callable[[Stage], None] | None = None) -> None:
    """Run every stage; raise BootFailure at the first critical one that fails."""
    may_fork = True  # until the kernel refuses a new process
    index = 0
    try:
        while index < len(stages):
            stage = stages[index]
            if stage.background and may_fork and state.background is None and _concurrent(state):
                group = [stage]
                while index + len(group) < len(stages) and stages[index + len(group)].background:
                    group.append(stages[index + len(group)])
                if _start_background(state, group, before_stage):
                    index += len(group)
                    continue
                may_fork = False
            if state.background is not None and not stage.alongside:
                _import_ahead(state, stages[index:])
                wait_for_background(state)
            if before_stage is not None:
                before_stage(stage)
            record = StageRecord(stage.name, uptime())
            state.stages.append(record)
            run_stage(state, stage, record)
            index += 1
        wait_for_background(state)
    except BaseException as error:
        if state.background is not None:
            state.background.cancel(f"stopped: {error.stage} failed" if isinstance(error, BootFailure) else "stopped")
            state.background = None
        raise


def _concurrent(state: BootState) -> bool:
    """Whether background stages may run in a child: not where a break point may open a shell on the
    console (the settings are known once the early stage has read the command line), nor in a dry run."""
    return not state.system.dry_run and not state.config.break_stage


def run_stage(state: BootState, stage: Stage, record: StageRecord) -> None:
    """One stage, timed and logged; BootFailure when it is critical and fails."""
    state.log.info(f"{stage.name}: started")
    try:
        stage.run(state, record)
    except BootFailure as failure:  # a background stage this one waited for failed
        _finish(record, "stopped", f"{failure.stage} failed")
        raise
    except UcernvmError as error:
        _finish(record, "failed" if stage.critical else "warning", error.message)
        if stage.critical:
            state.log.error(f"{stage.name}: failed after {record.seconds:.2f} s: {error.message}")
            raise BootFailure(stage.name, error.message, error.hint or stage.hint) from error
        state.warn(f"{stage.name}: {error.message}")
        return
    except Exception as error:  # a bug: still a clear screen, never a silent hang
        message = f"internal error: {type(error).__name__}: {error}"
        _finish(record, "failed" if stage.critical else "warning", message)
        import traceback  # only for a bug's report: a boot that works does without it

        state.log.error(f"{stage.name}: {message}\n{traceback.format_exc()}")
        if stage.critical:
            raise BootFailure(stage.name, message, "this is a bug in ucernvm; the log has the details") from error
        state.warn(f"{stage.name}: {message}")
        return
    _finish(record, "ok", "")
    state.log.info(f"{stage.name}: finished in {record.seconds:.2f} s (imports {record.imports:.2f} s)")


def _start_background(state: BootState, group: list[Stage], before_stage: Callable[[Stage], None] | None) -> bool:
    """Fork for *group*; False (the stages then run in turn) where the kernel refuses a new process."""
    records = []
    for stage in group:
        if before_stage is not None:
            before_stage(stage)
        records.append(StageRecord(stage.name, uptime()))
    state.stages.extend(records)

    def work() -> background.Failure | None:
        for index, (stage, record) in enumerate(zip(group, records)):
            record.start = uptime()
            try:
                run_stage(state, stage, record)
            except BootFailure as failure:
                for later in records[index + 1:]:
                    _finish(later, "skipped", f"{failure.stage} failed")
                return failure.stage, failure.message, failure.hint
        return None

    names = ", ".join(stage.name for stage in group)
    try:
        state.background = background.start(state, records, work)
    except OSError as error:
        del state.stages[-len(records):]
        state.warn(f"{names}: cannot run alongside the next stages ({error.strerror or error}): running them in turn")
        return False
    state.log.info(f"{names}: running alongside the next stages")
    return True


def _import_ahead(state: BootState, stages: list[Stage]) -> None:
    """While the background stages still run, import the code of the stages to come (needed anyway),
    then run their ``ahead`` steps."""
    if state.background.done():
        return
    started = uptime()
    modules = []
    for module in dict.fromkeys(module for stage in stages for module in stage.modules if module not in sys.modules):
        try:
            importlib.import_module(module)
        except Exception:  # the stage that needs it reports the error, with its screen, when it runs
            break
        modules.append(module)
    facts = state.facts.setdefault("background", {})
    facts["imported_ahead"] = {"modules": modules, "seconds": round(uptime() - started, 3)}
    started, done = uptime(), []
    for step in (step for stage in stages for step in stage.ahead):
        module, _, function = step.partition(":")
        try:
            getattr(importlib.import_module(module), function)(state)
        except Exception:  # the stage it prepares meets the cause again, and reports it
            continue
        done.append(step)
    if done:
        facts["done_ahead"] = {"steps": done, "seconds": round(uptime() - started, 3)}


def wait_for_background(state: BootState) -> None:
    """Wait for the stages running in the background and take their results; BootFailure if one of
    them failed (for a stage that needs their network, before it uses it)."""
    running, state.background = state.background, None
    if running is None:
        return
    started = uptime()
    failure = running.join(state)
    state.facts.setdefault("background", {}).update(stages=running.names, waited=round(uptime() - started, 3))
    if failure is not None:
        raise BootFailure(*failure)


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
