"""pyroute2 without its package ``__init__``: the boot imports only the submodules it uses.

``import pyroute2.anything`` first runs ``pyroute2/__init__.py``, which imports every API the library
has (NDB with sqlite3, unittest.mock, asyncio, ssl, multiprocessing...): 0.2 s natively, 2.6-4.3 s
under TCG emulation. The network stage needs only pyroute2's message classes (rtnetlink, DHCP,
Ethernet/IPv4/UDP). ``load()`` registers the package module without executing its body, so those
submodules import alone; the first use of a top-level name (``from pyroute2 import IPRoute``
anywhere else in the process) runs the real ``__init__`` then, so other users still see the whole
package. benchmarks/bench_network_imports.py measures the difference.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType
from typing import Any

from ucernvm.errors import ConfigError


def load() -> ModuleType:
    """The ``pyroute2`` package module, registered (once) with its ``__init__`` deferred."""
    if "pyroute2" in sys.modules:
        return sys.modules["pyroute2"]
    spec = importlib.util.find_spec("pyroute2")
    if spec is None or spec.loader is None:
        raise ConfigError("pyroute2 is not installed", "pip install 'pyroute2>=0.9.7,<0.10' (the image builder packs it)")
    package = importlib.util.module_from_spec(spec)

    def attribute(name: str) -> Any:
        # PEP 562 hook, reached by names not yet set: ``from pyroute2 import config`` (a submodule,
        # imported alone) or a name the package body defines (run the body then, once).
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return importlib.import_module(f"pyroute2.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"pyroute2.{name}":
                raise
        del package.__dict__["__getattr__"]
        spec.loader.exec_module(package)  # type: ignore[union-attr]
        return getattr(package, name)

    package.__getattr__ = attribute  # type: ignore[method-assign]
    sys.modules["pyroute2"] = package
    return package
