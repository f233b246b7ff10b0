"""Resource types the assets ask for. Instances are built from settings in ``pipelines``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import duckdb
from sqlalchemy.engine import Engine

from warehouse.operational import engine_for
from warehouse.store import connect


class LandingZone(dg.ConfigurableResource):
    """Folder agencies deliver to: ``<path>/<source>/<YYYY-MM-DD>/<table>.csv``."""

    path: str

    @property
    def root(self) -> Path:
        return Path(self.path)


class Warehouse(dg.ConfigurableResource):
    """The DuckDB warehouse file, opened per step and always closed.

    We do not use dagster-duckdb's ``DuckDBResource``: its ``get_connection`` closes the
    connection only when the body succeeds, so a failed step (a rejected delivery) keeps
    the file open, and DuckDB's single-writer lock held, until garbage collection.
    """

    path: str

    @contextmanager
    def get_connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        con = connect(self.path)
        try:
            yield con
        finally:
            con.close()


class OperationalStore(dg.ConfigurableResource):
    """SQLAlchemy URL of the operational store (review decisions; SQLite by default)."""

    url: str

    def engine(self) -> Engine:
        return engine_for(self.url)


class LinkageSettings(dg.ConfigurableResource):
    """Where versioned linkage models (and their charts) are saved."""

    model_dir: str


class FamilyViewSettings(dg.ConfigurableResource):
    """Where published snapshots live, how many are kept, whether the analysts' group may
    open their file directly (``publishing`` in ``config/curated.yaml``), and the data
    directory whose ``secrets/`` holds the pseudonymisation key (unless
    ``SDV_PSEUDONYM_KEY`` is set)."""

    published_dir: str
    data_dir: str
    keep: int = 3
    analysts_group_read: bool = False
