"""`batchrelay run FILE`: a whole OpenAI, Anthropic or Mistral batch input file through the relay.

The steps are plain functions so they can be tested without a terminal:

1. `scan` reads the file as a stream, checks every line (format, unique custom_id, and what
   `submit()` would refuse) and fingerprints it; nothing is submitted if any line is bad.
2. `submit_file` streams it again and stores it in chunks with `submit_many`, each request
   keyed `run:<fingerprint>:<custom_id>`. The fingerprint is the SHA-256 of the content, so
   the same file (wherever it lies, whatever it is called) maps to the same keys on every
   run: a re-run after an interruption, or after `--no-wait`, finds every line already
   stored and submits nothing twice; an edited file is a new file.
3. `wait` follows the requests to a final state: it sleeps on the relay's pub/sub channels and
   re-reads the states (pipelined) at a modest rate, only for the requests still open.
4. `write_results` writes one output line per input line, in input order, from the results
   the relay keeps for `result_retention_s`, and sums the token usage per model.

`run` starts no workers: a relay (worker + beat) must be running for requests to move.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import orjson
import redis
import typer
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from batchrelay.config import ConfigurationError, Settings, load_settings
from batchrelay.config.kinds import ANTHROPIC, MESSAGES_ENDPOINT
from batchrelay.config.prices import PriceTable, load_prices
from batchrelay.producer import BatchRelay, InvalidMetadataError, InvalidRequestError, SubmitItem
from batchrelay.producer.intake import Intake
from batchrelay.producer.keys import Keys, tag_of
from batchrelay.producer.records import (
    CANCELLED,
    FAILED,
    IN_BATCH,
    RESULT_FIELDS,
    SUCCEEDED,
    result_payload,
)

ANTHROPIC_ENDPOINT = MESSAGES_ENDPOINT
OPENAI_FIELDS = frozenset({"custom_id", "method", "url", "body"})
ANTHROPIC_FIELDS = frozenset({"custom_id", "params"})
MISTRAL_FIELDS = frozenset({"custom_id", "body"})
# A Mistral line names no endpoint (its job does): the body's telling parameter decides.
MISTRAL_ENDPOINTS = {
    "messages": "/v1/chat/completions",
    "prompt": "/v1/fim/completions",
    "input": "/v1/embeddings",
}
CHUNK = 1000
MAX_PROBLEMS = 20
MAX_IDEMPOTENCY_KEY = 255
# A file whose first line is not a JSON line may be one pretty-printed `{"requests": [...]}`
# document; that form is parsed whole, so only up to Anthropic's own request-body limit.
MAX_DOCUMENT_BYTES = ANTHROPIC.max_bytes_per_batch
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_CONFIG = 78
EXIT_INTERRUPTED = 130


class InputFileError(Exception):
    """The input file cannot be run as it is; `problems` name each bad line."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


class _LineError(ValueError):
    pass


def _metadata(custom_id: str) -> dict[str, str]:
    """What each request keeps of its line (checked by `scan`, stored by `submit_file`)."""
    return {"custom_id": custom_id}


def _shown(custom_id: str) -> str:
    """A custom_id for a message: a very long one is cut."""
    return repr(custom_id if len(custom_id) <= 64 else custom_id[:64] + "…")


@dataclass(frozen=True)
class _Unreadable:
    reason: str


@dataclass(frozen=True)
class Line:
    """One request of the input file: `where` is "line N" (JSONL) or "requests[i]"."""

    where: str
    custom_id: str
    endpoint: str
    body: dict[str, Any]
    kind: Literal["openai", "anthropic", "mistral"]


