"""Writing result files as streams: one pass over the input, lines out as they are made.

Lines come out in an order different from the input (shuffled in bounded chunks), so
clients must join on custom_id. Memory stays flat whatever the batch size.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import orjson

from batchrelay.emulator.content import HANDLERS, Ctx, anthropic_message
from batchrelay.emulator.errors import anthropic_error, google_error, server_error_body
from batchrelay.emulator.faults import digest_fails, line_digest
from batchrelay.emulator.gemini_content import reply as gemini_reply
from batchrelay.emulator.gemini_content import request_problem
from batchrelay.emulator.lifecycle import NEVER_RAN
from batchrelay.emulator.store import BatchRecord
from batchrelay.emulator.validation import normalize_endpoint

CHUNK_LINES = 1000
NEVER_RAN_MESSAGES = {
    "batch_expired": "This request could not be executed before the completion window expired.",
    "batch_cancelled": "This request was not executed because the batch was cancelled.",
}


class ShuffledWriter:
    """Buffers up to `chunk` lines and writes each chunk in a shuffled (never input) order."""

    def __init__(self, fh: BinaryIO, seed: int, chunk: int = CHUNK_LINES) -> None:
        self._fh = fh
        self._rng = random.Random(seed)
        self._chunk = chunk
        self._buf: list[bytes] = []
        self.lines = 0

    def write(self, line: bytes) -> None:
        self._buf.append(line)
        self.lines += 1
        if len(self._buf) >= self._chunk:
            self.flush()

    def flush(self) -> None:
        buf = self._buf
        if len(buf) > 1:
            original = buf[:]
            self._rng.shuffle(buf)
            if buf == original:
                buf.reverse()
        self._fh.write(b"".join(buf))
        self._buf = []


class OutputWriter:
    """Writes result lines, spoiling the first success line as the batch's fault says.

    `unparseable_line` writes that line cut in half (not JSON); `unknown_custom_id` writes a
    copy of it under a custom_id that was never sent. `lines` counts the real results only.
    """

    def __init__(
        self, writer: ShuffledWriter, batch: BatchRecord, id_field: str = "custom_id"
    ) -> None:
        self._writer = writer
        self._id_field = id_field
        self._kind = batch.fault_malformed_output
        self._pending = self._kind in ("unparseable_line", "unknown_custom_id")
        self._extra_key = line_digest(batch.id, "\0unknown").hex()
        self.lines = 0

    def write(self, line: dict, *, success: bool = True) -> None:
        raw = orjson.dumps(line) + b"\n"
        self.lines += 1
        if not (self._pending and success):
            self._writer.write(raw)
            return
        self._pending = False
        if self._kind == "unparseable_line":
            self._writer.write(raw[: _text_cut(raw)] + b"\n")
            return
        self._writer.write(raw)
        extra = {**line, self._id_field: "unknown-" + self._extra_key[:16]}
        if "id" in extra:
            extra["id"] = "batch_req_" + self._extra_key
        self._writer.write(orjson.dumps(extra) + b"\n")


def _text_cut(line: bytes) -> int:
    """About half of a line's text, on a UTF-8 boundary: a prefix that is never whole JSON."""
    n = max(1, len(line.rstrip(b"\n")) // 2)
    while n > 1 and line[n] & 0xC0 == 0x80:
        n -= 1
    return n


def truncate_mid_line(path: Path) -> None:
    """Cut the file inside the line holding its middle byte; every line after it is lost."""
    half, start, cut = path.stat().st_size // 2, 0, None
    with open(path, "rb") as fh:
        for line in fh:
            if start + len(line) > half:
                cut = start + _text_cut(line)
                break
            start += len(line)
    if cut is not None:
        os.truncate(path, cut)


@dataclass
class Outcome:
    counts: dict[str, int] = field(default_factory=dict)
    usage: dict[str, int] = field(default_factory=dict)
    output_lines: int = 0
    error_lines: int = 0


def _usage(input_tokens: int, output_tokens: int) -> dict[str, int]:
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "total_tokens": input_tokens + output_tokens,
    }


