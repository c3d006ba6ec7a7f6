"""The mount's last messages (user.logbuffer): bounded, dated, and kept whatever a warning's format."""

from __future__ import annotations

import re
import subprocess
import sys

from ucernvm.client import logbuffer
from ucernvm.client.lazylog import LazyLogger


def test_the_last_ten_messages_are_kept_oldest_first_with_their_utc_date() -> None:
    for number in range(25):
        logbuffer.remember(f"message {number}")
    lines = logbuffer.recent().splitlines()
    assert len(lines) == logbuffer.KEPT == 10
    assert [line.split("] ", 1)[1] for line in lines] == [f"message {number}" for number in range(15, 25)]
    assert all(re.fullmatch(r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\] message \d+", line) for line in lines)


def test_a_warning_is_kept_formatted_and_a_badly_formatted_one_still_kept() -> None:
    log = LazyLogger("ucernvm.test.logbuffer")
    log.logger.disabled = True  # what logging itself makes of a bad format is not this test's subject
    log.warning("switching server from %s to %s (%s)", "http://a", "http://b", "timeout")
    log.warning("a format with %s %s and one argument", "only")
    lines = logbuffer.recent().splitlines()
    assert lines[-2].endswith("] switching server from http://a to http://b (timeout)")
    assert lines[-1].endswith("] a format with %s %s and one argument")


def test_a_routed_process_says_warnings_and_notes_through_its_routes_without_importing_logging() -> None:
    # In a fresh interpreter: whether logging was imported is the point (a boot's daemon cannot import it).
    script = """
import sys
from ucernvm.client import lazylog
said = []
lazylog.route(lambda text: said.append(("warn", text)), lambda text: said.append(("info", text)))
log = lazylog.LazyLogger("ucernvm.test.route")
log.warning("switching proxy from %s to %s", "a", "b")
log.info("geo order from %s: %s", "s1", "s2, s1")
lazylog.route(lambda text: said.append(("warn", text)))
log.info("dropped without an info route")
print(said, "logging" in sys.modules)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ("[('warn', 'switching proxy from a to b'), ('info', 'geo order from s1: s2, s1')]"
                                     " False")
    assert result.stderr == ""
