"""Read a YAML file into a validated pydantic model, with errors naming file and key.

Every piece of configuration (curation, role policy, API users) goes through here, so a
typo fails at start-up with ``<file>: <key path>: <problem>`` rather than as a wrong
answer at night.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


def load_yaml_model(path: Path, model: type[M], error: type[Exception] = ValueError) -> M:
    """Parse ``path`` and validate it as ``model``; raise ``error`` naming file and key."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise error(f"{path}: file not found") from err
    except yaml.YAMLError as err:
        raise error(f"{path}: not valid YAML: {err}") from err
    try:
        return model.model_validate(data or {})
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}"
            for e in err.errors()
        )
        raise error(f"{path}: {problems}") from err