def parse_entry(where: str, obj: Any) -> Line:
    """An OpenAI batch line `{custom_id, method, url, body}`, an Anthropic request
    `{custom_id, params}` (endpoint /v1/messages) or a Mistral line `{custom_id, body}`
    (endpoint from the body, see MISTRAL_ENDPOINTS); `_LineError` says what is wrong."""
    if isinstance(obj, _Unreadable):
        raise _LineError(obj.reason)
    if not isinstance(obj, dict):
        raise _LineError(f"must be a JSON object, got {type(obj).__name__}")
    custom_id = obj.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise _LineError("needs 'custom_id', a non-empty string")
    if "params" in obj and not obj.keys() & {"method", "url", "body"}:
        kind: Literal["openai", "anthropic", "mistral"] = "anthropic"
        endpoint, body, allowed = ANTHROPIC_ENDPOINT, obj["params"], ANTHROPIC_FIELDS
        if not isinstance(body, dict):
            raise _LineError("'params' must be a JSON object (the Messages API request)")
    elif obj.keys() == MISTRAL_FIELDS:
        kind, allowed, body = "mistral", MISTRAL_FIELDS, obj["body"]
        if not isinstance(body, dict):
            raise _LineError("'body' must be a JSON object (the API request)")
        endpoint = next((e for k, e in MISTRAL_ENDPOINTS.items() if k in body), None)
        if endpoint is None:
            raise _LineError(
                "a Mistral line {custom_id, body} needs 'messages' (chat), 'prompt' (FIM) or "
                "'input' (embeddings) in its body to tell its endpoint"
            )
    elif obj.keys() & {"method", "url", "body"}:
        kind, allowed = "openai", OPENAI_FIELDS
        endpoint, body, method = obj.get("url"), obj.get("body"), obj.get("method")
        if method != "POST":
            raise _LineError(f"'method' must be \"POST\", got {method!r}")
        if not isinstance(endpoint, str) or not endpoint.startswith("/"):
            raise _LineError(
                f"'url' must be an endpoint path such as /v1/chat/completions, got {endpoint!r}"
            )
        if not isinstance(body, dict):
            raise _LineError("'body' must be a JSON object (the API request)")
    else:
        raise _LineError(
            "neither an OpenAI batch line {custom_id, method, url, body}, an Anthropic "
            "request {custom_id, params} nor a Mistral line {custom_id, body}"
        )
    unknown = sorted(obj.keys() - allowed)
    if unknown:
        raise _LineError(f"unknown field(s) {unknown} in an {kind.capitalize()} request line")
    return Line(where, custom_id, endpoint, body, kind)


def _is_document(path: Path) -> bool:
    """True for one `{"requests": [...]}` object (Anthropic's create-batch body) rather than
    JSON lines: decided by the first non-blank line, so a JSONL file is never read whole."""
    with path.open("rb") as f:
        for raw in f:
            text = raw.strip()
            if not text:
                continue
            try:
                first = orjson.loads(text)
            except orjson.JSONDecodeError:
                if not text.startswith(b"{") or path.stat().st_size > MAX_DOCUMENT_BYTES:
                    return False
                try:
                    whole = orjson.loads(path.read_bytes())
                except orjson.JSONDecodeError:
                    return False
                return isinstance(whole, dict) and "requests" in whole
            return isinstance(first, dict) and "requests" in first and "custom_id" not in first
    return False


def _entries(path: Path, hasher: Any) -> Iterator[tuple[str, Any]]:
    """(where, parsed JSON or `_Unreadable`) per request; feeds every byte read to `hasher`."""
    if _is_document(path):
        data = path.read_bytes()
        hasher.update(data)
        requests = orjson.loads(data)["requests"]
        if not isinstance(requests, list):
            yield "file", _Unreadable("'requests' must be a list of {custom_id, params}")
            return
        for i, item in enumerate(requests):
            yield f"requests[{i}]", item
        return
    with path.open("rb") as f:
        for number, raw in enumerate(f, 1):
            hasher.update(raw)
            if not raw.strip():
                continue
            try:
                yield f"line {number}", orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                yield f"line {number}", _Unreadable(f"not valid JSON ({exc})")


@dataclass
class Plan:
    """What `scan` learnt: the fingerprint, the custom_ids in input order, and each group."""

    path: Path
    fingerprint: str
    custom_ids: list[str]
    groups: dict[str, dict[str, str]]
    kinds: Counter[str]

    @property
    def total(self) -> int:
        return len(self.custom_ids)


def scan(path: Path, intake: Intake) -> Plan:
    """Check the whole file before anything is stored; InputFileError lists the first
    MAX_PROBLEMS bad lines, each with its line number."""
    hasher = hashlib.sha256()
    problems: list[str] = []
    seen: dict[str, str] = {}
    plan = Plan(path, "", [], {}, Counter())
    for where, obj in _entries(path, hasher):
        try:
            line = parse_entry(where, obj)
            if line.custom_id in seen:
                raise _LineError(
                    f"custom_id {_shown(line.custom_id)} repeats {seen[line.custom_id]}; "
                    "custom_ids must be unique within a file"
                )
            try:
                p = intake.prepare(line.endpoint, line.body, metadata=_metadata(line.custom_id))
            except InvalidMetadataError as exc:
                raise _LineError(
                    f"custom_id is {len(line.custom_id):,} characters, too long to keep with "
                    f"the request ({exc})"
                ) from None
            except InvalidRequestError as exc:
                raise _LineError(f"(custom_id {_shown(line.custom_id)}) {exc}") from None
        except _LineError as exc:
            problems.append(f"{where}: {exc}")
            if len(problems) >= MAX_PROBLEMS:
                problems.append(f"(stopped after {MAX_PROBLEMS} problems)")
                break
            continue
        seen[line.custom_id] = where
        plan.custom_ids.append(line.custom_id)
        plan.kinds[line.kind] += 1
        plan.groups.setdefault(
            p.tag, {"profile": p.profile, "endpoint": p.endpoint, "model": p.model}
        )
    if problems:
        raise InputFileError(problems)
    if not plan.custom_ids:
        raise InputFileError([f"{path}: holds no requests"])
    plan.fingerprint = hasher.hexdigest()
    return plan


