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
_info: Callable[[str], None] | None = None  # and its notes (PAC and geo API decisions)


def route(warn: Callable[[str], None] | None, info: Callable[[str], None] | None = None) -> None:
    """From now on ``warn`` says this process's warnings and ``info`` its notes (none without it) instead of
    ``logging``; ``route(None)`` gives them back to ``logging``. A mount's failovers then read as its other
    warnings, in its log and on its stderr, and a boot's as its log's lines; nor does a routed process import
    ``logging`` (a boot's daemon, after the switch of root, could not). ``warn`` keeps each warning for
    user.logbuffer itself."""
    global _warn, _info
    _warn, _info = warn, info


def _text(message: str, args: tuple[Any, ...]) -> str:
    try:
        return message % args if args else message
    except (TypeError, ValueError):  # logging reports a bad format itself; the message must still be kept
        return message


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
        if _warn is None:
            self.logger.info(message, *args)
        elif _info is not None:
            _info(_text(message, args))

    def warning(self, message: str, *args: Any) -> None:
        if _warn is not None:
            _warn(_text(message, args))
            return
        logbuffer.remember(_text(message, args))
        self.logger.warning(message, *args)
