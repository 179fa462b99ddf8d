"""`batchrelay run FILE`: a whole OpenAI, Anthropic, Mistral or Gemini batch input file through
the relay's providers in direct file mode (docs/cli.md).

The file is already whole, so `run` does what a provider's SDK would, with the relay's
configuration and safety (batchrelay/direct/):

1. `batchfile.scan` checks every line and, in the same pass, `Packer` writes the lines into
   provider-legal parts (per profile, endpoint and model; by count and bytes) in a spool
   folder. Nothing is sent if any line is bad.
2. `Driver` creates each part's provider batch through the worker's adapters, at most once
   whoever runs the file (a resumed, concurrent or `--no-wait` run finds it in the run's
   record in Redis, or at the provider), holding the profile's capacity as relay batches do;
   polls; downloads results into a local spill file; and sends unanswered lines again.
3. `Results.write` writes one output line per input line, in input order.

No worker needs to run, and no request record is stored in Redis.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import redis
import typer
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from batchrelay.batchfile import InputFileError, Plan, scan
from batchrelay.config import ConfigurationError, Settings, load_settings
from batchrelay.config.prices import PriceTable, load_prices
from batchrelay.direct.results import ModelUsage, Summary
from batchrelay.formatting import plural
from batchrelay.producer.connection import connect
from batchrelay.producer.core import unavailable
from batchrelay.producer.intake import Intake

if TYPE_CHECKING:
    from batchrelay.direct import driver

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_CONFIG = 78
EXIT_INTERRUPTED = 130
# A plain line of counts this often when the console is not a terminal (a CI log).
LOG_EVERY_S = 30.0

__all__ = ["ModelUsage", "Summary", "cost_table", "count", "run", "usd"]


def cost_table(summary: Summary, prices: PriceTable) -> tuple[Table, list[str]]:
    """The usage and cost table, and the models it has no price for.

    Readable at 80 columns: model names are never wrapped or cut, figures never shortened. The
    synchronous price is left to the caption (saving = synchronous - batch), and a `failed`
    column shows only when a request failed.
    """
    by_model = sorted(summary.by_model.items())
    any_failed = any(u.requests > u.succeeded for _, u in by_model)
    table = Table(
        title="Usage and cost (USD)",
        box=box.SIMPLE_HEAD,
        title_justify="left",
        caption_justify="left",
        pad_edge=False,
        collapse_padding=True,
    )
    table.add_column("model", no_wrap=True, min_width=max((len(m) for m, _ in by_model), default=5))
    for name in ("requests", *(("failed",) if any_failed else ()), "in", "out", "batch", "saving"):
        table.add_column(name, justify="right", no_wrap=True)
    batch_total = sync_total = 0.0
    unpriced = []
    all_usage = ModelUsage()
    for model, u in by_model:
        for name in ("requests", "succeeded", "input_tokens", "output_tokens"):
            setattr(all_usage, name, getattr(all_usage, name) + getattr(u, name))
        price = prices.lookup(model)
        if price is None:
            unpriced.append(model)
            money = ["-", "-"]
        else:
            batch = price.batch_cost(u.input_tokens, u.output_tokens)
            sync = price.sync_cost(u.input_tokens, u.output_tokens)
            batch_total += batch
            sync_total += sync
            money = [usd(batch), usd(sync - batch)]
        table.add_row(model, *_usage_cells(u, any_failed), *money)
    if len(by_model) > 1:
        table.add_section()
        table.add_row(
            "total",
            *_usage_cells(all_usage, any_failed),
            usd(batch_total),
            usd(sync_total - batch_total),
        )
    if sync_total:
        table.caption = (
            f"in/out: tokens. Synchronous price {usd(sync_total)}, batch {usd(batch_total)}: "
            f"saved {usd(sync_total - batch_total)} ({1 - batch_total / sync_total:.0%})."
        )
    return table, unpriced


def _usage_cells(u: ModelUsage, with_failed: bool) -> list[str]:
    failed = u.requests - u.succeeded
    cells = [f"{u.requests:,}"]
    if with_failed:
        cells.append(f"[red]{failed:,}[/red]" if failed else "0")
    return [*cells, count(u.input_tokens), count(u.output_tokens)]


def count(n: int) -> str:
    """Exact below a million, else millions with two decimals: `987,654`, `123.46M`."""
    return f"{n:,}" if n < 1_000_000 else f"{n / 1_000_000:,.2f}M"


def usd(value: float) -> str:
    """Two significant figures at least: `$16.29`, `$0.0400`, `$0.000058`."""
    if value >= 1:
        return f"${value:,.2f}"
    return f"${value:.4f}" if value >= 0.01 or value == 0 else f"${value:.6f}"


def default_output(path: Path) -> Path:
    return path.with_name(f"{path.stem}.results.jsonl")


def _setup(console: Console) -> tuple[Settings, PriceTable]:
    try:
        settings = load_settings()
        settings.require_providers()
        return settings, load_prices()
    except ConfigurationError as exc:
        console.print(str(exc), style="red", markup=False, highlight=False)
        raise typer.Exit(EXIT_CONFIG) from None


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description:>10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        refresh_per_second=4,
    )


class _Bars:
    """The progress bars (lines submitted, then queued / in a batch / done / failed), or a
    plain line of counts every LOG_EVERY_S when the console is not a terminal."""

    def __init__(self, console: Console, progress: Progress, total: int):
        self.console, self.progress = console, progress
        self.submitted = progress.add_task("submitted", total=total)
        self.states = [
            progress.add_task(name, total=total)
            for name in ("queued", "in a batch", "done", "failed")
        ]
        self.last_line = time.monotonic()
        self.seen: driver.Progress | None = None

    def __call__(self, p: driver.Progress) -> None:
        self.seen = p
        self.progress.update(self.submitted, completed=p.submitted)
        values = (p.queued, p.in_batch, p.done, p.failed)
        for task, value in zip(self.states, values, strict=True):
            self.progress.update(task, completed=value)
        if not self.console.is_terminal and time.monotonic() - self.last_line >= LOG_EVERY_S:
            self.last_line = time.monotonic()
            waiting = f"  ({p.waiting})" if p.waiting else ""
            self.console.print(
                f"queued {p.queued:,}  in a batch {p.in_batch:,}  done {p.done:,}  "
                f"failed {p.failed:,}{waiting}",
                markup=False,
            )


@contextmanager
def _adapters(settings: Settings) -> Iterator[driver.Adapters]:
    """One adapter per profile for packing and sending (an HTTP client each)."""
    from batchrelay.direct.driver import Adapters

    adapters = Adapters(settings)
    try:
        yield adapters
    finally:
        adapters.close()


def _checked(
    console: Console, file: Path, settings: Settings, folder: Path, adapters: driver.Adapters
) -> tuple[Plan, list]:
    """Scan the file, packing its parts into `folder` in the same pass."""
    from batchrelay.direct.parts import Packer, file_fingerprint

    fp = file_fingerprint(file)
    packer = Packer(settings, fp, folder, adapters)
    with console.status(f"checking {file}"):
        plan = scan(file, Intake(settings), packer)
    parts = packer.finish()
    if plan.fingerprint != fp:
        raise InputFileError([f"{file}: the file changed while it was read; run it again"])
    return plan, parts


def _drive(
    console: Console,
    settings: Settings,
    file: Path,
    plan: Plan,
    parts: list,
    folder: Path,
    out: Path,
    no_wait: bool,
    adapters: driver.Adapters,
) -> Summary | None:
    """Submit (and unless `no_wait`, wait for and write) the results; None with `no_wait`."""
    from batchrelay.direct.driver import Driver
    from batchrelay.direct.results import Results
    from batchrelay.direct.store import RunStore

    fp = plan.fingerprint[:32]
    client = connect(settings)
    store = RunStore(settings, client, fp)
    hold_s: float | None = max(settings.profile(p.profile).completion_window_s for p in parts)
    results: Results | None = None
    try:
        store.release_stale()
        store.start_heartbeat()
        results = Results(plan.custom_ids, folder, plan.fingerprint, out)
        drv = Driver(settings, store, adapters, results, parts, file, folder)
        with _progress(console) as progress:
            bars = _Bars(console, progress, plan.total)
            try:
                drv.run(wait=not no_wait, show=bars)
            except KeyboardInterrupt:
                bars.console.print(
                    f"[yellow]interrupted[/yellow] ({plural(drv.progress.submitted, 'request')} "
                    "submitted so far); run the same command again to resume: nothing is "
                    "submitted twice"
                )
                raise
        p = drv.progress
        if no_wait:
            console.print(
                f"submitted {plural(plan.total, 'request')} in {plural(len(parts), 'batch')} "
                f"({p.created:,} created now, {p.adopted:,} already at the provider); run "
                f"`batchrelay run {file}` again to collect the results",
                markup=False,
            )
            return None
        hold_s = None  # every batch of the run has ended
        return results.write()
    finally:
        if results is not None:
            results.close()
        store.stop_heartbeat(hold_s)
        client.close()


def run(
    file: Annotated[
        Path,
        typer.Argument(
            exists=True, dir_okay=False, readable=True, help="OpenAI or Anthropic batch input."
        ),
    ],
    output: Annotated[
        Path | None,
        typer.Option("-o", "--output", help="Results file (default: FILE.results.jsonl)."),
    ] = None,
    no_wait: Annotated[
        bool,
        typer.Option("--no-wait", help="Submit and return; a later `run` collects."),
    ] = False,
) -> None:
    """Run a batch input file through the relay's providers and write its results in input
    order.

    Re-running the same file resumes: no batch is created twice. Exit code 1 if any request
    failed, 2 if the file is invalid.
    """
    from batchrelay.worker.providers import ProviderError

    console = Console()
    settings, prices = _setup(console)
    out = output or default_output(file)
    try:
        with (
            tempfile.TemporaryDirectory(prefix="batchrelay-run-", dir=settings.spool_dir) as tmp,
            _adapters(settings) as adapters,
        ):
            plan, parts = _checked(console, file, settings, Path(tmp), adapters)
            kinds = ", ".join(f"{n:,} {k}" for k, n in sorted(plan.kinds.items()))
            console.print(
                f"{file}: {plural(plan.total, 'request')} ({kinds}), "
                f"fingerprint {plan.fingerprint[:12]}",
                markup=False,
            )
            summary = _drive(
                console, settings, file, plan, parts, Path(tmp), out, no_wait, adapters
            )
    except InputFileError as exc:
        console.print(f"{file} cannot be run:", style="red", markup=False, highlight=False)
        for problem in exc.problems:
            console.print(f"  {problem}", markup=False, highlight=False)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        console.print(str(unavailable(settings, exc)), style="red", markup=False, highlight=False)
        raise typer.Exit(EXIT_FAILED) from None
    except ProviderError as exc:
        console.print(
            f"the provider refused a call: {exc}; run the same command again to resume",
            style="red",
            markup=False,
            highlight=False,
        )
        raise typer.Exit(EXIT_FAILED) from None
    if summary is None:
        return
    table, unpriced = cost_table(summary, prices)
    console.print(table)
    if unpriced:
        console.print(
            f"no price for {', '.join(unpriced)}: add it with BATCHRELAY_PRICES, e.g. "
            '\'{"model": {"input": 1.0, "output": 2.0}}\' (USD per 1M tokens)',
            markup=False,
        )
    style = "red" if summary.failed else "green"
    console.print(
        f"{summary.succeeded:,} succeeded, {summary.failed:,} failed", style=style, highlight=False
    )
    console.print(f"results in {out}", markup=False)
    if summary.failed:
        raise typer.Exit(EXIT_FAILED)


def register(app: typer.Typer) -> None:
    app.command("run")(run)
