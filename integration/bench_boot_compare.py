"""Two revisions' boots, alternated: whether a change made the boot faster, on a host whose speed drifts.

Single TCG boots here spread by ±0.8 s within an hour, so a change worth 0.1-0.3 s shows only in the
means of rounds taken side by side. Each round runs ``integration/bench_boot.py --runs 1`` (a cold
and a warm boot) from a git worktree of each revision, the two in turn (which goes first alternates),
then prints per figure the means of both and, for the totals, in how many rounds the second revision
was the faster.

Usage: python integration/bench_boot_compare.py BASE [HEAD] [--rounds N] [--keep DIR] [-- BENCH_BOOT_OPTIONS]

BASE and HEAD are git revisions (HEAD by default; the same one twice measures the noise). Any revision
whose bench_boot.py prints its table can be compared; the options after ``--`` go to both, e.g.
``-- --kernel-source --compression lz4``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_boot import COUNTS

TOTALS = ("kernel start → OS init", "/init → OS init (the loader's work)")
KINDS = ("cold", "warm")


def parse_table(output: str) -> dict[str, dict[str, float]]:
    """bench_boot.py's table: {column label ("cold 1"...): {figure: value}}, numeric cells only."""
    lines = [line for line in output.splitlines() if line.startswith("| ")]
    if not lines:
        raise ValueError("no table in the benchmark's output")
    labels = [cell.strip() for cell in lines[0].strip("|").split("|")][1:]
    columns: dict[str, dict[str, float]] = {label: {} for label in labels}
    for line in lines[1:]:
        name, *cells = (cell.strip() for cell in line.strip("|").split("|"))
        for label, cell in zip(labels, cells):
            try:
                columns[label][name] = float(cell.replace(",", ""))
            except ValueError:
                pass  # "-": not measured in this column
    return columns


def run_round(checkout: Path, bench_args: list[str], log: Path) -> dict[str, dict[str, float]]:
    """One cold and one warm boot of *checkout*'s code; {"cold": figures, "warm": figures}."""
    result = subprocess.run(
        [sys.executable, "integration/bench_boot.py", "--runs", "1", *bench_args],
        cwd=checkout, env={**os.environ, "PYTHONPATH": str(checkout)}, capture_output=True, text=True, check=False,
    )
    log.write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"{checkout.name}: bench_boot.py failed ({result.returncode}):\n{tail}")
    columns = parse_table(result.stdout)
    return {kind: columns[f"{kind} 1"] for kind in KINDS}


Round = dict[str, dict[str, dict[str, float]]]  # "base"/"head" -> "cold"/"warm" -> figure -> value


def summary(base: str, head: str, rounds: list[Round]) -> str:
    """Per kind and figure: both means (columns named *base* and *head*); for the totals, the rounds in
    which head was the faster."""
    lines = [f"| figure, {len(rounds)} rounds | {base} | {head} | {head} faster in |", "|---|---|---|---|"]
    for kind in KINDS:
        figures = list(dict.fromkeys(name for one in rounds for name in one["base"][kind]))
        for name in figures:
            pairs = [(one["base"][kind][name], one["head"][kind][name]) for one in rounds
                     if name in one["base"][kind] and name in one["head"][kind]]
            if not pairs:
                continue
            before, after = statistics.fmean(p[0] for p in pairs), statistics.fmean(p[1] for p in pairs)
            faster = f"{sum(b > a for b, a in pairs)} of {len(pairs)}" if name in TOTALS else ""
            cell = "{:,.0f}" if name in COUNTS else "{:.3f}"
            lines.append(f"| {kind}: {name} | {cell.format(before)} | {cell.format(after)} | {faster} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", help="the revision to compare against")
    parser.add_argument("head", nargs="?", default="HEAD", help="the revision with the change (default: HEAD)")
    parser.add_argument("--rounds", type=int, default=10, help="rounds of one cold and one warm boot each (default: 10)")
    parser.add_argument("--keep", type=Path, help="keep each run's output here (default: a temporary directory)")
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    args, bench_args = parser.parse_args(argv[:split]), argv[split + 1:]
    repo = Path(__file__).resolve().parent.parent
    revisions = {side: subprocess.run(["git", "rev-parse", "--short", name], cwd=repo, capture_output=True, text=True,
                                      check=True).stdout.strip()
                 for side, name in (("base", args.base), ("head", args.head))}
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as scratch:
        work = (args.keep or Path(scratch)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        checkouts = {side: Path(scratch) / f"{side}-{revision}" for side, revision in revisions.items()}
        try:
            for side, checkout in checkouts.items():
                subprocess.run(["git", "worktree", "add", "--detach", str(checkout), revisions[side]], cwd=repo,
                               check=True, capture_output=True)
            rounds: list[Round] = []
            for number in range(1, args.rounds + 1):
                order = ("base", "head") if number % 2 else ("head", "base")
                one = {side: run_round(checkouts[side], bench_args, work / f"{side}-{revisions[side]}-{number}.out")
                       for side in order}
                rounds.append(one)
                times = ", ".join(f"{revisions[side]} {one[side]['cold'][TOTALS[0]]:.2f}/{one[side]['warm'][TOTALS[0]]:.2f}"
                                  for side in ("base", "head"))
                print(f"round {number}: kernel start → OS init cold/warm: {times}", flush=True)
        finally:
            for checkout in checkouts.values():
                subprocess.run(["git", "worktree", "remove", "--force", str(checkout)], cwd=repo, check=False,
                               capture_output=True)
    print(f"\nload average (1 min) now {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; bench_boot.py options: "
          f"{' '.join(bench_args) or '(none)'}\n")
    print(summary(revisions["base"], revisions["head"], rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
