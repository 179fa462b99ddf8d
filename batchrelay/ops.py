"""Operator commands: status, batches, requests, dead letters, flush (rich output)."""

from __future__ import annotations

import time
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.table import Table

from batchrelay.config import ConfigurationError, load_settings

console = Console()
batches_app = typer.Typer(no_args_is_help=True, help="Live provider batches.")
requests_app = typer.Typer(no_args_is_help=True, help="Single requests.")
dead_app = typer.Typer(no_args_is_help=True, help="Deliveries that were given up.")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]


def _relay() -> Any:
    from batchrelay.worker.context import Relay

    try:
        return Relay(load_settings())
    except ConfigurationError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(78) from None


def _dump(data: Any) -> None:
    typer.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())


def _status_tables(view: dict[str, Any]) -> list[Table]:
    groups = Table(title="Pending by group")
    for col in ("group", "profile", "endpoint", "model", "pending", "oldest (s)", "backoff"):
        groups.add_column(col)
    for g in view["groups"]:
        groups.add_row(
            g["group"],
            g["profile"],
            g["endpoint"],
            g["model"],
            str(g["pending"]),
            "-" if g["oldest_age_s"] is None else f"{g['oldest_age_s']:.0f}",
            "-" if g["backoff_s"] is None else f"{g['backoff_s']:.0f} s",
        )
    batches = Table(title="Live batches")
    for col in ("batch", "state", "model", "requests", "provider", "status", "counts", "stuck"):
        batches.add_column(col)
    for b in view["batches"]:
        counts = b["counts"] or {}
        batches.add_row(
            b["id"],
            b["state"] or "",
            b["model"] or "",
            str(b["requests"]),
            b["provider_batch_id"] or "-",
            f"{b['provider_status'] or '-'} ({b['in_status_s']:.0f} s)",
            " ".join(f"{k}={v}" for k, v in counts.items()) or "-",
            f"[red]{b['stuck']}[/red]" if b["stuck"] else "",
        )
    return [groups, batches]


def status(
    watch: Annotated[float, typer.Option(help="Refresh every N seconds (0: once).")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Pending count and oldest age per group, live batches, stuck batches, dead letters."""
    from batchrelay.worker.status import overview

    relay = _relay()
    while True:
        view = overview(relay)
        if as_json:
            _dump(view)
        else:
            if watch:
                console.clear()
            for table in _status_tables(view):
                console.print(table)
            stuck = sum(1 for b in view["batches"] if b["stuck"])
            console.print(
                f"deliveries due: {view['deliveries_due']}   dead letters: "
                f"{view['dead_letters']}   stuck batches: {stuck}"
            )
        if not watch:
            return
        time.sleep(watch)


@batches_app.command("list")
def batches_list(as_json: JsonOpt = False) -> None:
    """Every live batch with its provider status."""
    from batchrelay.worker.status import overview

    view = overview(_relay())
    if as_json:
        _dump(view["batches"])
    else:
        console.print(_status_tables(view)[1])


@batches_app.command("show")
def batches_show(batch_id: str) -> None:
    """One batch record (live or recently collected)."""
    from batchrelay.worker.status import batch_view

    relay = _relay()
    rec = _batch_or_exit(relay, batch_id)
    _dump(batch_view(rec, relay.now()))


@batches_app.command("cancel")
def batches_cancel(batch_id: str) -> None:
    """Cancel a submitted batch at the provider; its unfinished requests go back to pending."""
    from batchrelay.worker.context import SUBMITTED
    from batchrelay.worker.providers import ProviderError

    relay = _relay()
    rec = _batch_or_exit(relay, batch_id)
    if not rec.get("pbatch"):
        console.print(f"[red]batch {batch_id} has no provider batch (state {rec.get('state')})")
        raise typer.Exit(1)
    if rec.get("state") != SUBMITTED:
        console.print(
            f"[red]batch {batch_id} is {rec.get('state')} (provider status "
            f"{rec.get('pstatus')}), no longer running at the provider; nothing to cancel[/red]"
        )
        raise typer.Exit(1)
    if rec["profile"] not in {p.name for p in relay.settings.providers}:
        console.print(
            f"[red]batch {batch_id} is at profile {rec['profile']!r}, not configured[/red]"
        )
        raise typer.Exit(1)
    try:
        pb = relay.adapter(rec["profile"]).cancel(rec["pbatch"])
    except ProviderError as exc:
        console.print(f"[red]{rec['profile']} refused to cancel {rec['pbatch']}: {exc}[/red]")
        raise typer.Exit(1) from None
    console.print(f"provider batch {pb.id}: {pb.status}")


def _batch_or_exit(relay: Any, batch_id: str) -> dict[str, str]:
    try:
        rec = relay.batch(batch_id)
    except ValueError as exc:
        console.print(f"[red]no batch {batch_id}: {exc}[/red]")
        raise typer.Exit(1) from None
    if not rec:
        console.print(f"[red]no batch {batch_id} (unknown, or collected and expired)[/red]")
        raise typer.Exit(1)
    return rec


@requests_app.command("show")
def requests_show(request_id: str) -> None:
    """Where one request is, and its result once final."""
    from batchrelay.producer import BatchRelay, RequestNotFoundError

    with BatchRelay(load_settings()) as producer:
        try:
            st = producer.status(request_id)
        except RequestNotFoundError as exc:
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(1) from None
        data: dict[str, Any] = {"status": st.__dict__}
        if st.final:
            data["result"] = producer.result(request_id, timeout=0.1)
    _dump(data)


@dead_app.command("list")
def dead_list(as_json: JsonOpt = False) -> None:
    """Every dead letter with its last error."""
    from batchrelay.worker.delivery import dead_letters

    letters = dead_letters(_relay())
    if as_json:
        _dump(letters)
        return
    table = Table(title=f"Dead letters ({len(letters)})")
    for col in ("request", "attempts", "last error"):
        table.add_column(col)
    for d in letters:
        table.add_row(d["id"], str(d["attempts"]), d["last_error"])
    console.print(table)


@dead_app.command("replay")
def dead_replay(
    request_ids: Annotated[list[str] | None, typer.Argument(help="Ids (default: all).")] = None,
) -> None:
    """Put dead letters back on the delivery schedule."""
    from batchrelay.worker.delivery import replay

    n = replay(_relay(), request_ids or None)
    console.print(f"replayed {n} deliveries")


def flush(
    group: Annotated[str | None, typer.Argument(help="Group tag (default: every group).")] = None,
) -> None:
    """Claim everything pending now, whatever the thresholds; beat submits it next tick."""
    from batchrelay.worker.packing import flush as flush_groups

    relay = _relay()
    if group is not None and group not in {g.tag for g in relay.groups()}:
        console.print(
            f"[red]no group {group!r}: `batchrelay status` lists the groups with their tags[/red]"
        )
        raise typer.Exit(1)
    claimed = flush_groups(relay, {group} if group else None)
    console.print(f"claimed {len(claimed)} batch(es): {' '.join(claimed) or '-'}")


def register(app: typer.Typer) -> None:
    app.command()(status)
    app.command()(flush)
    app.add_typer(batches_app, name="batches")
    app.add_typer(requests_app, name="requests")
    app.add_typer(dead_app, name="dead-letters")
