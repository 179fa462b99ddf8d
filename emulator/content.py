"""Deterministic response bodies, derived from each request so results can be matched back.

Text replies are "echo: " + the text of the last user message (string content, or its text
parts joined with a space); embeddings are a unit vector seeded by a hash of the input.
Token counts are estimates: about one token per four characters.
"""

from __future__ import annotations

import base64
import hashlib
import math
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

ECHO = "echo: "

MODERATION_CATEGORIES = {
    "harassment": ["text"],
    "harassment/threatening": ["text"],
    "hate": ["text"],
    "hate/threatening": ["text"],
    "illicit": ["text"],
    "illicit/violent": ["text"],
    "self-harm": ["text"],
    "self-harm/instructions": ["text"],
    "self-harm/intent": ["text"],
    "sexual": ["text"],
    "sexual/minors": ["text"],
    "violence": ["text"],
    "violence/graphic": ["text"],
}


@dataclass(frozen=True)
class Reply:
    body: dict
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class Ctx:
    """What a reply may depend on besides the request body."""

    key: str  # hex digest of (batch id, custom_id): stable ids for this result
    created: int
    embedding_dim: int


def estimate_tokens(text: str) -> int:
    return max(1, (len(text) + 3) // 4)


def text_of(content: Any) -> str:
    """Text of a message's content: a string, or the text of its parts joined by a space."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return " ".join(parts)
    return ""


def last_user_text(messages: Any) -> str:
    if isinstance(messages, str):
        return messages
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role", "user") == "user":
            return text_of(message.get("content"))
    return ""


def _all_text(messages: Any) -> str:
    if isinstance(messages, str):
        return messages
    if not isinstance(messages, list):
        return ""
    return " ".join(text_of(m.get("content")) for m in messages if isinstance(m, dict))


def _input_texts(value: Any) -> list[str]:
    """Inputs of embeddings/moderations/completions as strings (token arrays kept as text)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        if value and all(isinstance(v, int) for v in value):
            return [" ".join(map(str, value))]
        return [v if isinstance(v, str) else text_of([v]) or str(v) for v in value]
    return [str(value)]


def chat_completion(body: dict, ctx: Ctx) -> Reply:
    messages = body.get("messages")
    reply = ECHO + last_user_text(messages)
    prompt_tokens = estimate_tokens(_all_text(messages)) + 3 * (
        len(messages) if isinstance(messages, list) else 1
    )
    completion_tokens = estimate_tokens(reply)
    n = body.get("n") if isinstance(body.get("n"), int) and body["n"] > 0 else 1
    choice = {
        "message": {"role": "assistant", "content": reply, "refusal": None, "annotations": []},
        "logprobs": None,
        "finish_reason": "stop",
    }
    return Reply(
        {
            "id": "chatcmpl-" + ctx.key[:24],
            "object": "chat.completion",
            "created": ctx.created,
            "model": body["model"],
            "choices": [{"index": i, **choice} for i in range(n)],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens * n,
                "total_tokens": prompt_tokens + completion_tokens * n,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {
                    "reasoning_tokens": 0,
                    "audio_tokens": 0,
                    "accepted_prediction_tokens": 0,
                    "rejected_prediction_tokens": 0,
                },
            },
            "service_tier": "default",
            "system_fingerprint": "fp_emulator",
        },
        prompt_tokens,
        completion_tokens * n,
    )


