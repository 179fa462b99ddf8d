"""Operator commands: status, batches, requests, dead letters, flush (rich output).

Tables fit 80 columns: ids and figures are never cut (wrap or drop a column instead), so an
id printed here can be pasted into the next command.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Annotated, Any, ParamSpec, TypeVar

import orjson
import redis
import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from batchrelay import RelayUnavailableError
from batchrelay.config import ConfigurationError, Settings, load_settings
from batchrelay.formatting import plural

console = Console()
errors = Console(stderr=True)
batches_app = typer.Typer(no_args_is_help=True, help="Provider batches.")
requests_app = typer.Typer(no_args_is_help=True, help="Single requests.")
dead_app = typer.Typer(no_args_is_help=True, help="Deliveries that were given up.")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
EXIT_UNAVAILABLE = 69  # EX_UNAVAILABLE: Redis is not there, or refuses us
EXIT_CONFIG = 78  # EX_CONFIG
RECENT_BATCHES = 20

P = ParamSpec("P")
R = TypeVar("R")


def _fail(message: str, code: int = 1) -> typer.Exit:
    """Print `message` as one red line on stderr (never read as markup); return the exit."""
    errors.print(Text(message, style="red"), soft_wrap=True, highlight=False)
    return typer.Exit(code)


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigurationError as exc:
        raise _fail(str(exc), EXIT_CONFIG) from None


def _redis_named(settings: Settings) -> str:
    """Which Redis, password masked, and whether it is only the default."""
    default = (
        ""
        if "redis_url" in settings.model_fields_set
        else " (default: BATCHRELAY_REDIS_URL is not set)"
    )
    return f"{settings.redis_url}{default}"


def reads_redis(command: Callable[P, R]) -> Callable[P, R]:
    """Turn an unreachable or refusing Redis into one line naming it, instead of a traceback."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError, redis.AuthenticationError) as exc:
            where = _redis_named(_settings())
            raise _fail(
                f"cannot use Redis at {where}: {type(exc).__name__}: {exc}", EXIT_UNAVAILABLE
            ) from None
        except RelayUnavailableError as exc:  # the producer's calls say it themselves
            raise _fail(str(exc), EXIT_UNAVAILABLE) from None

    return run


def _relay() -> Any:
    from batchrelay.worker.context import Relay

    return Relay(_settings())


def _dump(data: Any) -> None:
    typer.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())


def _table(title: str) -> Table:
    return Table(
        title=title,
        box=box.SIMPLE_HEAD,
        title_justify="left",
        pad_edge=False,
        collapse_padding=True,
    )


def _id_column(table: Table, name: str, width: int) -> None:
    """An id column as wide as its longest id and never wrapped: ids are for pasting."""
    table.add_column(name, no_wrap=True, min_width=width)


def _groups_table(groups: list[dict[str, Any]]) -> Table:
    table = _table("Pending by group")
    _id_column(table, "group", max((len(g["group"]) for g in groups), default=5))
    table.add_column("model", no_wrap=True)
    table.add_column("endpoint", overflow="fold")
    table.add_column("pending", justify="right", no_wrap=True)
    table.add_column("oldest", justify="right", no_wrap=True)
    backoff = any(g["backoff_s"] is not None for g in groups)
    if backoff:  # a column only while a group is backing off (token limit)
        table.add_column("backoff", justify="right", no_wrap=True)
    for g in groups:
        row = [
            g["group"],
            g["model"],
            g["endpoint"].removeprefix("/v1/"),
            f"{g['pending']:,}",
            "-" if g["oldest_age_s"] is None else f"{g['oldest_age_s']:.0f} s",
        ]
        if backoff:
            row.append("-" if g["backoff_s"] is None else f"{g['backoff_s']:.0f} s")
        table.add_row(*row)
    return table


def _batches_table(title: str, batches: list[dict[str, Any]]) -> Table:
    """Batch, state, size and provider status; the provider batch id, model and counts are in
    `batches show` (the model is in the group table, the group in the batch id)."""
    table = _table(title)
    _id_column(table, "batch", max((len(b["id"]) for b in batches), default=5))
    table.add_column("state", no_wrap=True)
    table.add_column("requests", justify="right", no_wrap=True)
    table.add_column("provider status")
    for b in batches:
        status = Text(f"{b['provider_status'] or '-'} {b['in_status_s']:.0f} s")
        if b["stuck"]:
            status.append(" stuck", style="red")
        table.add_row(b["id"], b["state"] or "", f"{b['requests']:,}", status)
    return table


def _status_lines(view: dict[str, Any], settings: Settings) -> list[Any]:
    stuck = sum(1 for b in view["batches"] if b["stuck"])
    return [
        f"Redis {_redis_named(settings)}",
        _groups_table(view["groups"]),
        _batches_table("Live batches", view["batches"]),
        f"deliveries due: {view['deliveries_due']:,}   dead letters: {view['dead_letters']:,}   "
        f"stuck batches: {stuck:,}",
    ]


