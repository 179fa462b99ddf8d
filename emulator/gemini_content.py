"""Deterministic Gemini response bodies (GenerateContentResponse, EmbedContentResponse).

Same rules as the other providers' replies (content.py): text is "echo: " + the text of the last
user turn, embeddings a unit vector seeded by the input text, tokens about one per four
characters. A request Gemini would refuse gets (status, message) instead of a reply.
"""

from __future__ import annotations

from typing import Any

from batchrelay.emulator.content import (
    ECHO,
    Ctx,
    Reply,
    embedding_vector,
    estimate_tokens,
    text_of,
)

MAX_EMBED_DIM = 3072


def _turn_text(content: Any) -> str:
    return text_of(content.get("parts")) if isinstance(content, dict) else ""


def request_problem(method: str, request: Any) -> tuple[int, str] | None:
    """(status, message) of why Gemini would refuse this request, else None."""
    if not isinstance(request, dict):
        return 400, "Invalid JSON payload received. The request must be an object."
    if method == "embedContent":
        if not isinstance(request.get("content"), dict):
            return 400, "* EmbedContentRequest.content: content is not specified"
        return None
    contents = request.get("contents")
    if not isinstance(contents, list) or not contents:
        return 400, "* GenerateContentRequest.contents: contents is not specified"
    return None


def generate_content(request: dict, model: str, ctx: Ctx) -> Reply:
    contents = request["contents"]
    user_turns = [c for c in contents if isinstance(c, dict) and c.get("role", "user") == "user"]
    reply = ECHO + (_turn_text(user_turns[-1]) if user_turns else "")
    prompt = " ".join(_turn_text(c) for c in contents)
    system = _turn_text(request.get("systemInstruction") or request.get("system_instruction"))
    prompt_tokens = estimate_tokens(system + prompt)
    output_tokens = estimate_tokens(reply)
    body = {
        "candidates": [
            {
                "content": {"parts": [{"text": reply}], "role": "model"},
                "finishReason": "STOP",
                "index": 0,
            }
        ],
        "usageMetadata": {
            "promptTokenCount": prompt_tokens,
            "candidatesTokenCount": output_tokens,
            "totalTokenCount": prompt_tokens + output_tokens,
        },
        "modelVersion": model,
        "responseId": ctx.key[:22],
    }
    return Reply(body, prompt_tokens, output_tokens)


def embed_content(request: dict, ctx: Ctx) -> Reply:
    text = _turn_text(request["content"])
    dim = request.get("outputDimensionality") or request.get("output_dimensionality")
    dim = dim if isinstance(dim, int) and 0 < dim <= MAX_EMBED_DIM else ctx.embedding_dim
    return Reply({"embedding": {"values": embedding_vector(text, dim)}}, estimate_tokens(text), 0)


def reply(method: str, request: dict, model: str, ctx: Ctx) -> Reply:
    if method == "embedContent":
        return embed_content(request, ctx)
    return generate_content(request, model, ctx)
