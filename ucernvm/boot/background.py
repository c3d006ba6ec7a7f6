"""Stages that run in a child process while the stages after them go on (a real boot only).

Under emulation the network stage takes most of a second, about half of it importing its code, and
then waits on DHCP; the context and storage stages need neither its lease nor its code, and a VM has a
second CPU. The runner forks a child for the background stages; PID 1 goes on with the stages that
may run alongside them and collects the child's results where a stage needs the network (the runner
before such a stage, the context stage before it asks a metadata service). The kernel state the child
changes (addresses, routes, the clock) is the machine's; what it reports comes back as JSON: its stage
records, facts, warnings, log lines and timed actions. Anything else a background stage sets on the
BootState stays in the child, so background stages report through facts only.

A thread would not do: the stages' work is Python, one interpreter at a time (measured slower).
"""

from __future__ import annotations

import os
import select
import sys
from collections.abc import Callable

from ucernvm.boot.state import BootState, StageRecord

_RECORD_FIELDS = ("start", "end", "status", "message", "imports")

Failure = tuple[str, str, str]  # stage name, message, hint


class Background:
    """A forked child running stages; ``join`` merges its results into the parent's state."""

    def __init__(self, records: list[StageRecord], pid: int, reader: int) -> None:
        self.records = records  # the parent's placeholders, in pipeline order
        self.pid = pid
        self._reader = reader

    @property
    def names(self) -> str:
        return ", ".join(record.name for record in self.records)

    def done(self) -> bool:
        """Whether the child has finished (its results wait in the pipe)."""
        return bool(select.select([self._reader], [], [], 0)[0])

    def join(self, state: BootState) -> Failure | None:
        """Wait for the child and merge what it reports; the failure of a critical stage of its, if any."""
        chunks = []
        while chunk := os.read(self._reader, 1 << 16):
            chunks.append(chunk)
        os.close(self._reader)
        _, status = os.waitpid(self.pid, 0)
        import json  # here and in the child: PID 1 starts without it (imported by later stages anyway)

        try:
            report = json.loads(b"".join(chunks))
        except ValueError:
            cause = (f"killed by signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status)
                     else f"exit status {os.waitstatus_to_exitcode(status)}")
            stages = "stages" if len(self.records) > 1 else "stage"
            message = f"the process of the {self.names} {stages} ended without a result ({cause})"
            for record in self.records:
                _set(record, end=record.start, status="failed", message=message)
            return self.records[0].name, message, "this is a bug in ucernvm; the log has the details"
        for record, values in zip(self.records, report["records"]):
            _set(record, **values)
        state.facts.update(report["facts"])
        state.warnings.extend(report["warnings"])
        state.log.records = sorted(state.log.records + [tuple(line) for line in report["log"]], key=lambda line: line[0])
        state.system.actions.extend(report["actions"])
        state.system.timings.extend(tuple(timing) for timing in report["timings"])
        return tuple(report["failure"]) if report["failure"] else None

    def cancel(self, why: str) -> None:
        """End the child (PID 1 failed elsewhere and shows its failure screen instead)."""
        import signal  # here, not before the fork: its enums are built at import, and the child needs none

        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(self.pid, 0)
        os.close(self._reader)
        for record in self.records:
            if record.status == "running":
                _set(record, end=record.start, status="cancelled", message=why)


def _set(record: StageRecord, **values: object) -> None:
    for name, value in values.items():
        setattr(record, name, value)


def start(state: BootState, records: list[StageRecord], work: Callable[[], Failure | None]) -> Background:
    """Fork; the child runs *work* (the stages of *records*, in order) and reports back through a pipe;
    the parent returns at once."""
    reader, writer = os.pipe()
    sys.stdout.flush()
    pid = os.fork()
    if pid:
        os.close(writer)
        return Background(records, pid, reader)
    status = 1
    try:  # the child: never returns into the parent's pipeline
        import json

        os.close(reader)
        report = memoryview(json.dumps(_run(state, records, work), default=str).encode())
        while report:  # blocks while the pipe is full, until the parent joins
            report = report[os.write(writer, report):]
        status = 0
    except BaseException:  # a bug: the parent reports the stage as failed, the console shows why
        import traceback

        traceback.print_exc()
    finally:
        os._exit(status)


def _run(state: BootState, records: list[StageRecord], work: Callable[[], Failure | None]) -> dict:
    facts = {key: _canonical(value) for key, value in state.facts.items()}
    marks = (len(state.warnings), len(state.log.records), len(state.system.actions), len(state.system.timings))
    failure = work()
    warnings, log, actions, timings = marks
    return {
        "records": [{name: getattr(record, name) for name in _RECORD_FIELDS} for record in records],
        "failure": failure,
        "facts": {key: value for key, value in state.facts.items() if facts.get(key) != _canonical(value)},
        "warnings": state.warnings[warnings:],
        "log": state.log.records[log:],
        "actions": state.system.actions[actions:],
        "timings": state.system.timings[timings:],
    }


def _canonical(value: object) -> str:
    import json

    return json.dumps(value, sort_keys=True, default=str)
