"""zlib compression as CernVM-FS stores objects (``deflateInit(Z_DEFAULT_COMPRESSION)``)."""

from __future__ import annotations

import zlib

from ucernvm.errors import FormatError

# zlib's default level: with it the fixture's objects are reproduced byte for byte.
DEFAULT_LEVEL = 6


def compress(data: bytes | memoryview, level: int = DEFAULT_LEVEL) -> bytes:
    return zlib.compress(data, level)


def decompress(data: bytes | memoryview, expected_size: int | None = None) -> bytes:
    """Inflate a whole object; a truncated or corrupt stream, or a size mismatch, is a FormatError."""
    decompressor = zlib.decompressobj()
    try:
        plain = decompressor.decompress(data)
        plain += decompressor.flush()
    except zlib.error as error:
        raise FormatError(f"object does not decompress: {error}") from None
    if not decompressor.eof:
        raise FormatError("object is truncated: the zlib stream does not end")
    if decompressor.unused_data:
        raise FormatError("object has trailing bytes after its zlib stream")
    if expected_size is not None and len(plain) != expected_size:
        raise FormatError(f"object decompresses to {len(plain)} bytes, expected {expected_size}")
    return plain