def idempotency_key(fingerprint: str, custom_id: str) -> str:
    """`run:<32 hex of the content hash>:<custom_id>`; a custom_id too long for the 255-char
    key limit is replaced by its own hash."""
    key = f"run:{fingerprint[:32]}:{custom_id}"
    if len(key) > MAX_IDEMPOTENCY_KEY:
        key = f"run:{fingerprint[:32]}:sha256:{hashlib.sha256(custom_id.encode()).hexdigest()}"
    return key


def submit_file(
    producer: BatchRelay, plan: Plan, on_chunk: Callable[[int, int], None] | None = None
) -> list[str]:
    """Store every line (idempotently) and return the request ids in input order;
    `on_chunk(submitted, new)` after each chunk, `new` counting keys not seen before."""
    keys = Keys(producer.settings.key_prefix)
    hasher = hashlib.sha256()
    ids: list[str] = []
    chunk: list[SubmitItem] = []

    def flush() -> None:
        pipe = producer.redis.pipeline(transaction=False)
        for item in chunk:
            pipe.exists(keys.idem(item.idempotency_key or ""))
        known = sum(pipe.execute())
        ids.extend(producer.submit_many(chunk))
        if on_chunk is not None:
            on_chunk(len(chunk), len(chunk) - known)
        chunk.clear()

    for where, obj in _entries(plan.path, hasher):
        try:
            line = parse_entry(where, obj)
        except _LineError as exc:
            raise InputFileError(
                [f"{where}: {exc} (the file changed after it was checked)"]
            ) from None
        chunk.append(
            SubmitItem(
                endpoint=line.endpoint,
                body=line.body,
                idempotency_key=idempotency_key(plan.fingerprint, line.custom_id),
                metadata=_metadata(line.custom_id),
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


@dataclass(frozen=True)
class Counts:
    queued: int
    in_batch: int
    succeeded: int
    failed: int

    @property
    def open(self) -> int:
        return self.queued + self.in_batch


class Tracker:
    """Request states by pipelined reads, only of requests not yet final. A record that is
    gone (expired after `result_retention_s`) counts as failed: its result is lost."""

    def __init__(self, producer: BatchRelay, ids: Sequence[str]):
        self.redis = producer.redis
        self.keys = Keys(producer.settings.key_prefix)
        self.open = list(dict.fromkeys(ids))
        self.succeeded = 0
        self.failed = 0

    def refresh(self) -> Counts:
        still: list[str] = []
        queued = in_batch = 0
        for start in range(0, len(self.open), CHUNK):
            part = self.open[start : start + CHUNK]
            pipe = self.redis.pipeline(transaction=False)
            for rid in part:
                pipe.hget(self.keys.req(rid), "state")
            for rid, raw in zip(part, pipe.execute(), strict=True):
                state = None if raw is None else raw.decode()
                if state == SUCCEEDED:
                    self.succeeded += 1
                elif state in (FAILED, CANCELLED, None):
                    self.failed += 1
                else:
                    still.append(rid)
                    if state == IN_BATCH:
                        in_batch += 1
                    else:
                        queued += 1
        self.open = still
        return Counts(queued, in_batch, self.succeeded, self.failed)


def wait(
    producer: BatchRelay,
    ids: Sequence[str],
    on_progress: Callable[[Counts], None],
    *,
    refresh_s: float = 1.0,
    min_gap_s: float = 0.25,
) -> Counts:
    """Block until every request is final. Sleeps on the `done` channels of the requests'
    groups (so the end is seen at once), re-reading states at most every `min_gap_s` after a
    message and every `refresh_s` otherwise; the gaps stretch so that re-reading a very large
    run takes no more than a tenth of the time."""
    tracker = Tracker(producer, ids)
    pubsub = producer.redis.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(*{tracker.keys.done(tag_of(rid)) for rid in ids})
    try:
        while True:
            started = time.monotonic()
            counts = tracker.refresh()
            on_progress(counts)
            if not tracker.open:
                return counts
            cost = time.monotonic() - started
            pubsub.get_message(timeout=max(refresh_s, 10 * cost))
            while pubsub.get_message(timeout=0) is not None:
                pass
            rest = started + max(min_gap_s, 10 * cost) - time.monotonic()
            if rest > 0:
                time.sleep(rest)
    finally:
        pubsub.close()


def tokens(usage: Any) -> tuple[int, int]:
    """(input, output) tokens of a response's `usage`: chat/completions `prompt_tokens` and
    `completion_tokens`, responses and Anthropic `input_tokens` and `output_tokens`,
    embeddings `prompt_tokens` only. Prompt-cache token counts are not priced."""
    if not isinstance(usage, dict):
        return 0, 0

    def first(*names: str) -> int:
        for name in names:
            value = usage.get(name)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        return 0

    return first("prompt_tokens", "input_tokens"), first("completion_tokens", "output_tokens")


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
    keys = Keys(producer.settings.key_prefix)
    summary = Summary()
    partial = out.with_name(out.name + ".part")
    with partial.open("wb") as f:
        for start in range(0, len(ids), CHUNK):
            part = ids[start : start + CHUNK]
            pipe = producer.redis.pipeline(transaction=False)
            for rid in part:
                pipe.hmget(keys.req(rid), RESULT_FIELDS)
            rows = pipe.execute()
            custom_ids = plan.custom_ids[start : start + CHUNK]
            for custom_id, rid, values in zip(custom_ids, part, rows, strict=True):
                meta = plan.groups[tag_of(rid)]
                usage = summary.by_model.setdefault(meta["model"], ModelUsage())
                usage.requests += 1
                if values[0] is None:
                    line = {"id": rid, "status": FAILED, "response": None, "error": RECORD_GONE}
                else:
                    line = result_payload(rid, meta, values)
                if line["status"] == SUCCEEDED:
                    summary.succeeded += 1
                    usage.succeeded += 1
                    tokens_in, tokens_out = tokens(line.get("usage"))
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
    """The usage and cost table (compact enough for 80 columns), and the models it has no
    price for."""
    table = Table(
        title="Usage and cost (USD)",
        box=box.SIMPLE_HEAD,
        title_justify="left",
        pad_edge=False,
        collapse_padding=True,
    )
    table.add_column("model", overflow="fold", min_width=10)
    for name in ("requests", "failed", "in tokens", "out tokens", "batch", "sync", "saving"):
        table.add_column(name, justify="right", no_wrap=True)
    totals = [0.0, 0.0]
    unpriced = []
    all_usage = ModelUsage()
    for model, u in sorted(summary.by_model.items()):
        for name in ("requests", "succeeded", "input_tokens", "output_tokens"):
            setattr(all_usage, name, getattr(all_usage, name) + getattr(u, name))
        price = prices.lookup(model)
        if price is None:
            unpriced.append(model)
            money = ["-", "-", "-"]
        else:
            batch = price.batch_cost(u.input_tokens, u.output_tokens)
            sync = price.sync_cost(u.input_tokens, u.output_tokens)
            totals[0] += batch
            totals[1] += sync
            money = [usd(batch), usd(sync), usd(sync - batch)]
        table.add_row(model, *_usage_cells(u), *money)
    if len(summary.by_model) > 1:
        batch, sync = totals
        table.add_section()
        table.add_row("total", *_usage_cells(all_usage), usd(batch), usd(sync), usd(sync - batch))
    return table, unpriced


def _usage_cells(u: ModelUsage) -> list[str]:
    failed = u.requests - u.succeeded
    return [
        f"{u.requests:,}",
        f"[red]{failed:,}[/red]" if failed else "0",
        count(u.input_tokens),
        count(u.output_tokens),
    ]


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

        def show(c: Counts) -> None:
            nonlocal last_line
            for task, value in zip(
                bars, (c.queued, c.in_batch, c.succeeded, c.failed), strict=True
            ):
                progress.update(task, completed=value)
            if not console.is_terminal and time.monotonic() - last_line >= 30:
                last_line = time.monotonic()
                console.print(
                    f"queued {c.queued:,}  in a batch {c.in_batch:,}  done {c.succeeded:,}  "
                    f"failed {c.failed:,}"
                )

        wait(producer, ids, show)
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
            f"{file}: {plan.total:,} requests ({kinds}), fingerprint {plan.fingerprint[:12]}",
            markup=False,
        )
        ids = _submit_and_wait(console, producer, plan, no_wait, submitted)
        if ids is None:
            console.print(
                f"submitted {plan.total:,} requests ({submitted.new:,} new, "
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
            f"[yellow]interrupted[/yellow] ({submitted.lines:,} requests submitted so far); "
            "run the same command again to resume: nothing is submitted twice"
        )
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except redis.ConnectionError as exc:
        console.print(f"cannot reach Redis: {exc}", style="red", markup=False, highlight=False)
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
