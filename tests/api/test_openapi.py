"""The served /openapi.json is the committed docs/openapi.json, and the live API keeps to it:
schemathesis sends generated requests (valid and invalid) to every operation and checks
there is no 5xx and every answer matches the schema (status, content type, body)."""

from __future__ import annotations

import httpx
import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from batchrelay.api.openapi import render
from tests._stack import ROOT
from tests.api.conftest import Api, api_key

COMMITTED = ROOT / "docs" / "openapi.json"
EXAMPLES = 10  # per operation and mode: the whole run stays well under a minute


def test_served_schema_is_the_committed_one(api: Api):
    served = httpx.get(api.url + "/openapi.json").json()
    assert served == orjson.loads(COMMITTED.read_text()), (
        "docs/openapi.json is stale: python -m batchrelay.api.openapi > docs/openapi.json"
    )
    assert COMMITTED.read_text() == render()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_api_keeps_to_its_schema(api: Api, mode: GenerationMode):
    schema = schemathesis.openapi.from_url(api.url + "/openapi.json")
    headers = {"Authorization": f"Bearer {api_key('schema')}"}
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 7
    for operation in operations:
        inputs = operation.body or operation.path_parameters or operation.query
        if mode is GenerationMode.NEGATIVE and not inputs:
            continue  # nothing to get wrong (GET /healthz)

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
        def run(case: schemathesis.Case) -> None:
            case.call_and_validate(headers=headers, timeout=70, checks=checks)

        run()
