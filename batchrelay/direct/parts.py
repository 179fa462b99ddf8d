"""Packing a checked batch file into provider-legal parts, in the same pass that checks it.

A part is one future provider batch: lines of one group (profile, endpoint, model), at most
the profile's `max_requests_per_batch` lines and `max_bytes_per_batch` bytes, written in the
provider's own input format by the adapter the worker uses. The split depends only on the
file and the settings, so every `run` of the same file (a resumed one, a concurrent one) makes
the same parts with the same ids and finds their records in Redis.

Each line goes to the provider as `<fp16>-<index>` (index: the request's place in the file), so
a result names the output line it belongs to whoever created the batch.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from batchrelay.batchfile import InputFileError, Line, entries, parse_entry
from batchrelay.config import ProviderProfile, Settings
from batchrelay.config.tokens import tokenizer
from batchrelay.producer.intake import Intake, Prepared
from batchrelay.producer.keys import run_batch_id
from batchrelay.worker.providers import BatchAdapter

# Items handed to `write_input` at once: few calls, little memory.
WRITE_CHUNK = 1000


def line_id(fp: str, index: int) -> str:
    """What the provider sees as the line's custom_id: valid for Anthropic and Gemini too."""
    return f"{fp[:16]}-{index}"


def index_of(fp: str, custom_id: str) -> int | None:
    """The input index a provider's custom_id names, or None if it is not one of this file's."""
    head, _, tail = custom_id.rpartition("-")
    if head != fp[:16] or not tail.isdigit():
        return None
    return int(tail)


@dataclass
class Part:
    """One provider batch of the run: `indices` are its lines' places in the file, in the
    order they were written; `attempt` counts sendings of these lines (a re-sent part holds
    the lines its predecessor's batch did not answer)."""

    fp: str
    group: str
    number: int
    attempt: int
    profile: str
    endpoint: str
    model: str
    path: Path
    indices: list[int] = field(default_factory=list)
    size: int = 0
    tokens: int = 0

    @property
    def id(self) -> str:
        return f"{self.group}-{self.number}-{self.attempt}"

    @property
    def bid(self) -> str:
        return run_batch_id(self.fp[:32], self.id)


class TokenCounter:
    """A part's estimated enqueued tokens, as the worker estimates a claimed batch's: a
    tokenizer counts each body as it is packed; a characters-per-token ratio applies to the
    part's bytes once it is complete (`capacity.estimate`)."""

    def __init__(self, profile: ProviderProfile, model: str):
        spec = profile.token_estimate(model)
        self.count = tokenizer(spec) if isinstance(spec, str) else None
        self.ratio = 0.0 if isinstance(spec, str) else float(spec)
        self.counted = 0

    def add(self, body_json: bytes) -> None:
        if self.count is not None:
            self.counted += self.count(body_json.decode())

    def total(self, part: Part) -> int:
        if self.count is not None:
            return self.counted
        return math.ceil(part.size / self.ratio) + len(part.indices)


class _Open:
    """The part being filled for one group, its file handle and lines not yet written."""

    def __init__(self, part: Part, adapter: BatchAdapter, counter: TokenCounter):
        self.part, self.adapter, self.counter = part, adapter, counter
        self.out: IO[bytes] = part.path.open("wb")
        self.pending: list[tuple[str, bytes]] = []
        self.prefix = part.fp[:16] + "-"
        self.max_requests = self.max_bytes = 0

    def add(self, index: int, p: Prepared) -> None:
        self.part.indices.append(index)
        self.part.size += p.line_bytes
        self.counter.add(p.body_json)
        self.pending.append((self.prefix + str(index), p.body_json))  # line_id, inlined
        if len(self.pending) >= WRITE_CHUNK:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.adapter.write_input(self.out, self.part.endpoint, self.pending)
            self.pending = []

    def close(self) -> None:
        self.flush()
        self.out.close()
        self.part.tokens = self.counter.total(self.part)


class Packer:
    """The `scan` sink: writes each good request into its group's current part, starting a
    new part when the next line would pass the profile's count or byte limit."""

    def __init__(
        self,
        settings: Settings,
        fp: str,
        folder: Path,
        adapter_of: Callable[[str], BatchAdapter],
    ):
        self.settings, self.fp, self.folder, self.adapter_of = settings, fp, folder, adapter_of
        self.parts: list[Part] = []
        self._open: dict[str, _Open] = {}
        self._numbers: dict[str, int] = {}

    def __call__(self, index: int, line: Line, p: Prepared) -> None:
        current = self._open.get(p.tag)
        if current is not None and (
            len(current.part.indices) >= current.max_requests
            or current.part.size + p.line_bytes > current.max_bytes
        ):
            current.close()
            current = None
        if current is None:
            profile = self.settings.profile(p.profile)
            number = self._numbers.get(p.tag, 0) + 1
            self._numbers[p.tag] = number
            part = Part(
                fp=self.fp,
                group=p.tag,
                number=number,
                attempt=1,
                profile=p.profile,
                endpoint=p.endpoint,
                model=p.model,
                path=self.folder / f"{p.tag}-{number}-1.jsonl",
            )
            self.parts.append(part)
            current = self._open[p.tag] = _Open(
                part, self.adapter_of(p.profile), TokenCounter(profile, p.model)
            )
            current.max_requests = profile.max_requests_per_batch
            current.max_bytes = profile.max_bytes_per_batch
        current.add(index, p)

    def finish(self) -> list[Part]:
        """Close every part's file; the parts in the order they were started."""
        for current in self._open.values():
            current.close()
        self._open.clear()
        return self.parts


def file_fingerprint(path: Path) -> str:
    """The SHA-256 of the file, read once before packing (the lines' custom_ids carry it);
    `scan` hashes it again, so a file changed in between is noticed."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def write_again(
    part: Part,
    settings: Settings,
    intake: Intake,
    source: Path,
    adapter: BatchAdapter,
    indices: Iterable[int],
    folder: Path,
    attempt: int,
) -> Part:
    """A new part holding `indices` of `part` (lines its batch did not answer), read again
    from the source file and written for the provider."""
    wanted = set(indices)
    again = Part(
        fp=part.fp,
        group=part.group,
        number=part.number,
        attempt=attempt,
        profile=part.profile,
        endpoint=part.endpoint,
        model=part.model,
        path=folder / f"{part.group}-{part.number}-{attempt}.jsonl",
    )
    counter = TokenCounter(settings.profile(part.profile), part.model)
    items: list[tuple[str, bytes]] = []
    index = -1
    hasher = hashlib.sha256()
    with again.path.open("wb") as out:
        for where, obj in entries(source, hasher):
            index += 1
            if index not in wanted:
                continue
            line = parse_entry(where, obj)
            p = intake.prepare(line.endpoint, line.body)  # scan checked the custom_id
            again.indices.append(index)
            again.size += p.line_bytes
            counter.add(p.body_json)
            items.append((line_id(part.fp, index), p.body_json))
        if hasher.hexdigest() != part.fp:
            raise InputFileError([f"{source}: the file changed while it ran; run it again"])
        adapter.write_input(out, part.endpoint, items)
    again.tokens = counter.total(again)
    return again
