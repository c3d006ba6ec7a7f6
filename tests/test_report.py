"""`ucernvm report`: the boot report rendered as a table and a timeline."""

from __future__ import annotations

from ucernvm.boot.report import render_svg, render_text


def test_a_stage_still_running_when_the_report_was_written_shows_no_end() -> None:
    """The handoff writes the report, so a booted OS's report has it running, its end and time still 0."""
    report = {
        "outcome": "switching root",
        "stages": [
            {"name": "mount", "start": 4.79, "end": 5.06, "seconds": 0.27, "imports": 0.06, "status": "ok"},
            {"name": "handoff", "start": 5.06, "end": 0.0, "seconds": 0.0, "imports": 0.04, "status": "running"},
        ],
    }
    rows = render_text(report).splitlines()
    assert rows[1].split() == ["mount", "4.79", "5.06", "0.27", "0.06", "ok"]
    assert rows[2].split() == ["handoff", "5.06", "-", "-", "0.04", "running"]
    svg = render_svg(report)
    assert ">0.27 s</text>" in svg and ">running</text>" in svg and ">0.00 s</text>" not in svg
