"""Nested catalogs downloaded ahead of use: two levels below what is loaded, a bounded number at a time.

A walk (``find``, ``ls -R``) goes into nested catalogs one after another, each needing its catalog
before the walker can go on. Downloading a loaded catalog's nested catalogs in the background hides
one level; the level below them would still be fetched only as the walker enters their parents, a
round trip to the server each. So a catalog downloaded ahead is also opened, and its own nested
catalogs downloaded in turn (with 20 ms per request, a first walk of a tree of 67 catalogs went from
2.1 s to 1.4-1.5 s; without latency it cost nothing measurable). What is downloaded and not yet
loaded is bounded (``budget``): a repository with thousands of nested catalogs gets that many ahead
of use, not all of them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from ucernvm.client.repository import Repository
from ucernvm.cvmfs.catalog import Catalog, NestedCatalogRef
from ucernvm.cvmfs.hashing import ContentHash
from ucernvm.errors import UcernvmError

LEVELS = 2  # below each loaded catalog
BUDGET = 64  # catalogs downloaded ahead and not loaded yet, at most


class CatalogsAhead:
    """Call ``loaded`` with every catalog the repository loads; downloads run through ``submit``."""

    def __init__(self, repository: Repository, submit: Callable[..., None], budget: int = BUDGET) -> None:
        self._repository = repository
        self._submit = submit
        self._budget = budget
        self._lock = threading.Lock()
        self._used: set[ContentHash] = set()
        self._ahead: set[ContentHash] = set()  # downloading or downloaded, not loaded

    def loaded(self, catalog: Catalog) -> None:
        if catalog.content_hash is not None:
            with self._lock:
                self._ahead.discard(catalog.content_hash)
                self._used.add(catalog.content_hash)
        self._want(catalog.nested_catalogs(), LEVELS - 1)

    def _want(self, references: list[NestedCatalogRef], deeper: int) -> None:
        for reference in references:
            if reference.bind:  # a tag's snapshot (/.cvmfs/snapshots): its catalog comes when it is entered
                continue
            with self._lock:
                if len(self._ahead) >= self._budget:
                    return
                if reference.content_hash in self._used or reference.content_hash in self._ahead:
                    continue
                self._ahead.add(reference.content_hash)
            self._submit(self._download, reference, deeper)

    def _download(self, reference: NestedCatalogRef, deeper: int) -> None:
        try:
            path = self._repository.prefetch_catalog(reference)
            if deeper and path is not None:
                catalog = Catalog.open(path, reference.content_hash)
                try:
                    nested = catalog.nested_catalogs()
                finally:
                    catalog.close()
                self._want(nested, deeper - 1)
        except (UcernvmError, OSError):
            pass  # the lookup that needs the catalog reports the error


__all__ = ["BUDGET", "LEVELS", "CatalogsAhead"]