def completion(body: dict, ctx: Ctx) -> Reply:
    prompts = _input_texts(body.get("prompt", ""))
    texts = [ECHO + p for p in prompts]
    prompt_tokens = sum(estimate_tokens(p) for p in prompts)
    completion_tokens = sum(estimate_tokens(t) for t in texts)
    return Reply(
        {
            "id": "cmpl-" + ctx.key[:24],
            "object": "text_completion",
            "created": ctx.created,
            "model": body["model"],
            "choices": [
                {"index": i, "text": t, "logprobs": None, "finish_reason": "stop"}
                for i, t in enumerate(texts)
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
            "system_fingerprint": "fp_emulator",
        },
        prompt_tokens,
        completion_tokens,
    )


def embedding_vector(text: str, dim: int) -> list[float]:
    """A unit vector of `dim` floats seeded by the input text."""
    raw = array("h", hashlib.shake_256(text.encode()).digest(2 * dim))
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    return [v / norm for v in raw]


def embeddings(body: dict, ctx: Ctx) -> Reply:
    texts = _input_texts(body.get("input", ""))
    dim = body.get("dimensions")
    dim = dim if isinstance(dim, int) and dim > 0 else ctx.embedding_dim
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    for i, text in enumerate(texts):
        vector: Any = embedding_vector(text, dim)
        if as_base64:
            vector = base64.b64encode(array("f", vector).tobytes()).decode()
        data.append({"object": "embedding", "index": i, "embedding": vector})
    tokens = sum(estimate_tokens(t) for t in texts)
    return Reply(
        {
            "object": "list",
            "data": data,
            "model": body["model"],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        },
        tokens,
        0,
    )


def moderations(body: dict, ctx: Ctx) -> Reply:
    texts = _input_texts(body.get("input", ""))
    result = {
        "flagged": False,
        "categories": {name: False for name in MODERATION_CATEGORIES},
        "category_scores": {name: 0.0001 for name in MODERATION_CATEGORIES},
        "category_applied_input_types": MODERATION_CATEGORIES,
    }
    return Reply(
        {
            "id": "modr-" + ctx.key[:24],
            "model": body.get("model") or "omni-moderation-latest",
            "results": [result for _ in texts],
        },
        sum(estimate_tokens(t) for t in texts),
        0,
    )


def responses(body: dict, ctx: Ctx) -> Reply:
    given = body.get("input", "")
    reply = ECHO + last_user_text(given)
    input_tokens = estimate_tokens(_all_text(given) + " " + str(body.get("instructions") or ""))
    output_tokens = estimate_tokens(reply)
    return Reply(
        {
            "id": "resp_" + ctx.key,
            "object": "response",
            "created_at": ctx.created,
            "completed_at": ctx.created,
            "status": "completed",
            "background": False,
            "error": None,
            "incomplete_details": None,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "model": body["model"],
            "output": [
                {
                    "type": "message",
                    "id": "msg_" + ctx.key,
                    "status": "completed",
                    "role": "assistant",
                    "content": [
                        {"type": "output_text", "text": reply, "annotations": [], "logprobs": []}
                    ],
                }
            ],
            "parallel_tool_calls": True,
            "previous_response_id": body.get("previous_response_id"),
            "reasoning": {"effort": None, "summary": None},
            "service_tier": "default",
            "store": bool(body.get("store", True)),
            "temperature": 1.0,
            "text": {"format": {"type": "text"}, "verbosity": "medium"},
            "tool_choice": "auto",
            "tools": [],
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": {
                "input_tokens": input_tokens,
                "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                "output_tokens": output_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": input_tokens + output_tokens,
            },
            "user": None,
            "metadata": body.get("metadata") or {},
        },
        input_tokens,
        output_tokens,
    )


def anthropic_message(params: dict, ctx: Ctx) -> Reply:
    messages = params.get("messages")
    reply = ECHO + last_user_text(messages)
    input_tokens = estimate_tokens(text_of(params.get("system")) + " " + _all_text(messages))
    output_tokens = estimate_tokens(reply)
    return Reply(
        {
            "id": "msg_" + ctx.key[:24],
            "type": "message",
            "role": "assistant",
            "model": params["model"],
            "content": [{"type": "text", "text": reply, "citations": None}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {
                "input_tokens": input_tokens,
                "output_tokens": output_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "service_tier": "batch",
            },
        },
        input_tokens,
        output_tokens,
    )


def fim_completion(body: dict, ctx: Ctx) -> Reply:
    """Mistral's fill-in-the-middle: a chat.completion whose text echoes the prompt."""
    prompt = body.get("prompt") if isinstance(body.get("prompt"), str) else ""
    reply = chat_completion({**body, "messages": [{"role": "user", "content": prompt}]}, ctx)
    body_out = {**reply.body, "id": "fim-" + ctx.key[:24]}
    return Reply(body_out, reply.input_tokens, reply.output_tokens)


OPENAI_ENDPOINTS: dict[str, Callable[[dict, Ctx], Reply]] = {
    "/v1/chat/completions": chat_completion,
    "/v1/embeddings": embeddings,
    "/v1/responses": responses,
    "/v1/completions": completion,
    "/v1/moderations": moderations,
}

# Every endpoint the emulator answers in a batch: OpenAI's and Mistral's fill-in-the-middle.
HANDLERS: dict[str, Callable[[dict, Ctx], Reply]] = {
    **OPENAI_ENDPOINTS,
    "/v1/fim/completions": fim_completion,
}

# The body parameter each endpoint cannot do without (checked during validation).
REQUIRED_PARAM = {
    "/v1/fim/completions": "prompt",
    "/v1/chat/completions": "messages",
    "/v1/embeddings": "input",
    "/v1/responses": "input",
    "/v1/completions": "prompt",
    "/v1/moderations": "input",
}
