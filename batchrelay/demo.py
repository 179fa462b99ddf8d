"""`batchrelay demo`: the whole system on this machine in about fifteen seconds.

It starts the embedded stack (private Redis, the Batch API emulator, a real Celery worker and
beat), runs `examples/requests.jsonl` through it with `batchrelay run` (the same code, called
in-process: progress bars, results file, cost table), shows a sample of the results, and
stops everything it started, also on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from batchrelay import run as run_command
from batchrelay.stack import (
    EmbeddedStack,
    StackError,
    Stopped,
    app_env,
    redacted,
    stop_on_signals,
)

EXAMPLE_FILE = Path(__file__).resolve().parent.parent / "examples" / "requests.jsonl"
EXCERPT_CHARS = 60


@contextlib.contextmanager
def _environ(values: Mapping[str, str]) -> Iterator[None]:
    """`batchrelay run` reads its settings from the environment: point it at the stack."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def excerpt(response: Any) -> str:
    """A one-line view of a response body: the text of a chat or Responses answer, the shape
    of embeddings, the verdict of a moderation."""
    body = response.get("body") if isinstance(response, dict) else None
    if not isinstance(body, dict):
        return "-"
    text = None
    if body.get("object") == "chat.completion":
        text = body["choices"][0]["message"]["content"]
    elif body.get("object") == "response":
        text = " ".join(
            part.get("text", "")
            for item in body.get("output", [])
            for part in item.get("content", [])
            if isinstance(part, dict)
        )
    elif body.get("object") == "list" and body.get("data"):
        vectors = body["data"]
        return f"{len(vectors)} vector(s) of {len(vectors[0]['embedding'])} dimensions"
    elif "results" in body:
        flagged = sum(1 for r in body["results"] if r.get("flagged"))
        return f"moderation: {flagged} of {len(body['results'])} flagged"
    if text is None:
        return "-"
    text = " ".join(text.split())
    return text


def sample_table(results: Path) -> Table:
    """The first result of each endpoint and model (so one per provider batch), in file order;
    only the result column is cut to fit the terminal."""
    rows: list[tuple[str, str, Text]] = []
    shown: set[tuple[str, str]] = set()
    with results.open("rb") as f:
        for raw in f:
            line = orjson.loads(raw)
            response = line["response"] or {}
            body = response.get("body") if isinstance(response.get("body"), dict) else {}
            model = str(body.get("model", "-"))
            kind = (line["custom_id"].split("-", 1)[0], model)
            if kind in shown:
                continue
            shown.add(kind)
            if line["status"] == "succeeded":
                result = Text(excerpt(response))
            else:
                result = Text(f"{line['status']}: {line['error']}", style="red")
            rows.append((line["custom_id"], model, result))
    table = Table(title="Sample results", box=box.SIMPLE_HEAD, title_justify="left")
    for i, name in enumerate(("custom_id", "model")):
        width = max(len(name), *(len(r[i]) for r in rows))
        table.add_column(name, no_wrap=True, min_width=width)
    table.add_column("result", no_wrap=True, overflow="ellipsis", max_width=EXCERPT_CHARS)
    for row in rows:
        table.add_row(*row)
    return table


def run_demo(
    console: Console, file: Path, output: Path | None, redis_url: str | None
) -> tuple[int, float]:
    """Start the stack, run `file` through it, show results; returns (run's exit code, s)."""
    started = time.monotonic()
    # On a Redis the demo does not own, a fresh key prefix keeps runs apart from other data.
    overrides = {"key_prefix": f"demo-{secrets.token_hex(4)}"} if redis_url else {}
    console.print("[bold]batchrelay demo[/bold]: starting Redis, emulator, worker and beat…")
    with EmbeddedStack(redis_url=redis_url, settings=overrides) as stack:
        took = time.monotonic() - started
        console.print(
            f"stack ready in {took:.1f} s: Redis {redacted(stack.redis_url)}, "
            f"emulator {stack.provider_url} (profiles "
            f"{', '.join(p.name for p in stack.settings.providers)}), "
            f"flush after {stack.settings.flush_max_wait_s:g} s\n"
        )
        out = output or stack.logdir.parent / f"{file.stem}.results.jsonl"  # the stack's tmp
        env = app_env(stack.settings, tuple(type(stack.settings).model_fields), only_changed=False)
        code = 0
        with _environ(env):
            try:
                run_command.run(file=file, output=out, no_wait=False)
            except typer.Exit as exc:
                code = exc.exit_code
                if code != run_command.EXIT_FAILED:
                    raise
        console.print()
        console.print(sample_table(out))
        assert stack.emulator is not None
        stats = stack.emulator.stats()
        console.print(
            f"`batchrelay run` packed the requests into {stats['batches_created']['total']} "
            f"provider batches (one per endpoint and model), uploaded "
            f"{stats['files_uploaded']} files and made {stats['api_requests']} Batch API calls."
        )
        console.print(
            "The emulator answers with an echo of the prompt; a provider profile with a real "
            "base URL and key gives real answers, at the same batch prices."
        )
        if output is None:
            console.print("(the results file goes with the stack; keep one with --output)")
        console.print(
            "Next: `batchrelay dev` keeps this stack running for your own app (examples/)."
        )
    return code, time.monotonic() - started


def demo(
    file: Annotated[
        Path | None,
        typer.Option(dir_okay=False, help="Batch input to run (default: examples/requests.jsonl)."),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Keep the results file here.")
    ] = None,
    redis_url: Annotated[
        str | None,
        typer.Option(
            envvar="BATCHRELAY_REDIS_URL",
            help="Use this Redis instead of a private redis-server (own key prefix).",
        ),
    ] = None,
) -> None:
    """Start the embedded stack, run an example file through it, show results and costs."""
    console = Console()
    path = file or EXAMPLE_FILE
    if not path.is_file():
        console.print(
            f"[red]{path} not found[/red]: run the demo from a source checkout "
            "(`pip install -e .`), or pass --file with an OpenAI batch input file"
        )
        raise typer.Exit(2)
    try:
        with stop_on_signals():
            code, took = run_demo(console, path, output, redis_url)
    except (KeyboardInterrupt, Stopped):
        console.print("\n[yellow]demo interrupted[/yellow]; every process it started has exited")
        raise typer.Exit(run_command.EXIT_INTERRUPTED) from None
    except typer.Exit as exc:
        if exc.exit_code == run_command.EXIT_INTERRUPTED:  # Ctrl-C while `run` waited
            console.print("[yellow]demo interrupted[/yellow]; every process it started has exited")
        raise
    except StackError as exc:
        console.print(f"[red]batchrelay demo: {exc}[/red]")
        raise typer.Exit(1) from None
    console.print(f"demo finished in {took:.0f} s; every process it started has exited")
    if code:
        raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    app.command()(demo)
