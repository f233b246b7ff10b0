"""Where things live, from the environment, with defaults that suit a laptop demo.

``SDV_DATA_DIR`` (default ``./data``) holds the warehouse file and Dagster's instance;
``SDV_LANDING`` (default ``<data>/landing``) is the landing zone agencies deliver to;
``SDV_WAREHOUSE`` overrides the DuckDB file; ``SDV_CONFIG_DIR`` the configuration folder;
``SDV_OPERATIONAL_URL`` (default SQLite at ``<data>/operational.db``) is the SQLAlchemy URL of
the operational store, where reviewers' decisions live (PostgreSQL in a deployment).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from warehouse.sources import DEFAULT_CONFIG_DIR

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from warehouse.publish import SnapshotStore

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    landing: Path
    warehouse: Path
    config_dir: Path
    # Empty means SQLite in the data directory, so a Settings built for a data directory (tests,
    # ``--data-dir``) never shares reviewers' decisions with another one.
    operational_url: str = ""

    def __post_init__(self) -> None:
        if not self.operational_url:
            default = f"sqlite:///{self.data_dir / 'operational.db'}"
            object.__setattr__(self, "operational_url", default)

    @property
    def model_dir(self) -> Path:
        """Versioned linkage models and their charts."""
        return self.data_dir / "models"

    @property
    def linkage_config(self) -> Path:
        return self.config_dir / "linkage.yaml"

    @property
    def curated_config(self) -> Path:
        return self.config_dir / "curated.yaml"

    @property
    def policy(self) -> Path:
        return self.config_dir / "policy.yaml"

    @property
    def published_dir(self) -> Path:
        """Published Family View snapshots, the pointer readers follow, analysts' file."""
        return self.data_dir / "published"

    @property
    def dagster_home(self) -> Path:
        return self.data_dir / "dagster"

    @classmethod
    def from_env(cls) -> Settings:
        data_dir = Path(os.environ.get("SDV_DATA_DIR", "data")).resolve()
        return cls(
            data_dir=data_dir,
            landing=Path(os.environ.get("SDV_LANDING", data_dir / "landing")).resolve(),
            warehouse=Path(
                os.environ.get("SDV_WAREHOUSE", data_dir / "warehouse.duckdb")
            ).resolve(),
            config_dir=Path(os.environ.get("SDV_CONFIG_DIR", DEFAULT_CONFIG_DIR)).resolve(),
            operational_url=os.environ.get("SDV_OPERATIONAL_URL", ""),
        )

    def operational_engine(self) -> Engine:
        """An engine on the operational store, its tables created if missing."""
        from warehouse.operational import engine_for, ensure_schema

        engine = engine_for(self.operational_url)
        ensure_schema(engine)
        return engine

    def snapshot_store(self) -> SnapshotStore:
        """The published folder, as ``config/curated.yaml``'s ``publishing`` section sets it
        (snapshots kept, who may open the analysts' file)."""
        from warehouse.curated_config import load_curated_config
        from warehouse.publish import SnapshotStore

        publishing = load_curated_config(self.curated_config).publishing
        return SnapshotStore.configured(self.published_dir, publishing)

    @classmethod
    def for_data_dir(cls, data_dir: Path | None) -> Settings:
        """Settings for ``--data-dir``: everything in that folder (its own operational
        store too); without one, the environment's settings."""
        settings = cls.from_env()
        if data_dir is None:
            return settings
        data_dir = data_dir.resolve()
        return cls(
            data_dir=data_dir,
            landing=data_dir / "landing",
            warehouse=data_dir / "warehouse.duckdb",
            config_dir=settings.config_dir,
        )

    def export(self) -> None:
        """Put these settings in the environment so Dagster code servers see the same."""
        os.environ["SDV_DATA_DIR"] = str(self.data_dir)
        os.environ["SDV_LANDING"] = str(self.landing)
        os.environ["SDV_WAREHOUSE"] = str(self.warehouse)
        os.environ["SDV_CONFIG_DIR"] = str(self.config_dir)
        os.environ["SDV_OPERATIONAL_URL"] = self.operational_url
        os.environ["DAGSTER_HOME"] = str(self.dagster_home)
