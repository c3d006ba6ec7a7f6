"""The catalog's ``xattr`` blob: ``u8 version (1), u8 count``, then per entry (sorted by key)
``u8 key length, u8 value length, key, value`` — the layout of cvmfs's ``XattrList::Serialize``.

cvmfs 2.14 writes version 2 where a value is longer than 255 bytes: the value length is then a
little-endian u16. It is read here; what is written is version 1, which every cvmfs client reads."""

from __future__ import annotations

from ucernvm.errors import FormatError

VERSION = 1
VERSION_BIG = 2  # cvmfs 2.14's kVersionBig
MAX_ENTRIES = 255  # the count is one byte
MAX_LENGTH = 255


def encode(xattrs: dict[str, bytes]) -> bytes | None:
    if not xattrs:
        return None
    if len(xattrs) > MAX_ENTRIES:
        raise FormatError(f"too many extended attributes ({len(xattrs)} > {MAX_ENTRIES})")
    out = bytearray([VERSION, len(xattrs)])
    for key in sorted(xattrs):
        raw_key, value = key.encode("utf-8", "surrogateescape"), xattrs[key]
        if not raw_key or len(raw_key) > MAX_LENGTH or len(value) > MAX_LENGTH:
            raise FormatError(f"extended attribute {key!r} is empty or longer than {MAX_LENGTH} bytes")
        out += bytes([len(raw_key), len(value)]) + raw_key + value
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
