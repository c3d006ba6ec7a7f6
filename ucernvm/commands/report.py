"""``ucernvm report FILE``: render a boot report (``/run/ucernvm/report.json``) as a table and an SVG."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ucernvm.boot.report import render_svg, render_text
from ucernvm.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="render a boot report as a timing table and an SVG timeline",
        description="Print the stages, snapshot, server, proxy and cache figures, the slowest actions, the "
        "warnings and the outcome of a boot report (report.json from /run/ucernvm in the booted OS, or ulogs/ on "
        "the scratch disk) and write its timeline as SVG.",
    )
    parser.add_argument("file", metavar="FILE", help="report.json")
    parser.add_argument("--svg", metavar="OUT", help="where to write the timeline (default: FILE with .svg)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        report = json.loads(path.read_text())
    except OSError as error:
        raise ConfigError(f"cannot read {path}: {error.strerror}") from None
    except ValueError as error:
        raise ConfigError(f"{path} is not a boot report (not JSON: {error})") from None
    if not isinstance(report, dict) or not isinstance(report.get("stages"), list):
        raise ConfigError(f"{path} is not a boot report (no stages)")
    print(render_text(report), end="")
    svg = Path(args.svg) if args.svg else path.with_suffix(".svg")
    svg.write_text(render_svg(report))
    print(f"timeline: {svg}")
    return 0
