"""`sdv serve`: the Family View API; `sdv token new`: a bearer token for a new API user.

``sdv serve`` runs the API (:mod:`api.app`) with uvicorn over the published snapshot in
``<data>/published``, the role policy and API users from the configuration folder
(``<config>/api_users.yaml``, or ``SDV_API_USERS``) and the audit trail in the operational
store (``SDV_OPERATIONAL_URL``). Workers build the app with :func:`app_from_settings`, which
reads the same environment, so ``--workers N`` runs N processes over the same snapshot and
audit chain.

uvicorn's access log is off: it would write each request's query string (a search's name
and date of birth) to the console. The audit trail records every call instead.

``sdv token new`` mints a random token, prints it once for its holder and prints the entry
(holding only the token's SHA-256) to paste into the users file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape

from pipelines.settings import Settings

if TYPE_CHECKING:
    from fastapi import FastAPI

console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)

token_app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Bearer tokens for the Family View API (sdv serve).",
)

APP_FACTORY = "pipelines.serve_cli:app_from_settings"


def app_from_settings(settings: Settings | None = None) -> FastAPI:
    """The API over the published Family View named by ``settings`` (default: environment).

    uvicorn calls this (``--factory``) in every worker; configuration errors raise here.
    """
    from api.app import create_app
    from api.users import load_api_users, users_path
    from warehouse.access import AccessLayer
    from warehouse.policy import load_policy

    settings = settings or Settings.from_env()
    policy = load_policy(settings.policy)
    users = load_api_users(users_path(settings.config_dir), policy)
    store = settings.snapshot_store()
    engine = settings.operational_engine()
    return create_app(AccessLayer(store, policy, engine), users)


def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="Data directory (default: SDV_DATA_DIR, else ./data)."),
    ] = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
) -> None:
    """Serve the Family View API (OpenAPI schema at /openapi.json, docs at /docs)."""
    import uvicorn

    from api.users import ApiUsersError, users_path
    from warehouse.curated_config import CuratedConfigError
    from warehouse.policy import PolicyError
    from warehouse.publish import SnapshotStore
    from warehouse.serving import serving_path

    settings = Settings.for_data_dir(data_dir)
    settings.export()  # workers build the app from the environment
    try:
        app = app_from_settings(settings)  # fail here, readably, not in every worker
    except (ApiUsersError, PolicyError, CuratedConfigError) as exc:
        console.print(f"[red]Configuration error:[/red] {escape(str(exc))}")
        raise typer.Exit(code=2) from exc
    published = settings.data_dir / "published"
    current = SnapshotStore(published).current()
    if current is None:
        console.print(
            f"[yellow]Warning:[/yellow] nothing is published under {escape(str(published))} "
            "yet: data endpoints answer 503 until a snapshot is."
        )
    elif not serving_path(published / "snapshots" / current.snapshot).exists():
        console.print(
            f"[yellow]Warning:[/yellow] the published snapshot {escape(current.snapshot)} has "
            "no serving copy (it was published by an older version): data endpoints answer "
            "503 until `sdv publish` publishes a new one."
        )
    users = len(app.state.users)
    console.print(
        f"Family View API on http://{host}:{port} ({users} user(s) from "
        f"{escape(str(users_path(settings.config_dir)))}; audit: "
        f"{escape(_redacted(settings.operational_url))}); docs at http://{host}:{port}/docs"
    )
    if workers == 1:
        uvicorn.run(app, host=host, port=port, access_log=False)
    else:
        uvicorn.run(
            APP_FACTORY, factory=True, host=host, port=port, workers=workers, access_log=False
        )


def _redacted(url: str) -> str:
    """A database URL without its password, for the console."""
    import sqlalchemy as sa

    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "(invalid URL)"


@token_app.command("new")
def token_new(
    user: Annotated[str, typer.Option("--user", help="The user's id, as the audit shows it.")],
    role: Annotated[str, typer.Option("--role", help="A role of config/policy.yaml.")],
    organisation: Annotated[
        str | None,
        typer.Option(help="The organisation read for (a school DSL's school URN)."),
    ] = None,
    purpose: Annotated[
        str | None,
        typer.Option(help="Default purpose (default: the role's first purpose)."),
    ] = None,
) -> None:
    """Mint a bearer token: prints the token (once) and the users-file entry to paste."""
    import yaml

    from api.users import ApiUsersError, load_api_users, mint_token, user_entry, users_path
    from warehouse.policy import PolicyError, load_policy

    settings = Settings.from_env()
    path = users_path(settings.config_dir)
    try:
        policy = load_policy(settings.policy)
        token, digest = mint_token()
        entry = user_entry(
            user,
            role,
            digest,
            organisation=organisation,
            default_purpose=purpose,
            policy=policy,
        )
    except (ApiUsersError, PolicyError) as exc:
        console.print(f"[red]Error:[/red] {escape(str(exc))}")
        raise typer.Exit(code=1) from exc
    if os.path.exists(path):
        try:
            if load_api_users(path, policy).get(entry["user_id"]) is not None:
                console.print(
                    f"[yellow]{escape(entry['user_id'])} is already in {escape(str(path))}: "
                    "replace that entry (its old token stops working).[/yellow]"
                )
        except ApiUsersError as exc:
            console.print(f"[yellow]Warning:[/yellow] {escape(str(exc))}")
    out.print("Token (shown once; give it to the user, do not store it):")
    typer.echo(f"  {token}")
    out.print(f"\nAdd this entry under `users:` in {escape(str(path))}:")
    listed = yaml.safe_dump([entry], sort_keys=False).rstrip()
    typer.echo("\n".join(f"  {line}" for line in listed.splitlines()))
