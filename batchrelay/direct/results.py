"""A run's results: spilled to one local file as they are downloaded, written out in input order.

Each final line is appended to the spill file as the tail of its output line; only its offset
and length are kept per input index (a few bytes per line), so a 200 MB result set is never
held in memory. `write` then emits one line per input line, in input order, reading the tails
back from the memory-mapped spill, and renames the output into place.
"""

from __future__ import annotations

import mmap
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from batchrelay.config.prices import usage_tokens
from batchrelay.producer.records import response_usage


@dataclass
class ModelUsage:
    requests: int = 0
    succeeded: int = 0
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass
class Summary:
    succeeded: int = 0
    failed: int = 0
    by_model: dict[str, ModelUsage] = field(default_factory=dict)


class Results:
    """Final outcomes by input index; the first one recorded for an index wins."""

    def __init__(self, total: int, folder: Path, fp: str):
        self.total, self.fp = total, fp
        self.path = folder / "results.spill"
        self._spill = self.path.open("wb")
        self._at = 0
        self.offsets = array("q", [-1]) * total
        self.lengths = array("l", [0]) * total
        self.summary = Summary()

    def has(self, index: int) -> bool:
        return self.offsets[index] >= 0

    def succeeded(self, index: int, model: str, status_code: int, body: bytes) -> None:
        if self.has(index):
            return
        usage = self._usage(model)
        usage.succeeded += 1
        self.summary.succeeded += 1
        try:
            tokens_in, tokens_out = usage_tokens(response_usage(orjson.loads(body)))
        except orjson.JSONDecodeError:
            tokens_in = tokens_out = 0
        usage.input_tokens += tokens_in
        usage.output_tokens += tokens_out
        self._put(
            index,
            b',"status":"succeeded","response":{"status_code":'
            + str(status_code).encode()
            + b',"body":'
            + body
            + b'},"error":null}\n',
        )

    def failed(self, index: int, model: str, error: bytes) -> None:
        if self.has(index):
            return
        self._usage(model)
        self.summary.failed += 1
        self._put(index, b',"status":"failed","response":null,"error":' + error + b"}\n")

    def _usage(self, model: str) -> ModelUsage:
        usage = self.summary.by_model.setdefault(model, ModelUsage())
        usage.requests += 1
        return usage

    def _put(self, index: int, tail: bytes) -> None:
        self._spill.write(tail)
        self.offsets[index] = self._at
        self.lengths[index] = len(tail)
        self._at += len(tail)

    @property
    def done(self) -> int:
        return self.summary.succeeded + self.summary.failed

    def write(self, out: Path, custom_ids: Sequence[str]) -> Summary:
        """One line per input line, in input order: `{id, custom_id, status, response,
        error}` (`id`: the custom_id the provider saw). Written beside OUT and renamed, so OUT
        is either complete or untouched."""
        self._spill.close()
        missing = [i for i in range(self.total) if self.offsets[i] < 0]
        if missing:
            raise AssertionError(f"{len(missing)} line(s) have no final result")
        prefix = b'{"id":"' + self.fp[:16].encode() + b"-"
        partial = out.with_name(out.name + ".part")
        with self.path.open("rb") as spill, partial.open("wb") as f:
            view = mmap.mmap(spill.fileno(), 0, access=mmap.ACCESS_READ) if self._at else b""
            try:
                buf: list[bytes] = []
                for i, custom_id in enumerate(custom_ids):
                    at = self.offsets[i]
                    buf.append(
                        prefix
                        + str(i).encode()
                        + b'","custom_id":'
                        + orjson.dumps(custom_id)
                        + view[at : at + self.lengths[i]]
                    )
                    if len(buf) >= 1000:
                        f.write(b"".join(buf))
                        buf.clear()
                f.write(b"".join(buf))
            finally:
                if isinstance(view, mmap.mmap):
                    view.close()
        partial.replace(out)
        return self.summary
