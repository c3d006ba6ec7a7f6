"""Decoding user-data: gzip (as µCernVM), MIME multipart (each text part, base64 or quoted-printable
included — the original missed a section inside an encoded part)."""

from __future__ import annotations

import gzip
import zlib

MAX_USER_DATA = 16 * 1024 * 1024  # EC2's limit is 16 KB, Azure's 64 KB; anything near this is not user-data


def decode(data: bytes) -> bytes:
    """Gunzip if it is gzip (at most ``MAX_USER_DATA`` inflated bytes), else return it unchanged."""
    if data[:2] != b"\x1f\x8b":
        return data
    try:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        plain = inflater.decompress(data, MAX_USER_DATA)
        if inflater.unconsumed_tail:
            return data  # a gzip bomb or a huge payload: leave it to the OS
        return plain
    except (zlib.error, gzip.BadGzipFile):
        return data


def text_parts(data: bytes) -> list[str]:
    """The texts the ucernvm section may be in: the whole user-data, and every text part of a MIME
    multipart message, decoded."""
    texts = [data.decode("utf-8", "replace")]
    if b"multipart/" not in data[:4096].lower():
        return texts
    # Imported here: the email package costs a boot that has no multipart user-data ~20 ms natively.
    import email
    import email.policy

    try:
        message = email.message_from_bytes(data, policy=email.policy.compat32)
    except Exception:  # a broken MIME message is still searched as plain text
        return texts
    for part in message.walk():
        if part.is_multipart() or part.get_content_maintype() != "text":
            continue
        payload = part.get_payload(decode=True)
        if isinstance(payload, bytes):
            try:
                texts.insert(0, decode(payload).decode(part.get_content_charset() or "utf-8", "replace"))
            except LookupError:  # an unknown charset name
                texts.insert(0, decode(payload).decode("utf-8", "replace"))
    return texts
