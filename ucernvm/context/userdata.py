"""Decoding user-data: gzip (as µCernVM), MIME multipart (each text part, base64 or quoted-printable
included — the original missed a section inside an encoded part)."""

from __future__ import annotations

import gzip
import io
import zlib

TYPE_CHECKING = False
if TYPE_CHECKING:
    from email.message import Message

MAX_USER_DATA = 16 * 1024 * 1024  # EC2's limit is 16 KB, Azure's 64 KB; anything near this is not user-data


GZIP_MAGIC = b"\x1f\x8b"


def decode(data: bytes) -> bytes:
    """Gunzip if it is gzip, all members of it as ``gzip -d`` and cloud-init do; else, and when it cannot
    be unpacked whole (truncated, damaged, more than ``MAX_USER_DATA`` bytes inflated), unchanged."""
    if data[:2] != GZIP_MAGIC:
        return data
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
            plain = stream.read(MAX_USER_DATA + 1)
    except (OSError, EOFError, zlib.error):  # truncated: EOFError; damaged: BadGzipFile or zlib.error
        return data
    return data if len(plain) > MAX_USER_DATA else plain  # a gzip bomb or a huge payload: left to the OS


def is_packed(data: bytes) -> bool:
    """Whether ``decode`` left gzip data as it came, because it cannot be unpacked."""
    return data[:2] == GZIP_MAGIC


LOADER_PART_TYPE = "text/ucernvm"  # a MIME part that holds only the [ucernvm-begin] section


def _mime(data: bytes) -> Message | None:
    """The MIME message *data* is, when it names a multipart type up front; else None (or broken)."""
    if b"multipart/" not in data[:4096].lower():
        return None
    # Imported here: the email package costs a boot that has no multipart user-data ~20 ms natively.
    import email
    import email.policy

    try:
        message = email.message_from_bytes(data, policy=email.policy.compat32)
    except Exception:  # a broken MIME message is still searched as plain text
        return None
    return message


def text_parts(data: bytes) -> list[str]:
    """The texts the ucernvm section may be in, in the order it is looked for: every text part of a MIME
    multipart message, decoded, in the message's order (the first section of the user-data counts), then
    the whole user-data."""
    whole = data.decode("utf-8", "replace")
    message = _mime(data)
    if message is None:
        return [whole]
    texts = []
    for part in message.walk():
        if part.is_multipart() or part.get_content_maintype() != "text":
            continue
        payload = part.get_payload(decode=True)
        if isinstance(payload, bytes):
            try:
                texts.append(decode(payload).decode(part.get_content_charset() or "utf-8", "replace"))
            except (LookupError, ValueError):  # a charset unknown, no text codec, refusing the bytes, or with a NUL
                texts.append(decode(payload).decode("utf-8", "replace"))
    return [*texts, whole]


def for_cloud_init(data: bytes) -> bytes:
    """The user-data the OS's cloud-init gets: without ``text/ucernvm`` MIME parts, which hold only the
    loader's settings, applied by then. cloud-init has no handler for them: it logs "Unhandled unknown
    content-type" on every boot, and from 23.4 on reports the instance as degraded (``cloud-init status``
    exits 2). Everything else comes through unchanged, and so does user-data without such parts, or that
    cannot be written out again without them."""
    if LOADER_PART_TYPE.encode() not in data.lower():
        return data
    message = _mime(data)
    if message is None or not message.is_multipart() or not _drop_loader_parts(message):
        return data
    if not any(not part.is_multipart() for part in message.walk()):
        return b""  # nothing was for cloud-init
    # Named here, not left to Message.as_bytes, so that the image is known to carry it (tests/test_image.py).
    from email.errors import MessageError
    from email.generator import BytesGenerator

    out = io.BytesIO()
    try:
        BytesGenerator(out, mangle_from_=False).flatten(message)
    except (MessageError, ValueError):  # parsed leniently but not writable back: cloud-init gets it as it came
        return data
    return out.getvalue()


def _drop_loader_parts(message: Message) -> bool:
    """Remove the ``text/ucernvm`` parts of a multipart message, nested ones too; whether any were."""
    parts = message.get_payload()
    kept = [part for part in parts if part.get_content_type() != LOADER_PART_TYPE]
    dropped = len(kept) < len(parts)
    for part in kept:
        if part.is_multipart():
            dropped = _drop_loader_parts(part) or dropped
    message.set_payload(kept)
    return dropped
