"""Resource instances for the code location, built from :class:`Settings`.

The warehouse is dagster-duckdb's ``DuckDBResource``: explicit SQL per partition (delete
then insert) rather than an IO manager, because the ready-made Polars IO managers fail on
read with polars 2.1 and duckdb 2.0.
"""

from __future__ import annotations

from typing import Any

from dagster_duckdb import DuckDBResource

from assets.resources import LandingZone
from pipelines.settings import Settings


def build_resources(settings: Settings) -> dict[str, Any]:
    settings.warehouse.parent.mkdir(parents=True, exist_ok=True)
    return {
        "landing": LandingZone(path=str(settings.landing)),
        "duckdb": DuckDBResource(database=str(settings.warehouse)),
    }
