"""The ``[ucernvm-begin]`` … ``[ucernvm-end]`` section of user-data.

Compatible with µCernVM's parser (first block only, ``key=value`` split at the first '=', key case
ignored, yes/no booleans handled by the settings table) and robust where it was not: CR-LF line ends,
a leading byte order mark, indented markers and one level of quotes are accepted, and values are never given to a shell.
µCernVM sourced the section as shell assignments, so a ``#`` line is no setting and `` # …`` after a
value (outside quotes) is a comment; a ``#`` inside a word, as in ``key=a#b``, is not.
"""

from __future__ import annotations

BEGIN = "[ucernvm-begin]"
END = "[ucernvm-end]"
MAX_VALUE = 64 * 1024  # cernvm_inject carries a base64 tarball; anything longer is not a setting


def parse_section(text: str) -> tuple[dict[str, str], list[str]]:
    """The first section's keys and values, and warnings; a malformed section yields no keys."""
    text = text.removeprefix("\ufeff")  # the byte order mark Windows editors start UTF-8 files with
    lines = [line.strip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    try:
        start = lines.index(BEGIN)
    except ValueError:
        return {}, []
    try:
        end = lines.index(END, start + 1)
    except ValueError:
        return {}, [f"the {BEGIN} section has no {END}: ignored"]
    values: dict[str, str] = {}
    warnings = []
    for number, line in enumerate(lines[start + 1 : end], start + 2):
        if not line or line.startswith("#"):
            continue
        key, equals, value = line.partition("=")
        key, value = key.strip(), _unquote(_uncomment(value).strip())
        if not equals or not key or not key.replace("_", "").replace("-", "").isalnum():
            warnings.append(f"line {number} of the {BEGIN} section is not key=value: ignored")
            continue
        if "\x00" in value or len(value) > MAX_VALUE:
            warnings.append(f"the value of {key!r} is binary or too long: ignored")
            continue
        values[key.lower()] = value
    return values, warnings


def _uncomment(value: str) -> str:
    """The value without a trailing comment: a '#' that starts a word outside quotes, as the shell reads it."""
    quote = ""
    for index, char in enumerate(value):
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char == "#" and index > 0 and value[index - 1] in " \t":
            return value[:index]
    return value


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value
