"""The OpenAPI document `batchrelay serve` serves at /openapi.json, committed as
docs/openapi.json (a test checks they match). Regenerate it with
`python -m batchrelay.api.openapi > docs/openapi.json`."""

from __future__ import annotations

from typing import Any

import orjson

from batchrelay.api.app import create_app
from batchrelay.config import Settings
from batchrelay.config.tenants import Tenants


def document() -> dict[str, Any]:
    """The schema does not depend on settings or tenants: defaults and none stand in."""
    return create_app(Settings(), Tenants.of([])).openapi()


def render() -> str:
    return orjson.dumps(document(), option=orjson.OPT_INDENT_2).decode() + "\n"


if __name__ == "__main__":
    print(render(), end="")
