"""The boot report: what happened, when, and with which server, proxy and snapshot.

Written to ``/run/ucernvm/report.json`` in the new root (with a ``timeline.svg``) and kept on the
scratch disk in ``ulogs/``; ``ucernvm report FILE`` renders it on any machine.
"""

from __future__ import annotations

import json
from typing import Any

from ucernvm import __version__
from ucernvm.boot.log import uptime
from ucernvm.boot.state import BootState

_COLORS = {"ok": "#4c9f70", "warning": "#e0a030", "failed": "#d04040", "running": "#7090c0", "skipped": "#a0a0a0"}


def build_report(state: BootState, outcome: str) -> dict[str, Any]:
    report: dict[str, Any] = {
        "version": __version__,
        "outcome": outcome,
        "written_at_uptime": round(uptime(), 3),
        "dry_run": state.system.dry_run,
        "stages": [
            {"name": r.name, "start": round(r.start, 3), "end": round(r.end, 3), "seconds": round(r.seconds, 3),
             "imports": round(r.imports, 3), "status": r.status, "message": r.message}
            for r in state.stages
        ],
        "warnings": list(state.warnings),
        "slowest_actions": [[action, round(seconds, 3)] for action, seconds in state.system.slowest()],
        "context_source": state.context_source,
        **state.facts,
    }
    source = state.source
    if source is not None:
        counters = source.counters
        report["transfer"] = {
            "server": source.current_host,
            "proxy": source.current_proxy,
            "requests": counters.requests,
            "bytes_fetched": counters.bytes,
            "failovers": counters.host_failovers + counters.proxy_failovers,
        }
    cache = state.repository.cache if state.repository is not None else None
    if cache is not None:
        report["cache"] = {"hits": cache.hits, "misses": cache.misses}
    return report


def to_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, sort_keys=False, default=str) + "\n"


def render_text(report: dict[str, Any]) -> str:
    lines = [f"{'stage':<10} {'start':>8} {'end':>8} {'seconds':>8} {'imports':>8}  status"]
    for stage in report.get("stages", []):
        # A stage still running when the report was written (the handoff, which writes it) has no end yet.
        running = stage["status"] == "running"
        end, seconds = ("-", "-") if running else (f"{stage['end']:.2f}", f"{stage['seconds']:.2f}")
        lines.append(
            f"{stage['name']:<10} {stage['start']:8.2f} {end:>8} {seconds:>8} "
            f"{stage.get('imports', 0.0):8.2f}  {stage['status']}"
            + (f" ({stage['message']})" if stage.get("message") else "")
        )
    snapshot = report.get("snapshot", {})
    if snapshot:
        lines.append(
            f"snapshot: {snapshot.get('repository')} revision {snapshot.get('revision')} {snapshot.get('root_hash')}"
            f" tag {snapshot.get('tag') or '-'}"
        )
    transfer = report.get("transfer", {})
    if transfer:
        lines.append(
            f"server: {transfer.get('server')}  proxy: {transfer.get('proxy')}  "
            f"fetched: {transfer.get('bytes_fetched')} bytes in {transfer.get('requests')} requests"
        )
    cache = report.get("cache", {})
    if cache:
        lines.append(f"cache: {cache.get('hits')} hits, {cache.get('misses')} misses")
    slowest = report.get("slowest_actions", [])[:5]
    lines += [f"slow: {seconds:6.2f} s  {action}" for action, seconds in slowest]
    lines += [f"warning: {warning}" for warning in report.get("warnings", [])]
    lines.append(f"outcome: {report.get('outcome')}")
    return "\n".join(lines) + "\n"


def render_svg(report: dict[str, Any]) -> str:
    """A horizontal bar per stage on the guest's clock (seconds since the kernel started)."""
    # Imported here: PID 1 imports this module as it starts (for the failure screen), and html with its
    # entity tables cost ~4 ms natively, ~50 ms under emulation, before the first stage.
    import html

    stages = report.get("stages", [])
    # Guest boots start near 0; a dry run on a host that has been up for days starts later.
    origin = float(int(stages[0]["start"])) if stages and stages[0]["start"] > 60 else 0.0
    end = max([stage["end"] - origin for stage in stages] + [1.0])
    width, row, left = 720, 22, 90
    scale = (width - left - 20) / end
    step = next(step for step in (1, 2, 5, 10, 20, 50, 100, 1000, 10**9) if end / step <= 20)
    height = row * (len(stages) + 2)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
        f'<text x="4" y="14">ucernvm boot timeline (seconds since kernel start), {html.escape(str(report.get("outcome")))}</text>',
    ]
    for index, stage in enumerate(stages):
        y = row * (index + 1) + 4
        x = left + (stage["start"] - origin) * scale
        bar = max(1.0, stage["seconds"] * scale)
        color = _COLORS.get(stage["status"], "#808080")
        parts.append(f'<text x="4" y="{y + 14}">{html.escape(stage["name"])}</text>')
        parts.append(f'<rect x="{x:.1f}" y="{y}" width="{bar:.1f}" height="{row - 6}" fill="{color}"/>')
        label = "running" if stage["status"] == "running" else f'{stage["seconds"]:.2f} s'
        parts.append(f'<text x="{x + bar + 4:.1f}" y="{y + 14}">{label}</text>')
    axis_y = row * (len(stages) + 1) + 8
    for second in range(0, int(end) + 1, step):
        x = left + second * scale
        parts.append(f'<line x1="{x:.1f}" y1="{row}" x2="{x:.1f}" y2="{axis_y}" stroke="#ddd"/>')
        parts.append(f'<text x="{x:.1f}" y="{axis_y + 12}" text-anchor="middle">{origin + second:g}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
