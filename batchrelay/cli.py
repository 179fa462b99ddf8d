"""`batchrelay` command line: one sub-command per operator task."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from batchrelay import demo, metrics_cli, ops, run, stack

# Typer's rich help (0.29, with its vendored click) gives every flag a value type, so each
# command listed `--help <bool>` and `--json <bool>`; its plain help, as click's, shows none.
# Sub-command groups inherit the mode when added with `add_typer`.
app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__, rich_markup_mode=None)


@app.callback()
def _root() -> None:
    """batchrelay: single LLM requests in, provider Batch API jobs out, results back by callback."""


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


def main() -> None:
    app()
