"""`batchrelay metrics`: run the Prometheus exporter (and provider-webhook receiver)."""

from __future__ import annotations

from typing import Annotated

import typer

from batchrelay import ops
from batchrelay.producer.connection import connect


@ops.reads_redis
def _serve(host: str, port: int) -> None:
    settings = ops._settings()
    try:
        import uvicorn

        from batchrelay.metrics import create_app
    except ImportError as exc:
        raise ops._fail(
            f"{exc}: install the exporter with: pip install 'batchrelay[metrics]'"
        ) from None
    client = connect(settings)
    client.ping()  # an unreachable Redis is one line and exit 69, not a server of errors
    typer.echo(
        f"batchrelay metrics on http://{host}:{port}/metrics, provider webhooks at "
        f"/v1/provider-webhooks/<profile>; Redis {ops._redis_named(settings)}"
    )
    uvicorn.run(create_app(settings, client), host=host, port=port, log_level="warning")


def register(app: typer.Typer) -> None:
    @app.command()
    def metrics(
        host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
        port: Annotated[int, typer.Option(help="TCP port.")] = 9108,
    ) -> None:
        """Serve Prometheus metrics at /metrics and providers' batch webhooks at
        /v1/provider-webhooks/PROFILE (needs the `metrics` extra)."""
        _serve(host, port)
