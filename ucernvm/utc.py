"""A moment as every message of the project writes it, cvmfs's way: ``2026-11-28 12:00:00 UTC``.

A module of its own, importing only ``time``: PID 1 writes it from its first stages on."""

from __future__ import annotations

import time


def utc_time(seconds: float) -> str:
    """``seconds`` since the epoch as ``YYYY-MM-DD hh:mm:ss UTC``."""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))
