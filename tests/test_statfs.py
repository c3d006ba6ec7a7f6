"""statfs of a mounted snapshot, answered in process: what it asks the catalogs, and how often."""

from __future__ import annotations

from pathlib import Path

from test_listing_ahead import filesystem_of_tree


def test_statfs_asks_the_catalogs_once_for_their_counters(tmp_path: Path, keys_dir: Path) -> None:
    """A snapshot never changes: its entries are counted at the first statfs, not at every df."""
    filesystem, _ = filesystem_of_tree(tmp_path, keys_dir)
    try:
        first = filesystem.statfs()
        statements: list[str] = []
        for catalog in filesystem.repository.loaded_catalogs():
            catalog.connection.set_trace_callback(statements.append)
        assert filesystem.statfs() == first
        assert statements == []
        filesystem.repository.catalog_for("/data/sub")  # a nested catalog loaded
        assert filesystem.statfs().free_files < first.free_files
    finally:
        filesystem.destroy()
