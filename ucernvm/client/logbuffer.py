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
_held: list[str] | None = None  # every message since hold(), for a log that opens later


def remember(message: str) -> None:
    with _lock:
        _messages.append((time.time(), message))
        if _held is not None:
            _held.append(message)


def hold() -> None:
    """Keep every message from now on, however many, until ``held()``: ``ucernvm mount``'s, until its daemon's
    log opens."""
    global _held
    with _lock:
        _held = []


def held() -> list[str]:
    """The messages since ``hold()``, which keeps none from now on."""
    global _held
    with _lock:
        messages, _held = _held or [], None
    return messages


def recent() -> str:
    """The kept messages, oldest first, one per line as cvmfs prints them: ``[date UTC] message``."""
    with _lock:
        kept = list(_messages)
    return "".join(f"[{utc_time(when)}] {message}\n" for when, message in kept)