@reads_redis
def status(
    watch: Annotated[float, typer.Option(help="Refresh every N seconds (0: once).")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Which Redis; pending count and oldest age per group, live and stuck batches, dead
    letters."""
    from batchrelay.worker.status import overview

    relay = _relay()
    while True:
        view = overview(relay)
        if as_json:
            _dump({"redis": str(relay.settings.redis_url), **view})
        else:
            if watch:
                console.clear()
            for line in _status_lines(view, relay.settings):
                console.print(line, soft_wrap=isinstance(line, str))
        if not watch:
            return
        time.sleep(watch)


@batches_app.command("list")
@reads_redis
def batches_list(
    as_json: JsonOpt = False,
    show_all: Annotated[
        bool,
        typer.Option(
            "--all",
            help=f"Also the {RECENT_BATCHES} most recently finished batches still on record, "
            "with their final status.",
        ),
    ] = False,
) -> None:
    """Every live batch with its provider status (and, with --all, recently finished ones)."""
    from batchrelay.worker.status import finished_batches, overview

    relay = _relay()
    live = overview(relay)["batches"]
    finished = finished_batches(relay, RECENT_BATCHES) if show_all else []
    if as_json:
        _dump(live + finished)
        return
    console.print(_batches_table("Live batches", live))
    if show_all:
        console.print(_batches_table("Recently finished batches", finished))


@batches_app.command("show")
@reads_redis
def batches_show(batch_id: str) -> None:
    """One batch record (live or recently collected)."""
    from batchrelay.worker.status import batch_view

    relay = _relay()
    rec = _batch_or_exit(relay, batch_id)
    _dump(batch_view(rec, relay.now()))


@batches_app.command("cancel")
@reads_redis
def batches_cancel(batch_id: str) -> None:
    """Cancel a submitted batch at the provider; its unfinished requests go back to pending."""
    from batchrelay.worker.context import SUBMITTED
    from batchrelay.worker.providers import ProviderError

    relay = _relay()
    rec = _batch_or_exit(relay, batch_id)
    if not rec.get("pbatch"):
        raise _fail(f"batch {batch_id} has no provider batch (state {rec.get('state')})")
    if rec.get("state") != SUBMITTED:
        raise _fail(
            f"batch {batch_id} is {rec.get('state')} (provider status {rec.get('pstatus')}), "
            "no longer running at the provider; nothing to cancel"
        )
    if rec["profile"] not in {p.name for p in relay.settings.providers}:
        raise _fail(f"batch {batch_id} is at profile {rec['profile']!r}, not configured")
    try:
        pb = relay.adapter(rec["profile"]).cancel(rec["pbatch"])
    except ProviderError as exc:
        raise _fail(f"{rec['profile']} refused to cancel {rec['pbatch']}: {exc}") from None
    console.print(f"provider batch {pb.id}: {pb.status}")


def _batch_or_exit(relay: Any, batch_id: str) -> dict[str, str]:
    try:
        rec = relay.batch(batch_id)
    except ValueError as exc:
        raise _fail(f"no batch {batch_id}: {exc}") from None
    if not rec:
        raise _fail(f"no batch {batch_id} (unknown, or collected and expired)")
    return rec


@requests_app.command("show")
@reads_redis
def requests_show(request_id: str) -> None:
    """Where one request is, and its result once final."""
    from batchrelay import BatchRelay, RequestNotFoundError

    with BatchRelay(_settings()) as producer:
        try:
            st = producer.status(request_id)
        except RequestNotFoundError as exc:
            # A KeyError subclass: str() would quote the message.
            raise _fail(exc.args[0] if exc.args else f"no request {request_id}") from None
        data: dict[str, Any] = {"status": st.__dict__}
        if st.final:
            data["result"] = producer.result(request_id, timeout=0.1)
    _dump(data)


@dead_app.command("list")
@reads_redis
def dead_list(as_json: JsonOpt = False) -> None:
    """Every dead letter with its last error."""
    from batchrelay.worker.delivery import dead_letters

    letters = dead_letters(_relay())
    if as_json:
        _dump(letters)
        return
    table = _table(f"Dead letters ({len(letters):,})")
    _id_column(table, "request", max((len(d["id"]) for d in letters), default=7))
    table.add_column("attempts", justify="right", no_wrap=True)
    table.add_column("last error")
    for d in letters:
        table.add_row(d["id"], f"{d['attempts']:,}", Text(str(d["last_error"])))
    console.print(table)


@dead_app.command("replay")
@reads_redis
def dead_replay(
    request_ids: Annotated[list[str] | None, typer.Argument(help="Ids (default: all).")] = None,
) -> None:
    """Put dead letters back on the delivery schedule."""
    from batchrelay.worker.delivery import replay

    n = replay(_relay(), request_ids or None)
    console.print(f"replayed {plural(n, 'delivery', 'deliveries')}")


@reads_redis
def flush(
    group: Annotated[str | None, typer.Argument(help="Group tag (default: every group).")] = None,
) -> None:
    """Claim everything pending now, whatever the thresholds; beat submits it next tick."""
    from batchrelay.worker.packing import flush as flush_groups

    relay = _relay()
    if group is not None and group not in {g.tag for g in relay.groups()}:
        raise _fail(f"no group {group!r}: `batchrelay status` lists the groups with their tags")
    claimed = flush_groups(relay, {group} if group else None)
    console.print(f"claimed {plural(len(claimed), 'batch', 'batches')}: {' '.join(claimed) or '-'}")


def register(app: typer.Typer) -> None:
    app.command()(status)
    app.command()(flush)
    app.add_typer(batches_app, name="batches")
    app.add_typer(requests_app, name="requests")
    app.add_typer(dead_app, name="dead-letters")
