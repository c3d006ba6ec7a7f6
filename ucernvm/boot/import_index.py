"""Imports in the image without a search: the builder lists every module it packed with its file
(image/pyruntime.py), and /init puts a finder over that list ahead of Python's own.

Python's path finder looks for each module in the directories of its search path, trying five file
suffixes in each and stat-ing the directory and the file; under emulation those searches cost a boot
about 0.1 s of its ~200 imports (docs/benchmarks.md, "Boot"). A module the list does not name falls
through to Python's own finders.
"""

from __future__ import annotations

import sys
from importlib.machinery import ExtensionFileLoader, ModuleSpec, SourceFileLoader, SourcelessFileLoader

INDEX_NAME = "imports.index"  # in the image's /usr/lib/pythonX.Y/: one "module file" line per module
LOADERS = {".py": SourceFileLoader, ".pyc": SourcelessFileLoader, ".so": ExtensionFileLoader}


class ImportIndex:
    """A meta path finder answering from a {module name: file} mapping."""

    def __init__(self, files: dict[str, str]) -> None:
        self.files = files

    @classmethod
    def read(cls, path: str) -> ImportIndex:
        with open(path, encoding="utf-8") as stream:
            return cls(dict(line.split(" ", 1) for line in stream.read().splitlines() if line))

    def find_spec(self, name: str, path: object = None, target: object = None) -> ModuleSpec | None:
        location = self.files.get(name)
        if location is None:
            return None
        directory, _, filename = location.rpartition("/")
        loader = LOADERS[location[location.rindex("."):]](name, location)
        package = filename.startswith("__init__.")
        spec = ModuleSpec(name, loader, origin=location, is_package=package)
        spec.has_location = True  # __file__ and __cached__, as Python's own finder sets them
        if package:
            spec.submodule_search_locations = [directory]
        return spec


def install_import_index() -> bool:
    """Put the image's index ahead of Python's finders; False where there is none (not an image)."""
    lib = f"{sys.prefix}/lib/python{sys.version_info.major}.{sys.version_info.minor}"
    try:
        index = ImportIndex.read(f"{lib}/{INDEX_NAME}")
    except FileNotFoundError:
        return False
    sys.meta_path.insert(0, index)
    return True
