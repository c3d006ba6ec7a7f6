"""Content hashes and object names of the CernVM-FS content-addressed store.

A hash is written as lower-case hex followed by the algorithm id (``""`` for SHA-1, ``-rmd160``,
``-shake128``); the object of a hash lives at ``data/<2 hex>/<rest><algorithm id><type suffix>``.
"""

from __future__ import annotations

import enum
import os
import sys
from collections.abc import Iterable
from typing import Any, BinaryIO

from ucernvm.errors import FormatError
from ucernvm.records import NamedTuple

# Inputs up to SMALL (certificates, signed lines, a catalog's path keys, names, small objects) are hashed
# by the interpreter's built-in modules unless OpenSSL's (hashlib) are loaded already; larger ones by
# OpenSSL's, 8x faster on SHA-1. Loading OpenSSL's 4.7 MB libcrypto costs a TCG boot 0.06-0.1 s in each
# process that does, and a later boot's loader hashes nothing larger. The built-in MD5 is the faster one
# on path keys.
try:
    from _md5 import md5
    from _sha1 import sha1
    from _sha256 import sha256
    from _sha3 import shake_128
except ImportError:  # an interpreter built with OpenSSL's hashes only
    from hashlib import md5, sha1, sha256, shake_128

SMALL = 1 << 16  # bytes up to which the built-in implementations hash

DIGEST_SIZE = 20


class HashAlgorithm(enum.Enum):
    """The content hash algorithms; ``value`` is cvmfs's ``shash::Algorithms`` number."""

    SHA1 = 1
    RMD160 = 2
    SHAKE128 = 3

    @property
    def id_suffix(self) -> str:
        return _ID_SUFFIX[self]

    @property
    def catalog_flag_bits(self) -> int:
        """Bits 8..10 of a catalog entry's flags carry ``algorithm - 1``."""
        return (self.value - 1) << 8

    @classmethod
    def from_catalog_flags(cls, flags: int) -> HashAlgorithm:
        bits = (flags >> 8) & 0x7
        if bits < len(_BY_CATALOG_BITS):  # a tuple, not cls(number): a mount asks for every file it opens
            return _BY_CATALOG_BITS[bits]
        raise FormatError(f"unknown hash algorithm {bits + 1} in catalog flags {flags:#x}")

    @classmethod
    def from_name(cls, name: str) -> HashAlgorithm:
        """The ``CVMFS_HASH_ALGORITHM`` spelling: sha1, rmd160 or shake128."""
        try:
            return {"sha1": cls.SHA1, "rmd160": cls.RMD160, "shake128": cls.SHAKE128}[name.lower()]
        except KeyError:
            raise FormatError(f"unknown hash algorithm {name!r} (use sha1, rmd160 or shake128)") from None

    def digest(self, data: bytes | memoryview) -> bytes:
        """The 20-byte digest of ``data`` (SHAKE-128's truncated to 160 bits)."""
        hashed = self.new(len(data))
        hashed.update(data)
        return self.digest_of(hashed)

    def new(self, size: int | None = None) -> Any:
        """An incremental hash for ``size`` bytes (None: unknown, maybe large); ``digest_of`` ends it."""
        if size is not None and size <= SMALL and self in _BUILT_IN and "_hashlib" not in sys.modules:
            return _BUILT_IN[self]()
        import hashlib

        try:
            return hashlib.new(_OPENSSL_NAME[self])
        except ValueError:
            raise FormatError(f"this Python's hashlib cannot compute {self.name}") from None

    def digest_of(self, hashed: Any) -> bytes:
        """The 20-byte digest of what ``hashed`` (from ``new``) was given."""
        return hashed.digest(DIGEST_SIZE) if self is HashAlgorithm.SHAKE128 else hashed.digest()

    def digest_of_file(self, stored: BinaryIO, piece_size: int) -> bytes:
        """The digest of an open file's bytes from its position on, read ``piece_size`` at a time."""
        hashed = self.new(os.fstat(stored.fileno()).st_size)
        while piece := stored.read(piece_size):
            hashed.update(piece)
        return self.digest_of(hashed)


_BY_CATALOG_BITS = (HashAlgorithm.SHA1, HashAlgorithm.RMD160, HashAlgorithm.SHAKE128)
_ID_SUFFIX = {HashAlgorithm.SHA1: "", HashAlgorithm.RMD160: "-rmd160", HashAlgorithm.SHAKE128: "-shake128"}
_BUILT_IN: dict[HashAlgorithm, Any] = {HashAlgorithm.SHA1: sha1, HashAlgorithm.SHAKE128: shake_128}
_OPENSSL_NAME = {HashAlgorithm.SHA1: "sha1", HashAlgorithm.RMD160: "ripemd160", HashAlgorithm.SHAKE128: "shake_128"}


class ObjectType(enum.Enum):
    """The type suffix of an object name in the store."""

    FILE = ""
    CATALOG = "C"
    HISTORY = "H"
    CERTIFICATE = "X"
    PARTIAL = "P"
    METAINFO = "M"
    MICRO_CATALOG = "L"


# A named tuple cannot override __new__, so the digest size is checked in a subclass.
class _ContentHashFields(NamedTuple):
    algorithm: HashAlgorithm
    digest: bytes


class ContentHash(_ContentHashFields):
    """A content digest together with its algorithm."""

    __slots__ = ()

    def __new__(cls, algorithm: HashAlgorithm, digest: bytes) -> ContentHash:
        if len(digest) != DIGEST_SIZE:
            raise FormatError(f"a content hash has {DIGEST_SIZE} bytes, not {len(digest)}")
        return tuple.__new__(cls, (algorithm, digest))

    @classmethod
    def _make(cls, iterable: Iterable[Any]) -> ContentHash:
        return cls(*iterable)  # checked too: _replace builds through _make

    @classmethod
    def parse(cls, text: str) -> ContentHash:
        """Parse ``<40 hex>[-rmd160|-shake128]``, the form used in manifests and catalogs."""
        hex_part, dash, algorithm_name = text.strip().partition("-")
        algorithm = HashAlgorithm.from_name(algorithm_name) if dash else HashAlgorithm.SHA1
        if dash and algorithm is HashAlgorithm.SHA1:
            raise FormatError(f"malformed content hash {text!r}")
        if len(hex_part) != 2 * DIGEST_SIZE:
            raise FormatError(f"malformed content hash {text!r}: expected {2 * DIGEST_SIZE} hex digits")
        try:
            digest = bytes.fromhex(hex_part)
        except ValueError:
            raise FormatError(f"malformed content hash {text!r}: not hexadecimal") from None
        if hex_part != hex_part.lower():
            raise FormatError(f"malformed content hash {text!r}: hex digits must be lower case")
        return cls(algorithm, digest)

    @classmethod
    def of(cls, data: bytes | memoryview, algorithm: HashAlgorithm = HashAlgorithm.SHA1) -> ContentHash:
        return cls(algorithm, algorithm.digest(data))

    @property
    def hex(self) -> str:
        """The textual form: hex digits plus the algorithm id."""
        return self.digest.hex() + self.algorithm.id_suffix

    def object_path(self, object_type: ObjectType = ObjectType.FILE) -> str:
        """The object's path relative to the repository root."""
        text = self.hex
        return f"data/{text[:2]}/{text[2:]}{object_type.value}"

    def matches(self, data: bytes | memoryview) -> bool:
        return self.algorithm.digest(data) == self.digest

    def __str__(self) -> str:
        return self.hex
