"""The boot log: every line on the console, warnings and errors also in the kernel log once it exists."""

from __future__ import annotations

import io
from pathlib import Path

from ucernvm.boot.log import BootLog


def test_warnings_and_errors_reach_the_kernel_log_once_dev_is_mounted(tmp_path: Path) -> None:
    kmsg = tmp_path / "kmsg"  # stands for /dev/kmsg, which appears when the early stage mounts devtmpfs
    console = io.StringIO()
    log = BootLog(console, kmsg=str(kmsg))
    log.error("before devtmpfs")  # nowhere to write it yet: the console has it, and the boot goes on
    kmsg.touch()
    log.info("early: started")
    log.warn("unknown key 'foo' in [ucernvm-begin]")
    log.error("snapshot: bad signature")

    assert console.getvalue().splitlines() == [
        "[ERR] before devtmpfs", "[INF] early: started", "[WRN] unknown key 'foo' in [ucernvm-begin]",
        "[ERR] snapshot: bad signature",
    ]
    # INF lines stay off the kernel log: it keeps 10 lines per 5 s of a writer and drops the rest.
    assert kmsg.read_text().splitlines() == [
        "<4>ucernvm: unknown key 'foo' in [ucernvm-begin]", "<3>ucernvm: snapshot: bad signature",
    ]
    assert [level for _, level, _ in log.records] == ["ERR", "INF", "WRN", "ERR"]
