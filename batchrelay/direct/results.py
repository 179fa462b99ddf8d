"""A run's results, written out in input order as they are downloaded.

A line is written as soon as every line before it is. One that cannot be written yet waits as
the tail of its output line: in memory up to HOLD_BYTES, then appended to a spill file of which
only the offset and length are kept per input index (a few bytes per line), so a 200 MB result
set is never held in memory.
"""

from __future__ import annotations

import os
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

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


SUCCEEDED = b',"status":"succeeded","response":{"status_code":%d,"body":'
SUCCEEDED_200 = SUCCEEDED % 200
# Early lines wait in memory up to this many bytes, then in the spill file.
HOLD_BYTES = 32 * 1024 * 1024


class Results:
    """Final outcomes by input index; the first one recorded for an index wins.

    Lines that arrive in input order (the usual case: one batch, answered in order) go
    straight to the output file; the others wait in the spill until the lines before them
    are written, so the output needs no second pass when nothing came out of order.
    """

    def __init__(self, custom_ids: Sequence[str], folder: Path, fp: str, out: Path):
        self.custom_ids, self.total, self.out = custom_ids, len(custom_ids), out
        self.prefix = b'{"id":"' + fp[:16].encode() + b"-"
        self.partial = out.with_name(out.name + ".part")
        self._out: BinaryIO | None = None
        self._next = 0  # the first input index not yet in the output
        self._spill = (folder / "results.spill").open("w+b")  # appended; read by pread
        self._at = 0
        self._held: dict[int, bytes] = {}  # early lines in memory, up to HOLD_BYTES
        self._held_bytes = 0
        self.offsets = array("q", [-1]) * self.total
        self.lengths = array("l", [0]) * self.total
        self.summary = Summary()

    def has(self, index: int) -> bool:
        return self.offsets[index] >= 0

    def succeeded(self, index: int, model: str, status_code: int, body: bytes, parsed: Any) -> None:
        """`parsed`: the body as the adapter parsed it (None: parse `body` for its usage).
        Called per result line, so written for speed."""
        if self.offsets[index] >= 0:
            return
        usage = self._usage(model)
        usage.succeeded += 1
        self.summary.succeeded += 1
        if parsed is None:
            parsed = orjson.loads(body)
        counted = parsed.get("usage") if type(parsed) is dict else None
        tokens_in, tokens_out = usage_tokens(counted or response_usage(parsed))
        usage.input_tokens += tokens_in
        usage.output_tokens += tokens_out
        head = SUCCEEDED_200 if status_code == 200 else SUCCEEDED % status_code
        self._put(index, head + body + b'},"error":null}\n')

    def failed(self, index: int, model: str, error: bytes) -> None:
        if self.offsets[index] >= 0:
            return
        self._usage(model)
        self.summary.failed += 1
        self._put(index, b',"status":"failed","response":null,"error":' + error + b"}\n")

    def _usage(self, model: str) -> ModelUsage:
        usage = self.summary.by_model.get(model)
        if usage is None:
            usage = self.summary.by_model[model] = ModelUsage()
        usage.requests += 1
        return usage

    def _put(self, index: int, tail: bytes) -> None:
        self.offsets[index] = 0  # taken; where it lies matters only while it waits
        if index == self._next:
            self._emit(index, tail)
            if self._held or self._at:  # something may be waiting for this line
                self._drain()
        elif self._held_bytes + len(tail) <= HOLD_BYTES:
            self._held[index] = tail
            self._held_bytes += len(tail)
        else:
            self._spill.write(tail)
            self.offsets[index] = self._at
            self.lengths[index] = len(tail)
            self._at += len(tail)

    def _emit(self, index: int, tail: bytes) -> None:
        if self._out is None:
            self._out = self.partial.open("wb")
        self._out.write(
            self.prefix
            + str(index).encode()
            + b'","custom_id":'
            + orjson.dumps(self.custom_ids[index])
            + tail
        )
        self._next = index + 1

    def _drain(self) -> None:
        """Write the waiting lines that are next in input order."""
        flushed = False
        while self._next < self.total:
            i = self._next
            tail = self._held.pop(i, None)
            if tail is not None:
                self._held_bytes -= len(tail)
            elif self.lengths[i]:
                if not flushed:
                    self._spill.flush()
                    flushed = True
                tail = os.pread(self._spill.fileno(), self.lengths[i], self.offsets[i])
                self.lengths[i] = 0
            else:
                return
            self._emit(i, tail)

    @property
    def done(self) -> int:
        return self.summary.succeeded + self.summary.failed

    def write(self) -> Summary:
        """Finish OUT: one line per input line, in input order, `{id, custom_id, status,
        response, error}` (`id`: the custom_id the provider saw). Written beside OUT and
        renamed, so OUT is either complete or untouched."""
        if self._next < self.total:
            raise AssertionError(f"line {self._next} has no final result")
        if self._out is None:
            self._out = self.partial.open("wb")
        self._out.close()
        self._spill.close()
        self.partial.replace(self.out)
        return self.summary

    def close(self) -> None:
        """Drop a partial output (an interrupted run); OUT is left as it was."""
        self._spill.close()
        if self._out is not None and not self._out.closed:
            self._out.close()
            self.partial.unlink(missing_ok=True)
