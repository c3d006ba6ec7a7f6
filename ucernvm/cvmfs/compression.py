"""zlib compression of stored objects.

Every reader (cvmfs2, this project) inflates objects with plain zlib, so the writer may pick any zlib
encoder. ``cvmfs`` is zlib level 6, cvmfs_server's own choice (it reproduces real objects byte for
byte); ``fast`` is ISA-L's deflate at level 2, measured 10-25x faster at a 5-10 % larger size, the
publisher's default; ``none`` stores file data as is (the catalog records that per file).
"""

from __future__ import annotations

import enum
import zlib

from isal import isal_zlib


CVMFS_LEVEL = 6  # zlib's Z_DEFAULT_COMPRESSION, what cvmfs_server uses
FAST_LEVEL = 2


class Compression(enum.Enum):
    FAST = "fast"
    CVMFS = "cvmfs"
    NONE = "none"

    def compress(self, data: bytes | memoryview) -> bytes:
        """Compressed bytes; ``NONE`` still compresses (catalogs and history are always zlib)."""
        if self is Compression.CVMFS:
            return zlib.compress(data, CVMFS_LEVEL)
        return isal_zlib.compress(data, FAST_LEVEL)

