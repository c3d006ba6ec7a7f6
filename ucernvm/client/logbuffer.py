"""The mount's last messages, kept in memory for the ``user.logbuffer`` attribute (as cvmfs's).

A site operator asks a running mount what went wrong (``attr -g logbuffer /cvmfs/<repo>``) without
finding its log file: the daemon's error reports and the fetcher's failover warnings land here too.
"""

from __future__ import annotations

import threading
import time
from collections import deque

from ucernvm.utc import utc_time

KEPT = 10  # messages, as cvmfs

_messages: deque[tuple[float, str]] = deque(maxlen=KEPT)
_lock = threading.Lock()


def remember(message: str) -> None:
    with _lock:
        _messages.append((time.time(), message))


def recent() -> str:
    """The kept messages, oldest first, one per line as cvmfs prints them: ``[date UTC] message``."""
    with _lock:
        kept = list(_messages)
    return "".join(f"[{utc_time(when)}] {message}\n" for when, message in kept)