def _seed(batch: BatchRecord) -> int:
    return int.from_bytes(line_digest(batch.id, "")[:8], "big")


def _requests(path: Path):
    with open(path, "rb") as src:
        for raw in src:
            if raw.strip():
                yield orjson.loads(raw)


def write_openai_results(
    batch: BatchRecord, src: Path, out_path: Path, err_path: Path, *, embedding_dim: int
) -> Outcome:
    handler = HANDLERS[normalize_endpoint(batch.endpoint)]
    never_code = NEVER_RAN.get(batch.run_end_kind or "", "batch_cancelled")
    never_error = {"code": never_code, "message": NEVER_RAN_MESSAGES[never_code]}
    status = batch.fault_error_status
    fail_body = server_error_body("mistral" if batch.flavor == "mistral" else "openai", status)
    fraction, ran = batch.fault_error_fraction, batch.processed
    start, rate = batch.in_progress_at or batch.created_at, batch.rate_rps
    input_tokens = output_tokens = 0
    dumps = orjson.dumps
    with open(out_path, "wb") as out_fh, open(err_path, "wb") as err_fh:
        out_file = ShuffledWriter(out_fh, _seed(batch))
        out = OutputWriter(out_file, batch)
        err = ShuffledWriter(err_fh, _seed(batch) + 1)
        for i, obj in enumerate(_requests(src)):
            custom_id = obj["custom_id"]
            digest = line_digest(batch.id, custom_id)
            key = digest.hex()
            line = {"id": "batch_req_" + key, "custom_id": custom_id}
            if i >= ran:
                # Mistral reports no line for a request that never ran (timeout, cancel).
                if batch.flavor != "mistral":
                    line["response"], line["error"] = None, never_error
                    err.write(dumps(line) + b"\n")
                continue
            if fraction > 0 and digest_fails(digest, fraction):
                response = {"status_code": status, "request_id": "req_" + key, "body": fail_body}
                line["response"], line["error"] = response, None
                err.write(dumps(line) + b"\n")
                continue
            reply = handler(obj["body"], Ctx(key, int(start + i / rate), embedding_dim))
            input_tokens += reply.input_tokens
            output_tokens += reply.output_tokens
            line["response"] = {"status_code": 200, "request_id": "req_" + key, "body": reply.body}
            line["error"] = None
            out.write(line)
        out_file.flush()
        err.flush()
    if batch.fault_malformed_output == "truncated":
        truncate_mid_line(out_path)
    return Outcome(
        counts={"total": batch.total, "completed": out.lines, "failed": err.lines},
        usage=_usage(input_tokens, output_tokens),
        output_lines=out_file.lines,
        error_lines=err.lines,
    )


def anthropic_param_problem(params: object, known_model: Callable[[str], bool]):
    """(status, message) of why these Messages params would be refused, else None."""
    if not isinstance(params, dict):
        return 400, "params: Input should be a valid dictionary"
    model = params.get("model")
    if not isinstance(model, str) or not model:
        return 400, "model: Field required"
    max_tokens = params.get("max_tokens")
    if max_tokens is None:
        return 400, "max_tokens: Field required"
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        return 400, "max_tokens: Input should be greater than or equal to 1"
    messages = params.get("messages")
    if not isinstance(messages, list) or not messages:
        return 400, "messages: Field required (at least one message)"
    if params.get("stream") is True:
        return 400, "stream: Streaming is not supported in the Message Batches API"
    if not known_model(model):
        return 404, f"model: {model}"
    return None


