"""One fixed date in every date field of an ISO 9660 image, so that the same files make the same bytes.

pycdlib stamps the time of writing, in the local time zone, into the volume descriptors (ECMA-119 8.4.26.1),
every directory record (9.1.5) and every Rock Ridge TF entry (RRIP 4.1.6), and offers no way to choose it.
These are all the dates of the images ``write_iso`` makes (ISO 9660 with Rock Ridge and Joliet, no UDF, no
El Torito); path tables and file data hold none.
"""

from __future__ import annotations

from datetime import datetime, timezone

SECTOR = 2048
FIRST_DESCRIPTOR = 16
PRIMARY, SUPPLEMENTARY, TERMINATOR = 1, 2, 255
DESCRIPTOR_DATES = (813, 830, 864)  # creation, modification, effective; expiration (847) stays unset
ROOT_RECORD = 156
RECORD_DATE = 18
DIRECTORY_FLAG = 0x02
TF_LONG_FORM = 0x80
# a directory record has one byte for the years since 1900
LAST_DATE = datetime(2155, 12, 31, 23, 59, 59, tzinfo=timezone.utc)


class Stamps:
    """A date in UTC in the two formats of ISO 9660: 7 binary bytes (directory records, short TF entries) and
    16 digits with a time zone byte (volume descriptors, long TF entries)."""

    def __init__(self, when: datetime) -> None:
        utc = when.astimezone(timezone.utc)
        self.short = bytes([utc.year - 1900, utc.month, utc.day, utc.hour, utc.minute, utc.second, 0])
        self.long = utc.strftime("%Y%m%d%H%M%S00").encode() + b"\x00"  # hundredths, then offset 0 (UTC)


def stamp_dates(image: bytearray, stamps: Stamps) -> None:
    """Write one date into every date field of ``image``, in place."""
    sector = FIRST_DESCRIPTOR
    while image[sector * SECTOR] != TERMINATOR:
        descriptor = sector * SECTOR
        if image[descriptor] in (PRIMARY, SUPPLEMENTARY):
            for offset in DESCRIPTOR_DATES:
                image[descriptor + offset:descriptor + offset + 17] = stamps.long
            root = descriptor + ROOT_RECORD  # a copy of the root directory's "." record
            image[root + RECORD_DATE:root + RECORD_DATE + 7] = stamps.short
            _Tree(image, stamps, _extent(image, root) * SECTOR).stamp_directory(root)
        sector += 1


class _Tree:
    """A directory tree; its Rock Ridge entries only if its root directory's "." record starts with the SUSP
    SP entry (the Joliet tree has none), which also says how many bytes every other system use area skips."""

    def __init__(self, image: bytearray, stamps: Stamps, dot: int) -> None:
        self.image, self.stamps, self.dot = image, stamps, dot
        sp = _system_use(image, dot)
        self.susp = image[sp:sp + 2] == b"SP" and image[sp + 4:sp + 6] == b"\xbe\xef"
        self.skip = image[sp + 6] if self.susp else 0

    def stamp_directory(self, parent: int) -> None:
        """Every record of the directory that the record at ``parent`` points to, and below it."""
        image = self.image
        offset = _extent(image, parent) * SECTOR
        end = offset + int.from_bytes(image[parent + 10:parent + 14], "little")
        while offset < end:
            length = image[offset]
            if length == 0:  # a record never crosses a sector: the rest of this one is padding
                offset = (offset // SECTOR + 1) * SECTOR
                continue
            image[offset + RECORD_DATE:offset + RECORD_DATE + 7] = self.stamps.short
            if self.susp:
                first = _system_use(image, offset) + (0 if offset == self.dot else self.skip)
                _stamp_susp(image, first, offset + length, self.stamps)
            name = image[offset + 33:offset + 33 + image[offset + 32]]
            if image[offset + 25] & DIRECTORY_FLAG and name not in (b"\0", b"\1"):  # not "." or ".."
                self.stamp_directory(offset)
            offset += length


def _stamp_susp(image: bytearray, offset: int, end: int, stamps: Stamps) -> None:
    """TF entries of a system use area, following its continuation (CE) area."""
    while offset + 4 <= end and image[offset + 2] >= 4 and image[offset:offset + 2] != b"ST":
        signature, length = image[offset:offset + 2], image[offset + 2]
        if signature == b"TF":
            flags = image[offset + 4]
            stamp = stamps.long if flags & TF_LONG_FORM else stamps.short
            for index in range(bin(flags & 0x7F).count("1")):
                at = offset + 5 + index * len(stamp)
                image[at:at + len(stamp)] = stamp
        elif signature == b"CE":
            area = _both_endian(image, offset + 4) * SECTOR + _both_endian(image, offset + 12)
            _stamp_susp(image, area, area + _both_endian(image, offset + 20), stamps)
        offset += length


def _extent(image: bytearray, record: int) -> int:
    return _both_endian(image, record + 2)


def _both_endian(image: bytearray, offset: int) -> int:
    """A 32-bit number recorded both ways (ECMA-119 7.3.3); its little-endian half."""
    return int.from_bytes(image[offset:offset + 4], "little")


def _system_use(image: bytearray, record: int) -> int:
    """Where the system use area of the record at ``record`` starts: after its name and a padding byte
    that keeps it at an even offset."""
    name_length = image[record + 32]
    return record + 33 + name_length + (1 - name_length % 2)
