"""`batchrelay` command line: one sub-command per operator task."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from batchrelay import cli_root, costs_cli, demo, metrics_cli, ops, run, stack
from batchrelay.api import command as api_command

app = cli_root.new_app()


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
    """The `batchrelay` executable (`batchrelay.entry.main`)."""
    from batchrelay.entry import main as entry_main

    entry_main()
