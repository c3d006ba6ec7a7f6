"""A logger whose ``logging`` import waits for the first message.

The client's modules report failovers and PAC decisions through ``logging``, which a boot reaches only
when something goes wrong. Importing it brings traceback, linecache, tokenize, textwrap and string
with their regular expressions: 0.07 s of a TCG boot's PID 1 spent before any message exists.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ucernvm.client import logbuffer

if TYPE_CHECKING:
    import logging
    from collections.abc import Callable

_warn: Callable[[str], None] | None = None  # who says this process's warnings, when not logging


def route_warnings(warn: Callable[[str], None] | None) -> None:
    """From now on ``warn`` says this process's warnings instead of ``logging`` (None: logging again): a mount's
    failovers then read as its other warnings, in its log and on its stderr. ``warn`` keeps each for
    user.logbuffer itself."""
    global _warn
    _warn = warn


class LazyLogger:
    """``logging.getLogger(name)``, looked up when first used."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._logger: logging.Logger | None = None

    @property
    def logger(self) -> logging.Logger:
        if self._logger is None:
            import logging

            self._logger = logging.getLogger(self.name)
        return self._logger

    def info(self, message: str, *args: Any) -> None:
        self.logger.info(message, *args)

    def warning(self, message: str, *args: Any) -> None:
        try:
            text = message % args if args else message
        except (TypeError, ValueError):  # logging reports a bad format itself; the warning must still be kept
            text = message
        if _warn is not None:
            _warn(text)
            return
        logbuffer.remember(text)
        self.logger.warning(message, *args)
