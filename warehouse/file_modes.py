"""Who may open the files that hold personal data.

The warehouse, every published snapshot and its serving copy hold names, dates of birth,
addresses and case notes: the service account alone may read them (``0600``). The
analysts' pseudonymised file is the service account's alone too unless the curation
config's ``publishing.analysts_group_read`` gives it to the analysts' group (``0640``):
a read of the file itself never passes the access layer, so only reads through the API
(``POST /analytics/query``) are on the audit trail. Files are otherwise created under the
process umask, commonly ``022``, which lets every local user read them, and the analysts'
group could then open the identifying snapshot lying next to their own file.

A mode is set as soon as a file exists, before rows are written into it (the private
mode: nobody else may read a file still being built), and again where publishing and
rollback switch readers (:func:`settle`, which applies the configured mode to every kept
file). A purge's rewritten copy takes the mode of the file it replaces (:func:`like`), so
a purged file comes back neither more nor less readable than it was. The deployment still
decides who is in the service account's group and who may enter the data folder (the
README's paragraph on analysts).
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

PRIVATE = 0o600
ANALYSTS = 0o640
ANALYST_PREFIX = "analyst-"  # an analysts' file; every other .duckdb in snapshots/ is a snapshot


def mode_for(path: Path, analysts_group_read: bool) -> int:
    """The mode a data file should have, from its name: the analysts' group's to read only
    for an analysts' file, and only when the configuration gives it to them."""
    analysts = analysts_group_read and Path(path).name.startswith(ANALYST_PREFIX)
    return ANALYSTS if analysts else PRIVATE


def restrict(path: Path) -> None:
    """Make ``path`` the service account's alone (a file being built, the warehouse); gone
    is fine. Only :func:`settle` and :func:`like` give a file to the analysts' group."""
    _chmod(path, PRIVATE)


def _chmod(path: Path, mode: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.chmod(path, mode)


def like(path: Path, original: Path) -> None:
    """Give ``path`` (a rewritten copy) the mode of ``original``, the file it will replace;
    the private mode if that is gone or has a mode this module never sets."""
    try:
        mode = stat.S_IMODE(original.stat().st_mode)
    except FileNotFoundError:
        mode = PRIVATE
    _chmod(path, mode if mode in (PRIVATE, ANALYSTS) else PRIVATE)


def settle(folder: Path, analysts_group_read: bool = False) -> None:
    """Every file in ``folder`` (a published store's ``snapshots/``) set to its mode."""
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if path.is_file() and not path.is_symlink():
            _chmod(path, mode_for(path, analysts_group_read))
