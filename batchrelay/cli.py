"""`batchrelay` command line: one sub-command per operator task."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from batchrelay import costs_cli, demo, extras, metrics_cli, ops, run, stack
from batchrelay.api import command as api_command

# Typer's rich help (0.29, with its vendored click) gives every flag a value type, so each
# command listed `--help <bool>` and `--json <bool>`; its plain help, as click's, shows none.
# Sub-command groups inherit the mode when added with `add_typer`.
app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__, rich_markup_mode=None)


# Sub-commands that start a local stack (the emulator, Celery workers as child processes):
# checked before they start, since a child's ImportError would only show as a dead process.
STACK_COMMANDS = frozenset({"dev", "demo"})


@app.callback()
def _root(ctx: typer.Context) -> None:
    """batchrelay: single LLM requests in, provider Batch API jobs out, results back by callback."""
    if ctx.invoked_subcommand in STACK_COMMANDS:
        extras.require("worker", "emulator")


@app.command()
def emulator(
    host: Annotated[str | None, typer.Option(help="Interface (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="TCP port (default 8089).")] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Keep state here across restarts (default: memory).")
    ] = None,
) -> None:
    """Run the local Batch API emulator; every other knob is a BATCHRELAY_EMULATOR_* setting."""
    from batchrelay.emulator import EmulatorConfig, serve

    overrides = {"host": host, "port": port, "data_dir": data_dir}
    config = EmulatorConfig(**{k: v for k, v in overrides.items() if v is not None})
    typer.echo(
        f"batchrelay emulator on http://{config.host}:{config.port} "
        f"(OpenAI base URL .../v1, Anthropic base URL /, Azure /openai/v1), "
        f"data: {config.data_dir or 'in memory'}"
    )
    serve(config)


ops.register(app)
metrics_cli.register(app)
run.register(app)
stack.register(app)
demo.register(app)
costs_cli.register(app)
api_command.register(app)


def main() -> None:
    """Run the CLI; a missing optional extra ends it with one line naming the extra, exit 1."""
    try:
        app()
    except extras.MissingExtraError as error:
        _missing_extra(error)
    except ModuleNotFoundError as error:
        missing = extras.extra_for(error)
        if missing is None:
            raise
        _missing_extra(missing)


def _missing_extra(error: extras.MissingExtraError) -> None:
    typer.echo(str(error), err=True)
    sys.exit(1)
