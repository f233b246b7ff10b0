"""Who may open the files that hold personal data.

The warehouse, every published snapshot and its serving copy hold names, dates of birth,
addresses and case notes: the service account alone may read them (``0600``). The
analysts' pseudonymised file is the one analysts are given, through their group
(``0640``). Files are otherwise created under the process umask, commonly ``022``, which
lets every local user read them, and the analysts' group could then open the identifying
snapshot lying next to their own file.

A mode is set as soon as a file exists, before rows are written into it, and again where
publishing, rollback and purges move files into place (:func:`settle`), so a file
rewritten by a purge does not come back readable. The deployment still decides who is in
the analysts' group and who may enter the data folder (``docs/scaling.md``).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

PRIVATE = 0o600
ANALYSTS = 0o640
ANALYST_PREFIX = "analyst-"  # an analysts' file; every other .duckdb in snapshots/ is a snapshot


def mode_for(path: Path) -> int:
    """The mode a data file should have, from its name (a building or purged copy of the
    analysts' file is the analysts' file too)."""
    return ANALYSTS if Path(path).name.startswith(ANALYST_PREFIX) else PRIVATE


def restrict(path: Path) -> None:
    """Set ``path``'s mode for what it holds (see :func:`mode_for`); gone is fine."""
    with contextlib.suppress(FileNotFoundError):
        os.chmod(path, mode_for(path))


def settle(folder: Path) -> None:
    """Every file in ``folder`` (a published store's ``snapshots/``) set to its mode."""
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if path.is_file() and not path.is_symlink():
            restrict(path)
