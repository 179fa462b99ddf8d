"""Reading a batch input file for `batchrelay run`: OpenAI batch lines, Anthropic request lines,
Mistral lines, Gemini lines or one Anthropic `{"requests": [...]}` document.

`scan` streams the file, checks every line (format, unique custom_id, and what `submit()`
would refuse) and fingerprints it, so nothing is submitted if any line is bad; `entries`
streams it again for submission. No Redis here: a file is checked before anything is stored.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson

from batchrelay import InvalidMetadataError, InvalidRequestError
from batchrelay.config.kinds import ANTHROPIC, MESSAGES_ENDPOINT
from batchrelay.producer.intake import Intake, Prepared

ANTHROPIC_ENDPOINT = MESSAGES_ENDPOINT
OPENAI_FIELDS = frozenset({"custom_id", "method", "url", "body"})
ANTHROPIC_FIELDS = frozenset({"custom_id", "params"})
MISTRAL_FIELDS = frozenset({"custom_id", "body"})
GEMINI_FIELDS = frozenset({"key", "request"})
# A Mistral line names no endpoint (its job does): the body's telling parameter decides.
MISTRAL_ENDPOINTS = {
    "messages": "/v1/chat/completions",
    "prompt": "/v1/fim/completions",
    "input": "/v1/embeddings",
}
MAX_PROBLEMS = 20
# A custom_id this short is far within the request metadata limit (MAX_METADATA_BYTES).
SHORT_ID = 1024
# A file whose first line is not a JSON line may be one pretty-printed `{"requests": [...]}`
# document; that form is parsed whole, so only up to Anthropic's own request-body limit.
MAX_DOCUMENT_BYTES = ANTHROPIC.max_bytes_per_batch


class InputFileError(Exception):
    """The input file cannot be run as it is; `problems` name each bad line."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


class LineError(ValueError):
    """What is wrong with one line."""

    pass


def metadata(custom_id: str) -> dict[str, str]:
    """What a request keeps of its line: checked by `scan` as `submit()` would check it."""
    return {"custom_id": custom_id}


def _shown(custom_id: str) -> str:
    """A custom_id for a message: a very long one is cut."""
    return repr(custom_id if len(custom_id) <= 64 else custom_id[:64] + "…")


@dataclass(frozen=True)
class _Unreadable:
    reason: str


@dataclass(slots=True)  # not frozen: one per line of the file, and frozen costs ~3 us each
class Line:
    """One request of the input file: `where` is "line N" (JSONL) or "requests[i]"."""

    where: str
    custom_id: str
    endpoint: str
    body: dict[str, Any]
    kind: Literal["openai", "anthropic", "mistral", "gemini"]


def parse_gemini(where: str, obj: dict[str, Any]) -> Line:
    """A Gemini batch line `{key, request}`: the request names its model in `request.model`
    (as google-genai's inline requests do); `content` makes it an embedContent request."""
    key, body = obj.get("key"), obj.get("request")
    if not isinstance(key, str) or not key:
        raise LineError("needs 'key', a non-empty string")
    if not isinstance(body, dict):
        raise LineError("'request' must be a JSON object (the Gemini API request)")
    model = body.get("model")
    if not isinstance(model, str) or not model.removeprefix("models/"):
        raise LineError("a Gemini line's 'request' needs 'model', e.g. \"gemini-2.5-flash\"")
    method = "embedContent" if "content" in body and "contents" not in body else "generateContent"
    endpoint = f"/v1beta/models/{model.removeprefix('models/')}:{method}"
    unknown = sorted(obj.keys() - GEMINI_FIELDS)
    if unknown:
        raise LineError(f"unknown field(s) {unknown} in a Gemini request line")
    return Line(where, key, endpoint, body, "gemini")


def parse_entry(where: str, obj: Any) -> Line:
    """An OpenAI batch line `{custom_id, method, url, body}`, an Anthropic request
    `{custom_id, params}` (endpoint /v1/messages), a Mistral line `{custom_id, body}`
    (endpoint from the body, see MISTRAL_ENDPOINTS) or a Gemini line `{key, request}` (its
    key is the custom_id); `LineError` says what is wrong."""
    if isinstance(obj, _Unreadable):
        raise LineError(obj.reason)
    if not isinstance(obj, dict):
        raise LineError(f"must be a JSON object, got {type(obj).__name__}")
    if "request" in obj and "custom_id" not in obj:
        return parse_gemini(where, obj)
    custom_id = obj.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise LineError("needs 'custom_id', a non-empty string")
    keys = obj.keys()
    if keys == OPENAI_FIELDS:  # the usual line first: the same checks as the branch below
        endpoint, body = obj["url"], obj["body"]
        good_url = isinstance(endpoint, str) and endpoint.startswith("/")
        if obj["method"] == "POST" and good_url and isinstance(body, dict):
            return Line(where, custom_id, endpoint, body, "openai")
    if "params" in obj and not keys & {"method", "url", "body"}:
        kind: Literal["openai", "anthropic", "mistral"] = "anthropic"
        endpoint, body, allowed = ANTHROPIC_ENDPOINT, obj["params"], ANTHROPIC_FIELDS
        if not isinstance(body, dict):
            raise LineError("'params' must be a JSON object (the Messages API request)")
    elif obj.keys() == MISTRAL_FIELDS:
        kind, allowed, body = "mistral", MISTRAL_FIELDS, obj["body"]
        if not isinstance(body, dict):
            raise LineError("'body' must be a JSON object (the API request)")
        endpoint = next((e for k, e in MISTRAL_ENDPOINTS.items() if k in body), None)
        if endpoint is None:
            raise LineError(
                "a Mistral line {custom_id, body} needs 'messages' (chat), 'prompt' (FIM) or "
                "'input' (embeddings) in its body to tell its endpoint"
            )
    elif obj.keys() & {"method", "url", "body"}:
        kind, allowed = "openai", OPENAI_FIELDS
        endpoint, body, method = obj.get("url"), obj.get("body"), obj.get("method")
        if method != "POST":
            raise LineError(f"'method' must be \"POST\", got {method!r}")
        if not isinstance(endpoint, str) or not endpoint.startswith("/"):
            raise LineError(
                f"'url' must be an endpoint path such as /v1/chat/completions, got {endpoint!r}"
            )
        if not isinstance(body, dict):
            raise LineError("'body' must be a JSON object (the API request)")
    else:
        raise LineError(
            "neither an OpenAI batch line {custom_id, method, url, body}, an Anthropic "
            "request {custom_id, params}, a Mistral line {custom_id, body} nor a Gemini line "
            "{key, request}"
        )
    unknown = sorted(keys - allowed)
    if unknown:
        raise LineError(f"unknown field(s) {unknown} in an {kind.capitalize()} request line")
    return Line(where, custom_id, endpoint, body, kind)


