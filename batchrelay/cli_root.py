"""The `batchrelay` Typer app's root: its options and the check run before any sub-command,
shared by the full CLI (`cli.py`) and the `run`-only start-up (`entry.py`)."""

from __future__ import annotations

import typer

from batchrelay import extras

HELP = "`batchrelay` command line: one sub-command per operator task."

# Sub-commands that start a local stack (the emulator, Celery workers as child processes):
# checked before they start, since a child's ImportError would only show as a dead process.
STACK_COMMANDS = frozenset({"dev", "demo"})


def new_app() -> typer.Typer:
    # Typer's rich help (0.29, with its vendored click) gives every flag a value type, so
    # each command listed `--help <bool>` and `--json <bool>`; its plain help, as click's,
    # shows none. Sub-command groups inherit the mode when added with `add_typer`.
    app = typer.Typer(no_args_is_help=True, add_completion=False, help=HELP, rich_markup_mode=None)
    app.callback()(_root)
    return app


def _root(ctx: typer.Context) -> None:
    """batchrelay: single LLM requests in, provider Batch API jobs out, results back by callback."""
    if ctx.invoked_subcommand in STACK_COMMANDS:
        extras.require("worker", "emulator")
