"""`batchrelay run` reads Mistral batch lines `{custom_id, body}` (the endpoint told by the
body) and prices Mistral models in its cost table."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchrelay.batchfile import InputFileError, scan
from batchrelay.config import load_settings
from batchrelay.config.prices import DEFAULT_PRICES, load_prices
from batchrelay.producer.intake import Intake
from tests.cli.conftest import chat_line, write_jsonl


@pytest.fixture
def intake() -> Intake:
    settings = load_settings(
        redis_url="redis://127.0.0.1:1/0",
        providers=[
            {
                "name": "oa",
                "base_url": "http://127.0.0.1:1/v1",
                "api_key": "k",
                "models": ["gpt-*"],
            },
            {
                "name": "mistral",
                "kind": "mistral",
                "base_url": "http://127.0.0.1:1",
                "api_key": "k",
                "models": ["mistral-*", "codestral-*"],
            },
        ],
    )
    return Intake(settings)


def mistral(i: int, **body: object) -> dict:
    return {"custom_id": f"m-{i}", "body": body}


def test_mistral_lines_beside_openai_ones(intake: Intake, tmp_path: Path) -> None:
    lines = [
        mistral(0, model="mistral-small-latest", messages=[{"role": "user", "content": "hi"}]),
        mistral(1, model="codestral-latest", prompt="def f(", suffix="):"),
        mistral(2, model="mistral-embed", input="hello"),
        chat_line(3),
    ]
    plan = scan(write_jsonl(tmp_path / "m.jsonl", lines), intake)
    assert plan.kinds == {"mistral": 3, "openai": 1}
    groups = sorted((g["profile"], g["endpoint"]) for g in plan.groups.values())
    assert groups == [
        ("mistral", "/v1/chat/completions"),
        ("mistral", "/v1/embeddings"),
        ("mistral", "/v1/fim/completions"),
        ("oa", "/v1/chat/completions"),
    ]


def test_a_mistral_line_must_tell_its_endpoint_and_model(intake: Intake, tmp_path: Path) -> None:
    lines = [
        mistral(0, model="mistral-small-latest", temperature=0),
        mistral(1, messages=[{"role": "user", "content": "hi"}]),
    ]
    with pytest.raises(InputFileError) as caught:
        scan(write_jsonl(tmp_path / "bad.jsonl", lines), intake)
    first, second = caught.value.problems
    assert first.startswith("line 1: a Mistral line {custom_id, body} needs 'messages' (chat)")
    assert second.startswith("line 2: (custom_id 'm-1') body has no 'model'")


@pytest.mark.parametrize(
    ("model", "entry"),
    [
        ("mistral-small-latest", "mistral-small"),
        ("mistral-large-2411", "mistral-large"),
        ("codestral-2501", "codestral"),
        ("mistral-embed", "mistral-embed"),
    ],
)
def test_mistral_models_are_priced(model: str, entry: str) -> None:
    price = load_prices().lookup(model)
    assert price == DEFAULT_PRICES[entry] and price.batch_discount == 0.5