def _is_document(path: Path) -> bool:
    """True for one `{"requests": [...]}` object (Anthropic's create-batch body) rather than
    JSON lines: decided by the first non-blank line, so a JSONL file is never read whole."""
    with path.open("rb") as f:
        for raw in f:
            text = raw.strip()
            if not text:
                continue
            try:
                first = orjson.loads(text)
            except orjson.JSONDecodeError:
                if not text.startswith(b"{") or path.stat().st_size > MAX_DOCUMENT_BYTES:
                    return False
                try:
                    whole = orjson.loads(path.read_bytes())
                except orjson.JSONDecodeError:
                    return False
                return isinstance(whole, dict) and "requests" in whole
            return isinstance(first, dict) and "requests" in first and "custom_id" not in first
    return False


def entries(path: Path, hasher: Any) -> Iterator[tuple[str, Any]]:
    """(where, parsed JSON or `_Unreadable`) per request; feeds every byte read to `hasher`."""
    if _is_document(path):
        data = path.read_bytes()
        hasher.update(data)
        requests = orjson.loads(data)["requests"]
        if not isinstance(requests, list):
            yield "file", _Unreadable("'requests' must be a list of {custom_id, params}")
            return
        for i, item in enumerate(requests):
            yield f"requests[{i}]", item
        return
    with path.open("rb") as f:
        for number, raw in enumerate(f, 1):
            hasher.update(raw)
            if not raw.strip():
                continue
            try:
                yield f"line {number}", orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                yield f"line {number}", _Unreadable(f"not valid JSON ({exc})")


@dataclass
class Plan:
    """What `scan` learnt: the fingerprint, the custom_ids in input order, and each group."""

    path: Path
    fingerprint: str
    custom_ids: list[str]
    groups: dict[str, dict[str, str]]
    kinds: Counter[str]

    @property
    def total(self) -> int:
        return len(self.custom_ids)


Sink = Callable[[int, Line, Prepared], None]


def scan(path: Path, intake: Intake, sink: Sink | None = None) -> Plan:
    """Check the whole file before anything is stored; InputFileError lists the first
    MAX_PROBLEMS bad lines, each with its line number. `sink(index, line, prepared)` sees
    every good request in input order while no bad one was met (`run` packs batches from it
    in the same pass; a bad line anywhere still stops everything before it is sent)."""
    hasher = hashlib.sha256()
    problems: list[str] = []
    seen: dict[str, str] = {}
    plan = Plan(path, "", [], {}, Counter())
    for where, obj in entries(path, hasher):
        try:
            line = parse_entry(where, obj)
            if line.custom_id in seen:
                raise LineError(
                    f"custom_id {_shown(line.custom_id)} repeats {seen[line.custom_id]}; "
                    "custom_ids must be unique within a file"
                )
            # Only a long custom_id can pass the metadata limit (a parsed one is always valid
            # text), so short ones skip encoding it: the check costs most of a line's time.
            kept = metadata(line.custom_id) if len(line.custom_id) > SHORT_ID else None
            try:
                p = intake.prepare(line.endpoint, line.body, metadata=kept)
            except InvalidMetadataError as exc:
                raise LineError(
                    f"custom_id is {len(line.custom_id):,} characters, too long to keep with "
                    f"the request ({exc})"
                ) from None
            except InvalidRequestError as exc:
                raise LineError(f"(custom_id {_shown(line.custom_id)}) {exc}") from None
        except LineError as exc:
            problems.append(f"{where}: {exc}")
            if len(problems) >= MAX_PROBLEMS:
                problems.append(f"(stopped after {MAX_PROBLEMS} problems)")
                break
            continue
        seen[line.custom_id] = where
        if sink is not None and not problems:
            sink(len(plan.custom_ids), line, p)
        plan.custom_ids.append(line.custom_id)
        plan.kinds[line.kind] += 1
        if p.tag not in plan.groups:
            plan.groups[p.tag] = {"profile": p.profile, "endpoint": p.endpoint, "model": p.model}
    if problems:
        raise InputFileError(problems)
    if not plan.custom_ids:
        raise InputFileError([f"{path}: holds no requests"])
    plan.fingerprint = hasher.hexdigest()
    return plan
