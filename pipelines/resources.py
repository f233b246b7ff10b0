"""Resource instances for the code location, built from :class:`Settings`.

The warehouse is accessed with explicit SQL per partition (delete then insert) rather than
an IO manager: the ready-made Polars IO managers fail on read with polars 2.1 and duckdb 2.0.
"""

from __future__ import annotations

from typing import Any

from assets.resources import (
    FamilyViewSettings,
    LandingZone,
    LinkageSettings,
    OperationalStore,
    Warehouse,
)
from pipelines.settings import Settings
from warehouse.curated_config import load_curated_config


def build_resources(settings: Settings) -> dict[str, Any]:
    publishing = load_curated_config(settings.curated_config).publishing
    return {
        "landing": LandingZone(path=str(settings.landing)),
        "warehouse": Warehouse(path=str(settings.warehouse)),
        "operational": OperationalStore(url=settings.operational_url),
        "linkage": LinkageSettings(model_dir=str(settings.model_dir)),
        "family_view": FamilyViewSettings(
            published_dir=str(settings.published_dir),
            data_dir=str(settings.data_dir),
            keep=publishing.keep,
            analysts_group_read=publishing.analysts_group_read,
        ),
    }
