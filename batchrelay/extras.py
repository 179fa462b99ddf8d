"""Which optional extra brings which module, so a missing one is named, not traced back.

The core distribution is what a web app needs to submit; running a worker, the emulator
or Flower needs an extra (pyproject.toml `[project.optional-dependencies]`). A sub-command
that reaches a module of an extra that is not installed must tell the operator which
`pip install 'batchrelay[...]'` fixes it.
"""

from __future__ import annotations

import importlib.util

# Top-level import name -> the extra whose requirements install it.
EXTRA_OF_MODULE: dict[str, str] = {
    "redbeat": "worker",
    "standardwebhooks": "worker",
    "aiohttp": "worker",
    "uvloop": "worker",
    "fastapi": "emulator",
    "starlette": "emulator",
    "uvicorn": "emulator",
    "python_multipart": "emulator",
    "flower": "flower",
    "prometheus_client": "metrics",
}


class MissingExtraError(Exception):
    """An optional extra a command needs is not installed; the message says how to add it."""

    def __init__(self, extras: list[str], module: str):
        self.extras = extras
        names = ",".join(extras)
        which = f"the {extras[0]!r} extra" if len(extras) == 1 else f"the extras {names}"
        super().__init__(
            f"batchrelay: this command needs {which}, which is not installed "
            f"(no module named {module!r}): pip install 'batchrelay[{names}]'"
        )


def extra_for(error: ModuleNotFoundError) -> MissingExtraError | None:
    """The MissingExtraError behind an import failure, or None if no extra brings that module."""
    top = (error.name or "").partition(".")[0]
    extra = EXTRA_OF_MODULE.get(top)
    return MissingExtraError([extra], top) if extra else None


def require(*extras: str) -> None:
    """Raise MissingExtraError naming every one of `extras` with a module that is not installed.

    For commands whose modules are imported in child processes (a Celery worker the command
    starts), where an ImportError would surface as a dead child instead of here.
    """
    missing = [
        (extra, module)
        for extra in extras
        for module, owner in EXTRA_OF_MODULE.items()
        if owner == extra and importlib.util.find_spec(module) is None
    ]
    if missing:
        names = list(dict.fromkeys(extra for extra, _ in missing))
        raise MissingExtraError(names, missing[0][1])
