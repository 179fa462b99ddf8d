"""`batchrelay run` with Gemini batch lines `{key, request}`: checked at scan, sent in direct
file mode (real Redis, the emulator; no worker), results in input order and priced from
`usageMetadata` in the cost table."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchrelay import run as run_module
from batchrelay.config.prices import DEFAULT_PRICES
from tests.cli.conftest import Live, read_jsonl, write_jsonl


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")


def gemini_line(i: int) -> dict:
    if i % 5 == 4:
        request = {
            "model": "models/gemini-embedding-001",
            "content": {"parts": [{"text": f"t{i}"}]},
        }
    else:
        request = {
            "model": "gemini-2.5-flash",
            "contents": [{"role": "user", "parts": [{"text": f"question {i}"}]}],
        }
    return {"key": f"g-{i}", "request": request}


def test_gemini_lines_run_in_order_and_are_priced(live: Live, tmp_path: Path) -> None:
    n = 20
    src = write_jsonl(tmp_path / "gemini.jsonl", [gemini_line(i) for i in range(n)])
    result = live.run(str(src))
    assert result.exit_code == 0, result.output
    assert f"{n} requests ({n} gemini)" in result.output.replace(",", "")
    out = read_jsonl(tmp_path / "gemini.results.jsonl")
    assert [o["custom_id"] for o in out] == [f"g-{i}" for i in range(n)]
    tokens_in = tokens_out = 0
    for i, o in enumerate(out):
        assert o["status"] == "succeeded", o
        body = o["response"]["body"]
        if i % 5 == 4:
            assert len(body["embedding"]["values"]) == 8
            continue
        assert body["candidates"][0]["content"]["parts"][0]["text"] == f"echo: question {i}"
        tokens_in += body["usageMetadata"]["promptTokenCount"]
        tokens_out += body["usageMetadata"]["candidatesTokenCount"]
    sync = DEFAULT_PRICES["gemini-2.5-flash"].sync_cost(tokens_in, tokens_out)
    row = next(r for r in result.output.splitlines() if r.strip().startswith("gemini-2.5-flash"))
    assert row.split() == [  # no request failed, so no `failed` column
        "gemini-2.5-flash",
        str(n - n // 5),
        run_module.count(tokens_in),
        run_module.count(tokens_out),
        run_module.usd(sync / 2),
        run_module.usd(sync / 2),
    ]


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ({"key": "", "request": {}}, "needs 'key'"),
        ({"key": "a", "request": []}, "'request' must be a JSON object"),
        ({"key": "a", "request": {"contents": []}}, "needs 'model'"),
        ({"key": "a", "request": {"model": "gemini-2.5-flash"}, "x": 1}, "unknown field(s) ['x']"),
        (
            {"key": "a", "request": {"model": "gemini-2.5-flash", "contents": []}},
            "'contents' must be a non-empty list",
        ),
    ],
)
def test_bad_gemini_lines_are_refused_before_anything_is_stored(
    live: Live, tmp_path: Path, line: dict, words: str
) -> None:
    src = write_jsonl(tmp_path / "bad.jsonl", [gemini_line(0), line])
    result = live.run(str(src))
    assert result.exit_code != 0 and "line 2" in result.output and words in result.output
    assert live.keys() == [] and live.batches() == []
