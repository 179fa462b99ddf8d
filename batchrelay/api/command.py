"""`batchrelay serve`: registered on the CLI without importing FastAPI (part of the core)."""

from __future__ import annotations

from typing import Annotated

import typer

from batchrelay import extras, ops


def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8080,
) -> None:
    """Serve the producer API over HTTP (tenants from BATCHRELAY_TENANTS): docs/api.md."""
    try:
        import uvicorn

        from batchrelay.api.app import create_app
    except ModuleNotFoundError as exc:  # fastapi and uvicorn come with more than one extra
        raise extras.MissingExtraError(["api"], (exc.name or "").partition(".")[0]) from None
    from batchrelay.config import ConfigurationError
    from batchrelay.config.tenants import load_tenants

    settings = ops._settings()
    try:
        tenants = load_tenants()
    except ConfigurationError as exc:
        raise ops._fail(str(exc), ops.EXIT_CONFIG) from None
    typer.echo(
        f"batchrelay API on http://{host}:{port} for {len(tenants.by_name)} tenant(s), "
        f"Redis {settings.redis_url}"
    )
    uvicorn.run(create_app(settings, tenants), host=host, port=port, log_level="info")


def register(app: typer.Typer) -> None:
    app.command()(serve)
