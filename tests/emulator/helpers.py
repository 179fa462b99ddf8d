"""Building input files and waiting on batches, for the emulator tests."""

from __future__ import annotations

import time

import anthropic
import openai
import orjson
from anthropic.types.messages import MessageBatch
from openai.types import Batch, FileObject

ENDED = {"completed", "failed", "expired", "cancelled"}

MODELS = {
    "/v1/chat/completions": "gpt-4o-mini",
    "/v1/embeddings": "text-embedding-3-small",
    "/v1/responses": "gpt-4o-mini",
    "/v1/completions": "gpt-3.5-turbo-instruct",
    "/v1/moderations": "omni-moderation-latest",
}


def token(i: int) -> str:
    return f"token-{i:05d}"


def body_for(endpoint: str, i: int, model: str | None = None) -> dict:
    model = model or MODELS[endpoint]
    if endpoint == "/v1/chat/completions":
        return {"model": model, "messages": [{"role": "user", "content": f"say {token(i)}"}]}
    if endpoint == "/v1/completions":
        return {"model": model, "prompt": f"say {token(i)}"}
    return {"model": model, "input": f"say {token(i)}"}


def request_line(i: int, endpoint: str = "/v1/chat/completions", **overrides) -> dict:
    line = {
        "custom_id": f"req-{i}",
        "method": "POST",
        "url": endpoint,
        "body": body_for(endpoint, i),
    }
    line.update(overrides)
    return line


def jsonl(lines: list) -> bytes:
    return b"".join((ln if isinstance(ln, bytes) else orjson.dumps(ln)) + b"\n" for ln in lines)


def upload(client: openai.OpenAI, lines: list, name: str = "input.jsonl", **kwargs) -> FileObject:
    return client.files.create(
        file=(name, jsonl(lines), "application/jsonl"), purpose="batch", **kwargs
    )


def create_batch(
    client: openai.OpenAI, lines: list, endpoint: str = "/v1/chat/completions", **kwargs
) -> Batch:
    source = upload(client, lines)
    return client.batches.create(
        input_file_id=source.id, endpoint=endpoint, completion_window="24h", **kwargs
    )


def wait_batch(
    client: openai.OpenAI, batch_id: str, statuses: set[str] = ENDED, timeout: float = 15.0
) -> Batch:
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in statuses:
            return batch
        if time.monotonic() > deadline:
            raise AssertionError(f"batch {batch_id} still {batch.status} after {timeout}s")
        time.sleep(0.01)


def read_jsonl(client: openai.OpenAI, file_id: str | None) -> list[dict]:
    if file_id is None:
        return []
    text = client.files.content(file_id).content
    return [orjson.loads(line) for line in text.splitlines() if line]


def message_request(i: int, **params) -> dict:
    base = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": f"say {token(i)}"}],
    }
    base.update(params)
    return {"custom_id": f"req-{i}", "params": base}


def wait_message_batch(
    client: anthropic.Anthropic, batch_id: str, timeout: float = 15.0
) -> MessageBatch:
    deadline = time.monotonic() + timeout
    while True:
        batch = client.messages.batches.retrieve(batch_id)
        if batch.processing_status == "ended":
            return batch
        if time.monotonic() > deadline:
            raise AssertionError(f"message batch {batch_id} not ended after {timeout}s")
        time.sleep(0.01)