def write_anthropic_results(
    batch: BatchRecord,
    src: Path,
    out_path: Path,
    *,
    known_model: Callable[[str], bool],
    embedding_dim: int,
) -> Outcome:
    counts = {"succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
    never = "expired" if batch.run_end_kind == "expired" else "canceled"
    fraction, status, ran = batch.fault_error_fraction, batch.fault_error_status, batch.processed
    start, rate = batch.in_progress_at or batch.created_at, batch.rate_rps
    input_tokens = output_tokens = 0
    with open(out_path, "wb") as out_fh:
        out_file = ShuffledWriter(out_fh, _seed(batch))
        out = OutputWriter(out_file, batch)
        for i, obj in enumerate(_requests(src)):
            custom_id = obj["custom_id"]
            digest = line_digest(batch.id, custom_id)
            key = digest.hex()
            if i >= ran:
                result: dict = {"type": never}
            else:
                problem = anthropic_param_problem(obj.get("params"), known_model)
                if problem is None and fraction > 0 and digest_fails(digest, fraction):
                    problem = (status, "")
                if problem is not None:
                    code, message = problem
                    error = (
                        anthropic_error(code, message, "req_" + key[:24])
                        if message
                        else {**server_error_body("anthropic", code), "request_id": "req_" + key}
                    )
                    result = {"type": "errored", "error": error}
                else:
                    reply = anthropic_message(
                        obj["params"], Ctx(key, int(start + i / rate), embedding_dim)
                    )
                    input_tokens += reply.input_tokens
                    output_tokens += reply.output_tokens
                    result = {"type": "succeeded", "message": reply.body}
            counts[result["type"]] += 1
            out.write(
                {"custom_id": custom_id, "result": result}, success=result["type"] == "succeeded"
            )
        out_file.flush()
    if batch.fault_malformed_output == "truncated":
        truncate_mid_line(out_path)
    usage = _usage(input_tokens, output_tokens)
    return Outcome(counts=counts, usage=usage, output_lines=out_file.lines)


def gemini_entry(obj: dict) -> tuple[dict, object]:
    """(what identifies the result, the request) of one Gemini input: a file line
    `{"key", "request"}`, an inline entry `{"request", "metadata"}`, or a bare request line
    (the REST docs' upload example); results carry `key` and `metadata` back unchanged."""
    ident = {k: obj[k] for k in ("key", "metadata") if k in obj}
    return ident, obj.get("request", obj)


def write_gemini_results(
    batch: BatchRecord, src: Path, out_path: Path, *, embedding_dim: int
) -> Outcome:
    """Results of a batch that ran to the end, in input order (Gemini keeps it): a `response`
    or an `error` (a google.rpc.Status) per request. Expired and cancelled batches have none."""
    fraction, status = batch.fault_error_fraction, batch.fault_error_status
    start, rate = batch.in_progress_at or batch.created_at, batch.rate_rps
    input_tokens = output_tokens = failed = 0
    with open(out_path, "wb") as out_fh:
        # One line per chunk: never shuffled, so results keep the input order.
        out_file = ShuffledWriter(out_fh, _seed(batch), chunk=1)
        out = OutputWriter(out_file, batch, id_field="key")
        for i, obj in enumerate(_requests(src)):
            ident, request = gemini_entry(obj)
            digest = line_digest(batch.id, orjson.dumps(ident).decode())
            problem = request_problem(batch.endpoint, request)
            if problem is None and fraction > 0 and digest_fails(digest, fraction):
                problem = (status, server_error_body("gemini", status)["error"]["message"])
            if problem is not None:
                failed += 1
                out.write({**ident, "error": google_error(*problem)["error"]}, success=False)
                continue
            assert isinstance(request, dict)
            ctx = Ctx(digest.hex(), int(start + i / rate), embedding_dim)
            answer = gemini_reply(batch.endpoint, request, batch.model or "", ctx)
            input_tokens += answer.input_tokens
            output_tokens += answer.output_tokens
            out.write({**ident, "response": answer.body})
        out_file.flush()
    if batch.fault_malformed_output == "truncated":
        truncate_mid_line(out_path)
    return Outcome(
        counts={
            "requestCount": batch.total,
            "successfulRequestCount": batch.total - failed,
            "failedRequestCount": failed,
            "pendingRequestCount": 0,
        },
        usage=_usage(input_tokens, output_tokens),
        output_lines=out_file.lines,
    )
