"""What a failed or hung VM's error shows of its console: the kernel's first report of trouble, then the end."""

from __future__ import annotations

from ucernvm.launch.qemu import TROUBLE_LINES, console_hint

# The console of a guest whose kernel locked up after the loader's handoff (a real one, cut short).
HUNG = """\
[INF] mount: finished in 0.46 s (imports 0.06 s)
[INF] handoff: started
[INF] switching root to os.cern.ch 14ea524afb68e5c82aafa029ce2383792d98580f
[   43.929037] rcu: INFO: rcu_preempt self-detected stall on CPU
[   43.929037] rcu: \t1-....: (1 GPs behind) idle=f05c/1/0x4000000000000000 softirq=3446/3447 fqs=2620
[   68.549036] watchdog: BUG: soft lockup - CPU#1 stuck for 44s! [init:133]
"""
REPEATS = "".join(f"[  {96 + 28 * n}.549133] watchdog: BUG: soft lockup - CPU#1 stuck for {70 + 26 * n}s! [init:133]\n"
                  for n in range(TROUBLE_LINES))


def test_a_lockup_is_shown_from_its_first_report_then_the_last_lines() -> None:
    hint = console_hint(HUNG + REPEATS, lines=3)
    report, _, last = hint.partition("last console lines:\n")
    assert report.startswith("the guest kernel reported trouble:\n[   43.929037] rcu: INFO: rcu_preempt self-detected")
    assert "switching root" not in hint
    assert len(report.strip().split("\n")) == 1 + TROUBLE_LINES
    assert last.split("\n") == REPEATS.strip().split("\n")[-3:]


def test_a_short_report_is_not_shown_twice() -> None:
    hint = console_hint(HUNG, lines=15)
    assert hint.count("soft lockup") == 1
    assert "last console lines" not in hint


def test_a_console_without_trouble_shows_its_last_lines_and_qemus_complaint() -> None:
    console = "".join(f"line {n}\n" for n in range(40))
    hint = console_hint(console, "qemu: warning: one\nqemu-system-x86_64: could not open disk\n", lines=15)
    assert hint == ("last console lines:\n" + "\n".join(f"line {n}" for n in range(25, 40))
                    + "\nQEMU: qemu-system-x86_64: could not open disk")
    assert console_hint("") == "no console output"
