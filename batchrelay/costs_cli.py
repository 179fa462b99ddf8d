"""`batchrelay costs`: what each tenant spent, per UTC date and model (`batchrelay.costs`)."""

from __future__ import annotations

from datetime import date
from typing import Annotated

import typer
from rich.table import Table

from batchrelay import ops
from batchrelay.costs import CostRow, read_costs
from batchrelay.producer.connection import connect
from batchrelay.producer.keys import Keys
from batchrelay.run import count, usd


def _since(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value).isoformat()
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a date (YYYY-MM-DD)") from None


@ops.reads_redis
def costs(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant.")] = None,
    since: Annotated[
        str | None, typer.Option(help="From this UTC date on (YYYY-MM-DD), inclusive.")
    ] = None,
    json: ops.JsonOpt = False,
) -> None:
    """Requests, tokens and cost per tenant, UTC date and model, of final results."""

    settings = ops._settings()
    client = connect(settings)
    try:
        rows = read_costs(client, Keys(settings.key_prefix), tenant=tenant, since=_since(since))
    finally:
        client.close()
    if json:
        ops._dump([r.as_json() for r in rows])
        return
    ops.console.print(_table(rows))


def _table(rows: list[CostRow]) -> Table:
    table = ops._table("Costs (batch price; * no price for the model)")
    table.add_column("tenant", no_wrap=True)
    table.add_column("date", no_wrap=True)
    table.add_column("model", overflow="fold")
    table.add_column("requests", justify="right", no_wrap=True)
    table.add_column("input", justify="right", no_wrap=True)
    table.add_column("output", justify="right", no_wrap=True)
    table.add_column("USD", justify="right", no_wrap=True)
    for r in rows:
        cost = usd(r.batch_usd) if r.priced else "*"
        table.add_row(
            r.tenant,
            r.date,
            r.model,
            count(r.requests),
            count(r.input_tokens),
            count(r.output_tokens),
            cost,
        )
    return table


def register(app: typer.Typer) -> None:
    app.command()(costs)
