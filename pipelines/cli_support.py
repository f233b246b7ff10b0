"""What the ``sdv`` sub-commands share: settings from ``--data-dir``, readable refusals."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from pipelines.settings import Settings

console = Console(stderr=True, soft_wrap=True)


def settings_for(ctx: typer.Context, data_dir: Path | None) -> Settings:
    """``--data-dir`` given here or before the sub-command, else the environment."""
    return Settings.for_data_dir(data_dir or (ctx.obj or {}).get("data_dir"))


@contextmanager
def reported(
    refusals: tuple[type[Exception], ...], unreachable: tuple[type[Exception], ...], store: str
) -> Iterator[None]:
    """Show a refused request, or a store that cannot be used, as one readable line and
    exit 1, instead of a traceback."""
    try:
        yield
    except refusals as exc:
        console.print(f"[red]Error:[/red] {escape(str(exc))}")
        raise typer.Exit(code=1) from exc
    except unreachable as exc:
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        console.print(f"[red]Cannot use {store}:[/red] {escape(detail)}")
        raise typer.Exit(code=1) from exc
