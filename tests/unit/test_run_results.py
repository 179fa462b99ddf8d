"""`batchrelay run`'s results writer: lines arriving in any order come out in input order, held
in memory up to a bound and spilled to a file beyond it; only complete files replace OUT."""

from __future__ import annotations

import random
from pathlib import Path

import orjson
import pytest

from batchrelay.direct import results as results_module
from batchrelay.direct.results import Results

FP = "ab" * 32


def arrive(folder: Path, order: list[int], n: int) -> Results:
    res = Results([f"c{i}" for i in range(n)], folder, FP, folder / "out.jsonl")
    for i in order:
        if i % 7 == 3:
            res.failed(i, "m", orjson.dumps({"code": "x", "message": f"bad {i}"}))
        else:
            body = {"n": i, "usage": {"prompt_tokens": 2, "completion_tokens": 1}}
            res.succeeded(i, "m", 200, orjson.dumps(body), body if i % 2 else None)
    return res


@pytest.mark.parametrize("hold_bytes", [0, 300, 32 * 1024 * 1024], ids=["spill", "mixed", "memory"])
def test_lines_in_any_order_come_out_in_input_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hold_bytes: int
) -> None:
    monkeypatch.setattr(results_module, "HOLD_BYTES", hold_bytes)
    n = 500
    order = list(range(n))
    random.Random(7).shuffle(order)
    summary = arrive(tmp_path, order + order[:50], n).write()  # repeats change nothing
    out = [orjson.loads(line) for line in (tmp_path / "out.jsonl").read_bytes().splitlines()]
    assert [o["custom_id"] for o in out] == [f"c{i}" for i in range(n)]
    assert [o["id"] for o in out] == [f"{FP[:16]}-{i}" for i in range(n)]
    for i, o in enumerate(out):
        if i % 7 == 3:
            assert o["status"] == "failed" and o["response"] is None, o
            assert o["error"]["message"] == f"bad {i}"
        else:
            assert o["status"] == "succeeded" and o["error"] is None, o
            assert o["response"] == {"status_code": 200, "body": {"n": i, "usage": {
                "prompt_tokens": 2, "completion_tokens": 1}}}  # fmt: skip
    failed = sum(1 for i in range(n) if i % 7 == 3)
    assert (summary.succeeded, summary.failed) == (n - failed, failed)
    usage = summary.by_model["m"]
    assert (usage.requests, usage.input_tokens, usage.output_tokens) == (
        n,
        2 * (n - failed),
        n - failed,
    )


def test_an_unfinished_run_leaves_out_untouched(tmp_path: Path) -> None:
    (tmp_path / "out.jsonl").write_bytes(b"previous\n")
    res = arrive(tmp_path, [0, 1, 3], 5)
    with pytest.raises(AssertionError, match="line 2 has no final result"):
        res.write()
    res.close()
    assert (tmp_path / "out.jsonl").read_bytes() == b"previous\n"
    assert not (tmp_path / "out.jsonl.part").exists()
