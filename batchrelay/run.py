"""`batchrelay run FILE`: a whole OpenAI, Anthropic, Mistral or Gemini batch input file through
the relay.

The steps are plain functions so they can be tested without a terminal; they use only the
producer's public API (no Redis key is read here):

1. `batchfile.scan` checks every line and fingerprints the file; nothing is submitted if any
   line is bad.
2. `submit_file` streams it again and stores it in chunks with `submit_many`, each request
   keyed `run:<fingerprint>:<custom_id>`. The fingerprint is the SHA-256 of the content, so
   the same file (wherever it lies, whatever it is called) maps to the same keys on every
   run: a re-run after an interruption, or after `--no-wait`, finds every line already
   stored and submits nothing twice; an edited file is a new file.
3. `BatchRelay.wait` follows the requests to a final state on the relay's pub/sub channels,
   re-reading (pipelined) only the states of the requests still open, for the progress bars.
4. `write_results` writes one output line per input line, in input order, from
   `BatchRelay.results` (kept for `result_retention_s`), and sums the token usage per model.

`run` starts no workers: a relay (worker + beat) must be running for requests to move.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from batchrelay import BatchRelay, RelayUnavailableError, StateCounts, SubmitItem
from batchrelay.batchfile import (
    InputFileError,
    LineError,
    Plan,
    entries,
    idempotency_key,
    metadata,
    parse_entry,
    scan,
)
from batchrelay.config import ConfigurationError, Settings, load_settings
from batchrelay.config.prices import PriceTable, load_prices, usage_tokens
from batchrelay.formatting import plural
from batchrelay.producer.intake import Intake
from batchrelay.producer.keys import tag_of
from batchrelay.producer.records import FAILED, SUCCEEDED

CHUNK = 1000
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_CONFIG = 78
EXIT_INTERRUPTED = 130


def submit_file(
    producer: BatchRelay, plan: Plan, on_chunk: Callable[[int, int], None] | None = None
) -> list[str]:
    """Store every line (idempotently) and return the request ids in input order;
    `on_chunk(submitted, new)` after each chunk, `new` counting requests not stored before."""
    hasher = hashlib.sha256()
    ids: list[str] = []
    chunk: list[SubmitItem] = []

    def flush() -> None:
        stored = producer.submit_many(chunk)
        ids.extend(stored)
        if on_chunk is not None:
            on_chunk(len(chunk), stored.new)
        chunk.clear()

    for where, obj in entries(plan.path, hasher):
        try:
            line = parse_entry(where, obj)
        except LineError as exc:
            raise InputFileError(
                [f"{where}: {exc} (the file changed after it was checked)"]
            ) from None
        chunk.append(
            SubmitItem(
                endpoint=line.endpoint,
                body=line.body,
                idempotency_key=idempotency_key(plan.fingerprint, line.custom_id),
                metadata=metadata(line.custom_id),
            )
        )
        if len(chunk) >= CHUNK:
            flush()
    if chunk:
        flush()
    if hasher.hexdigest() != plan.fingerprint or len(ids) != plan.total:
        raise InputFileError(
            [f"{plan.path}: the file changed while it was submitted; run it again"]
        )
    return ids


@dataclass
class ModelUsage:
    requests: int = 0
    succeeded: int = 0
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass
class Summary:
    succeeded: int = 0
    failed: int = 0
    by_model: dict[str, ModelUsage] = field(default_factory=dict)


RECORD_GONE = {
    "code": "result_expired",
    "message": "the request record is gone (older than result_retention_s); run the file again "
    "under a new name or after editing it to submit it again",
    "status_code": None,
    "body": None,
}


def write_results(producer: BatchRelay, plan: Plan, ids: Sequence[str], out: Path) -> Summary:
    """One line per input line, in input order: `{id, custom_id, status, response, error}`
    with `response` = `{status_code, body}` as in OpenAI's batch output. Written to a side
    file and renamed, so OUT is either complete or untouched."""
    summary = Summary()
    partial = out.with_name(out.name + ".part")
    with partial.open("wb") as f:
        for start in range(0, len(ids), CHUNK):
            part = ids[start : start + CHUNK]
            payloads = producer.results(part)
            custom_ids = plan.custom_ids[start : start + CHUNK]
            for custom_id, rid, payload in zip(custom_ids, part, payloads, strict=True):
                meta = plan.groups[tag_of(rid)]
                usage = summary.by_model.setdefault(meta["model"], ModelUsage())
                usage.requests += 1
                line = payload or {
                    "id": rid,
                    "status": FAILED,
                    "response": None,
                    "error": RECORD_GONE,
                }
                if line["status"] == SUCCEEDED:
                    summary.succeeded += 1
                    usage.succeeded += 1
                    tokens_in, tokens_out = usage_tokens(line.get("usage"))
                    usage.input_tokens += tokens_in
                    usage.output_tokens += tokens_out
                else:
                    summary.failed += 1
                record = {
                    "id": rid,
                    "custom_id": custom_id,
                    "status": line["status"],
                    "response": line["response"],
                    "error": line["error"],
                }
                f.write(orjson.dumps(record) + b"\n")
    partial.replace(out)
    return summary


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


@dataclass
class _Submitted:
    lines: int = 0
    new: int = 0


def _submit_and_wait(
    console: Console, producer: BatchRelay, plan: Plan, no_wait: bool, done: _Submitted
) -> list[str] | None:
    """Submission and waiting behind live progress bars; None with `no_wait`. A console that
    is not a terminal (a CI log) gets a plain line of counts every 30 s instead."""
    with _progress(console) as progress:
        bar = progress.add_task("submitted", total=plan.total)

        def chunk_done(n: int, fresh: int) -> None:
            done.lines += n
            done.new += fresh
            progress.update(bar, completed=done.lines)

        ids = submit_file(producer, plan, chunk_done)
        if no_wait:
            return None
        bars = [
            progress.add_task(name, total=plan.total)
            for name in ("queued", "in a batch", "done", "failed")
        ]
        last_line = time.monotonic()

        def show(c: StateCounts) -> None:
            nonlocal last_line
            failed = c.failed + c.cancelled + c.missing  # a record gone: its result is lost
            for task, value in zip(bars, (c.pending, c.in_batch, c.succeeded, failed), strict=True):
                progress.update(task, completed=value)
            if not console.is_terminal and time.monotonic() - last_line >= 30:
                last_line = time.monotonic()
                console.print(
                    f"queued {c.pending:,}  in a batch {c.in_batch:,}  done {c.succeeded:,}  "
                    f"failed {failed:,}"
                )

        producer.wait(ids, progress=show)
        return ids


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
        bool, typer.Option("--no-wait", help="Submit and return; a later `run` collects.")
    ] = False,
) -> None:
    """Run a batch input file through the relay and write its results in input order.

    Re-running the same file resumes: lines already submitted are not submitted again.
    Exit code 1 if any request failed, 2 if the file is invalid.
    """
    console = Console()
    settings, prices = _setup(console)
    out = output or default_output(file)
    producer = BatchRelay(settings)
    submitted = _Submitted()
    try:
        with console.status(f"checking {file}"):
            plan = scan(file, Intake(settings))
        kinds = ", ".join(f"{n:,} {k}" for k, n in sorted(plan.kinds.items()))
        console.print(
            f"{file}: {plural(plan.total, 'request')} ({kinds}), "
            f"fingerprint {plan.fingerprint[:12]}",
            markup=False,
        )
        ids = _submit_and_wait(console, producer, plan, no_wait, submitted)
        if ids is None:
            console.print(
                f"submitted {plural(plan.total, 'request')} ({submitted.new:,} new, "
                f"{plan.total - submitted.new:,} already in the relay); run "
                f"`batchrelay run {file}` again to collect the results",
                markup=False,
            )
            return
        summary = write_results(producer, plan, ids, out)
    except InputFileError as exc:
        console.print(f"{file} cannot be run:", style="red", markup=False, highlight=False)
        for problem in exc.problems:
            console.print(f"  {problem}", markup=False, highlight=False)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except KeyboardInterrupt:
        console.print(
            f"[yellow]interrupted[/yellow] ({plural(submitted.lines, 'request')} submitted "
            "so far); "
            "run the same command again to resume: nothing is submitted twice"
        )
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except RelayUnavailableError as exc:
        console.print(str(exc), style="red", markup=False, highlight=False)
        raise typer.Exit(EXIT_FAILED) from None
    finally:
        producer.close()
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
