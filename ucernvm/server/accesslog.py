"""Access log lines as Apache's ``combined`` format writes them, on standard error.

``%h %l %u %t "%r" %>s %b "%{Referer}i" "%{User-Agent}i"``: what a web server operator reads, and
what log tools parse. Text from the client is escaped as Apache escapes it (``\\"``, ``\\\\``,
``\\xhh`` for control and non-ASCII characters), so a request cannot forge or garble log lines.
A line is written with a single system call, and a log that cannot be written (a full disk, a
closed pipe) is given up silently: logging never stops or breaks serving.
"""

from __future__ import annotations

import os
import re
import time

_UNSAFE = re.compile(r'[^\x20-\x7e]|["\\]')
_NAMED = {"\b": "\\b", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v", '"': '\\"', "\\": "\\\\"}


def escape(text: str) -> str:
    """Apache's ``ap_escape_logitem``; characters beyond latin-1 are escaped by their UTF-8 bytes."""
    return _UNSAFE.sub(lambda match: _escape_character(match[0]), text)


def _escape_character(character: str) -> str:
    named = _NAMED.get(character)
    if named is not None:
        return named
    return "".join(f"\\x{byte:02x}" for byte in character.encode("utf-8" if ord(character) > 0xFF else "latin-1"))


def line(client: str, request_line: str, status: int, size: int,
         referer: str | None = None, user_agent: str | None = None) -> str:
    """One log line (without its newline); ``size`` is the body's, ``-`` when empty as ``%b``."""
    when = time.strftime("%d/%b/%Y:%H:%M:%S %z")
    return (f'{client} - - [{when}] "{escape(request_line)}" {status} {size or "-"} '
            f'"{escape(referer or "-")}" "{escape(user_agent or "-")}"')


def write(text: str) -> None:
    """Append one line to standard error, whole, or not at all when it cannot be written."""
    try:
        os.write(2, (text + "\n").encode("ascii"))
    except OSError:
        pass  # a full disk or a reader gone: serving goes on without its log
