"""A small generated county taken through load, linkage and one published Family View.

Built once per test session (``published_county`` in conftest) and shared by the access
layer, policy matrix, publishing and API tests; those tests only read it. Tests that
publish or roll back work on their own copy (:meth:`FamilyViewCounty.copy`).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import duckdb

from assets.linkage import run_linkage
from matching.config import load_linkage_config
from synth.generate import generate_county
from warehouse.curated_config import CuratedConfig, load_curated_config
from warehouse.family_view import build_snapshot, check_snapshot, publish_snapshot
from warehouse.operational import engine_for, ensure_schema
from warehouse.publish import SnapshotStore
from warehouse.sources import load_sources
from warehouse.store import connect

HOUSEHOLDS = 200
SEED = 23
EXTRACT_DATE = date(2026, 11, 20)
PSEUDONYM_KEY = bytes(range(32))  # tests only; the product creates a random key


@dataclass
class FamilyViewCounty:
    root: Path
    data: Path  # data dir: warehouse.duckdb, operational.db, models/, published/

    @property
    def warehouse(self) -> Path:
        return self.data / "warehouse.duckdb"

    @property
    def published(self) -> Path:
        return self.data / "published"

    @property
    def operational_url(self) -> str:
        return f"sqlite:///{self.data / 'operational.db'}"

    def engine(self):
        engine = engine_for(self.operational_url)
        ensure_schema(engine)
        return engine

    def store(self, config: CuratedConfig | None = None) -> SnapshotStore:
        """The published folder as ``config`` (default ``config/curated.yaml``) sets it."""
        publishing = (config or load_curated_config()).publishing
        return SnapshotStore.configured(self.published, publishing)

    def connect(self) -> duckdb.DuckDBPyConnection:
        return connect(self.warehouse, read_only=True)

    def publish(self, config: CuratedConfig | None = None):
        """Build, check and publish a new snapshot from the warehouse (as the nightly run),
        under ``config`` (default ``config/curated.yaml``)."""
        config = config or load_curated_config()
        store = self.store(config)
        con = connect(self.warehouse, read_only=True)
        try:
            built = build_snapshot(
                con,
                store,
                load_linkage_config(),
                config,
                load_sources(),
                PSEUDONYM_KEY,
                self.engine(),
            )
            checks = check_snapshot(built, con)
        finally:
            con.close()
        return built, checks, publish_snapshot(store, built, checks)

    def deliver_again(self, source: str, landing: Path, day: str) -> Path:
        """``source``'s delivery of this county, copied into ``landing`` dated ``day`` (its
        manifest's date moved): a real new delivery of the same records."""
        folder = landing / source / day
        shutil.copytree(
            self.root / "generated" / "landing" / source / EXTRACT_DATE.isoformat(), folder
        )
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["extract_date"] = day
        (folder / "manifest.json").write_text(json.dumps(manifest))
        return folder

    def copy(self, destination: Path) -> FamilyViewCounty:
        """A private copy to publish, roll back or break without disturbing other tests."""
        shutil.copytree(self.root, destination)
        return FamilyViewCounty(root=destination, data=destination / "data")


def make_county(root: Path) -> FamilyViewCounty:
    """Generate, load (the ingest code path Dagster runs), link and publish."""
    from conftest import sdv_load

    generate_county(HOUSEHOLDS, SEED, EXTRACT_DATE, root / "generated")
    county = FamilyViewCounty(root=root, data=root / "data")
    result = sdv_load(root / "generated" / "landing", county.data)
    assert result.exit_code == 0, result.output
    con = connect(county.warehouse)
    try:
        run_linkage(con, county.engine(), load_linkage_config(), county.data / "models")
    finally:
        con.close()
    county.publish()
    return county
