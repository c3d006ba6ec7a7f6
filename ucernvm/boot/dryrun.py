"""``ucernvm --dry-run``: the boot pipeline on this machine, recording instead of acting.

The same stages talk to the real servers and proxies, verify the real manifest and resolve the tag;
mounts, disk writes and network changes are only recorded. Prints the plan and the timing table (or
JSON); the exit status says whether the real boot would get through.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ucernvm.boot.log import BootLog
from ucernvm.boot.pipeline import BootFailure, run_stages, timing_table
from ucernvm.boot.report import build_report
from ucernvm.boot.rescue import failure_screen
from ucernvm.boot.state import BootState
from ucernvm.boot.system import DryRunSystem
from ucernvm.client import lazylog


def dry_run(cmdline: str, user_data: bytes | None, keys_dir: Path | None, as_json: bool) -> int:
    from ucernvm.boot.stages import STAGES

    system = DryRunSystem()
    state = BootState(system, BootLog(sys.stderr), cmdline=cmdline, keys_dir=keys_dir)
    if user_data is not None:
        state.user_data, state.context_source = user_data, "file"
    failure = None
    lazylog.route(state.log.warn, state.log.info)  # the client's server and proxy choices as the boot's lines
    try:
        run_stages(state, list(STAGES))
    except BootFailure as error:
        failure = error
    finally:
        lazylog.route(None)
        system.close()
    outcome = f"would fail in {failure.stage}" if failure else "would boot"
    report = build_report(state, outcome)
    report["plan"] = system.actions
    if failure is not None:
        report["failure"] = {"stage": failure.stage, "error": failure.message, "hint": failure.hint}
    if as_json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print("plan:")
        print("".join(f"  {index:3d}. {action}\n" for index, action in enumerate(system.actions, 1)), end="")
        print(timing_table(state))
        if failure is not None:
            print(failure_screen(state, failure))
        else:
            print(outcome)
    return 1 if failure else 0
