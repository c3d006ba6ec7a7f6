"""The catalog's ``xattr`` blob: ``u8 version, u8 count``, then per entry (sorted by key) ``u8 key length,
value length, key, value`` — the layout of cvmfs's ``XattrList::Serialize``.

Version 1 gives the value length one byte. cvmfs 2.14 writes version 2, where the value length is a
little-endian u16, only when a value is longer than 255 bytes; the same is done here, so that clients
before 2.14, which refuse version 2, still read every entry whose attributes fit version 1."""

from __future__ import annotations

from ucernvm.errors import FormatError

VERSION = 1
VERSION_BIG = 2  # cvmfs 2.14's kVersionBig
MAX_ENTRIES = 255  # the count is one byte
MAX_KEY_LENGTH = 255  # one byte, in both versions
MAX_SMALL_VALUE_LENGTH = 255  # version 1's one-byte value length
MAX_VALUE_LENGTH = 64 * 1024 - 1  # cvmfs's XattrList::Set refuses 64 KiB and more (version 2's u16)


def unstorable(key: str, value: bytes) -> str | None:
    """Why a catalog entry cannot hold the attribute ``key``, or None when it can."""
    raw_key = _raw(key)
    if not raw_key or len(raw_key) > MAX_KEY_LENGTH or b"\0" in raw_key:
        return f"its name is empty, holds a NUL or is longer than {MAX_KEY_LENGTH} bytes"
    if len(value) > MAX_VALUE_LENGTH:
        return f"its value of {len(value)} bytes is longer than the {MAX_VALUE_LENGTH} a catalog entry holds"
    return None


def encode(xattrs: dict[str, bytes]) -> bytes | None:
    if not xattrs:
        return None
    if len(xattrs) > MAX_ENTRIES:
        raise FormatError(f"too many extended attributes ({len(xattrs)} > {MAX_ENTRIES})")
    for key, value in xattrs.items():
        if (reason := unstorable(key, value)) is not None:
            raise FormatError(f"extended attribute {key!r}: {reason}")
    big = any(len(value) > MAX_SMALL_VALUE_LENGTH for value in xattrs.values())
    value_bytes = 2 if big else 1
    out = bytearray([VERSION_BIG if big else VERSION, len(xattrs)])
    for raw_key, value in sorted((_raw(key), value) for key, value in xattrs.items()):  # std::map's byte order
        out += bytes([len(raw_key)]) + len(value).to_bytes(value_bytes, "little") + raw_key + value
    return bytes(out)


def decode(blob: bytes | None) -> dict[str, bytes]:
    if not blob:
        return {}
    if len(blob) < 2 or blob[0] not in (VERSION, VERSION_BIG):
        raise FormatError("malformed extended attribute blob (bad header)")
    count = blob[1]
    value_bytes = 1 if blob[0] == VERSION else 2
    result: dict[str, bytes] = {}
    position = 2
    for _ in range(count):
        if position + 1 + value_bytes > len(blob):
            raise FormatError("malformed extended attribute blob (truncated)")
        key_length = blob[position]
        value_length = int.from_bytes(blob[position + 1:position + 1 + value_bytes], "little")
        position += 1 + value_bytes
        end = position + key_length + value_length
        if end > len(blob):
            raise FormatError("malformed extended attribute blob (truncated)")
        key = blob[position : position + key_length].decode("utf-8", "surrogateescape")
        result[key] = bytes(blob[position + key_length : end])
        position = end
    return result


def _raw(key: str) -> bytes:
    return key.encode("utf-8", "surrogateescape")
