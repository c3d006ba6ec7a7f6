"""The mount's last messages (user.logbuffer): bounded, dated, and kept whatever a warning's format."""

from __future__ import annotations

import re

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
