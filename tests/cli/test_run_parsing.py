"""Reading batch input files (OpenAI lines, Anthropic lines and documents) and the helpers of
the cost table, without Redis."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import orjson
import pytest
from rich.console import Console

from batchrelay.batchfile import ANTHROPIC_ENDPOINT, InputFileError, scan
from batchrelay.config import load_settings
from batchrelay.config.prices import load_prices
from batchrelay.config.prices import usage_tokens as tokens
from batchrelay.direct.parts import index_of, line_id
from batchrelay.producer.intake import Intake
from batchrelay.run import ModelUsage, Summary, cost_table, count, usd
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
                "name": "claude",
                "kind": "anthropic",
                "base_url": "http://127.0.0.1:1",
                "api_key": "k",
                "models": ["claude-*"],
            },
        ],
    )
    return Intake(settings)


def claude(i: int) -> dict:
    return {
        "custom_id": f"c-{i}",
        "params": {
            "model": "claude-sonnet-4-5",
            "max_tokens": 64,
            "messages": [{"role": "user", "content": f"hi {i}"}],
        },
    }


def test_openai_and_anthropic_lines_mixed(intake: Intake, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "mixed.jsonl", [chat_line(0), claude(1), chat_line(2)])
    plan = scan(src, intake)
    assert plan.custom_ids == ["req-0", "c-1", "req-2"]
    assert plan.kinds == {"openai": 2, "anthropic": 1}
    assert plan.fingerprint == hashlib.sha256(src.read_bytes()).hexdigest()
    endpoints = sorted(g["endpoint"] for g in plan.groups.values())
    assert endpoints == ["/v1/chat/completions", ANTHROPIC_ENDPOINT]


@pytest.mark.parametrize("indent", [False, True], ids=["one-line", "pretty"])
def test_anthropic_requests_document(intake: Intake, tmp_path: Path, indent: bool) -> None:
    """Anthropic's create-batch body `{"requests": [...]}`, on one line or pretty-printed."""
    option = orjson.OPT_INDENT_2 if indent else 0
    src = tmp_path / "requests.json"
    src.write_bytes(orjson.dumps({"requests": [claude(i) for i in range(3)]}, option=option))
    plan = scan(src, intake)
    assert plan.custom_ids == ["c-0", "c-1", "c-2"]
    assert plan.kinds == {"anthropic": 3}
    assert plan.fingerprint == hashlib.sha256(src.read_bytes()).hexdigest()


def test_document_errors_name_the_request(intake: Intake, tmp_path: Path) -> None:
    bad = claude(1)
    del bad["params"]["max_tokens"]
    src = tmp_path / "requests.json"
    src.write_bytes(orjson.dumps({"requests": [claude(0), bad]}, option=orjson.OPT_INDENT_2))
    with pytest.raises(InputFileError) as caught:
        scan(src, intake)
    assert caught.value.problems == [
        "requests[1]: (custom_id 'c-1') body 'max_tokens' must be a positive integer for "
        "/v1/messages, got None"
    ]


def test_same_content_same_fingerprint_anywhere(intake: Intake, tmp_path: Path) -> None:
    """Resuming finds its keys even if the file was moved or renamed; an edit is a new file."""
    lines = [chat_line(i) for i in range(3)]
    a = scan(write_jsonl(tmp_path / "a.jsonl", lines), intake)
    (tmp_path / "moved").mkdir()
    b = scan(write_jsonl(tmp_path / "moved" / "b.jsonl", lines), intake)
    lines[2]["body"]["temperature"] = 0
    c = scan(write_jsonl(tmp_path / "a.jsonl", lines), intake)
    assert a.fingerprint == b.fingerprint != c.fingerprint


def test_problems_are_capped(intake: Intake, tmp_path: Path) -> None:
    src = tmp_path / "junk.jsonl"
    src.write_bytes(b"nope\n" * 50)
    with pytest.raises(InputFileError) as caught:
        scan(src, intake)
    problems = caught.value.problems
    assert len(problems) == 21 and problems[-1] == "(stopped after 20 problems)"
    assert problems[19].startswith("line 20: not valid JSON")


def test_empty_file(intake: Intake, tmp_path: Path) -> None:
    src = tmp_path / "empty.jsonl"
    src.write_bytes(b"\n\n")
    with pytest.raises(InputFileError, match="holds no requests"):
        scan(src, intake)


def test_provider_custom_ids_name_the_file_and_the_line() -> None:
    """What the provider sees as a line's custom_id is valid for every provider (Anthropic:
    ^[a-zA-Z0-9_-]{1,64}$), names its input line, and is not taken for another file's."""
    fp, other = "0f" * 32, "a1" * 32
    ids = [line_id(fp, i) for i in (0, 7, 49_999, 10**9)]
    assert all(re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", i) for i in ids)
    assert [index_of(fp, i) for i in ids] == [0, 7, 49_999, 10**9]
    assert index_of(other, ids[1]) is None
    assert index_of(fp, "req-1") is None and index_of(fp, f"{fp[:16]}-x") is None


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        ({"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}, (10, 3)),
        ({"input_tokens": 7, "output_tokens": 2, "total_tokens": 9}, (7, 2)),
        ({"prompt_tokens": 5, "total_tokens": 5}, (5, 0)),
        ({"input_tokens": 4, "output_tokens": 8, "cache_read_input_tokens": 100}, (4, 8)),
        (None, (0, 0)),
        ({"prompt_tokens": True}, (0, 0)),
    ],
    ids=["chat", "responses-anthropic", "embeddings", "anthropic-cache", "none", "bool"],
)
def test_tokens_from_usage(usage: object, expected: tuple[int, int]) -> None:
    assert tokens(usage) == expected


def test_number_formats() -> None:
    assert (count(987_654), count(123_456_789)) == ("987,654", "123.46M")
    assert (usd(16.294), usd(0.04), usd(0.000058), usd(0)) == (
        "$16.29",
        "$0.0400",
        "$0.000058",
        "$0.0000",
    )


def test_cost_table_fits_80_columns_without_cutting_names_or_figures() -> None:
    """What `make demo` prints when piped: every model name and figure whole, on one line."""
    usage = {
        "claude-3-5-haiku-20241022": ModelUsage(300, 297, 45_678, 23_456),
        "gpt-4o-mini-2024-07-18": ModelUsage(12_000, 11_990, 3_456_789, 1_234_567),
        "text-embedding-3-small": ModelUsage(50_000, 50_000, 12_345_678, 0),
    }
    table, unpriced = cost_table(Summary(by_model=usage), load_prices())
    console = Console(width=80, record=True, force_terminal=False)
    console.print(table)
    lines = console.export_text().splitlines()
    assert unpriced == [] and max(len(line.rstrip()) for line in lines) <= 80
    prices = load_prices()
    for model, u in usage.items():
        price = prices.lookup(model)
        assert price is not None
        batch = price.batch_cost(u.input_tokens, u.output_tokens)
        saving = price.sync_cost(u.input_tokens, u.output_tokens) - batch
        row = next(line for line in lines if line.strip().startswith(model))
        assert row.split() == [
            model,
            f"{u.requests:,}",
            f"{u.requests - u.succeeded:,}",
            count(u.input_tokens),
            count(u.output_tokens),
            usd(batch),
            usd(saving),
        ]
    assert any(line.startswith("in/out: tokens. Synchronous price $") for line in lines)
