"""The `batchrelay` executable. `batchrelay run` starts with only its own command loaded: the
other commands' modules (the producer client, the HTTP API, the local stack…) cost a large
part of a second to import, which every run of a file would pay."""

from __future__ import annotations

import sys

import typer

from batchrelay import extras


def main() -> None:
    """Run the CLI; a missing optional extra ends it with one line naming the extra, exit 1."""
    try:
        app = _run_only() if sys.argv[1:2] == ["run"] else _full()
        app()
    except extras.MissingExtraError as error:
        _missing_extra(error)
    except ModuleNotFoundError as error:
        missing = extras.extra_for(error)
        if missing is None:
            raise
        _missing_extra(missing)


def _full() -> typer.Typer:
    from batchrelay.cli import app

    return app


def _run_only() -> typer.Typer:
    """The same `run` command on an app that holds only it (`batchrelay run --help` reads
    the same)."""
    from batchrelay import cli_root, run

    app = cli_root.new_app()
    run.register(app)
    return app


def _missing_extra(error: extras.MissingExtraError) -> None:
    typer.echo(str(error), err=True)
    sys.exit(1)
