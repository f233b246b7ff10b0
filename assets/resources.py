"""Resource types the assets ask for. Instances are built from settings in ``pipelines``."""

from __future__ import annotations

from pathlib import Path

import dagster as dg


class LandingZone(dg.ConfigurableResource):
    """Folder agencies deliver to: ``<path>/<source>/<YYYY-MM-DD>/<table>.csv``."""

    path: str

    @property
    def root(self) -> Path:
        return Path(self.path)
