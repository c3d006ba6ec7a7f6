"""Stratum server: static repository files plus the geo API."""

from __future__ import annotations

from ucernvm.server.geo import GeoDatabase, GeoSorter
from ucernvm.server.stratum import StratumServer

__all__ = ["GeoDatabase", "GeoSorter", "StratumServer"]
