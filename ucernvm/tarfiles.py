"""The standard library's tar module with extraction filters (PEP 706), on every supported interpreter.

The filters came with Python 3.11.4. Debian 12's own interpreter, the one the image carries (it runs
the boot's Python faster than a generic build, docs/benchmarks.md), is 3.11.2: there the backport of
the newer module (the ``backports.tarfile`` package) stands in, so that ``filter="tar"`` refuses
'..' and paths through links out of the target everywhere. Chosen by version, so that an image
carries one of the two modules, not both.
"""

import sys

if sys.version_info >= (3, 11, 4):
    import tarfile
else:
    from backports import tarfile

__all__ = ["tarfile"]
