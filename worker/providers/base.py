"""What the relay needs from a provider's Batch API, whatever its wire protocol.

The worker speaks only this interface: it never sees a URL or a header, so OpenAI, its
resellers and Anthropic-style message batches differ only in their adapter.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, ClassVar, Literal

import orjson

from batchrelay.config.kinds import ProviderKind

# Normalised batch statuses (OpenAI's names; other protocols map onto them).
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})

OutcomeKind = Literal["ok", "fail", "retry"]

# What a line the provider did not answer gets as its error (the worker's collection and
# `batchrelay run` alike).
MISSING = orjson.dumps(
    {
        "code": "missing_result",
        "message": "the provider returned no result for this request",
        "status_code": None,
        "body": None,
    }
)
# A batch that ended early names why its unrun requests have no result (Gemini writes none).
NEVER_RAN = {
    status: orjson.dumps({"code": code, "message": message, "status_code": None, "body": None})
    for status, code, message in (
        ("expired", "batch_expired", "the batch expired before this request ran"),
        ("cancelled", "batch_cancelled", "the batch was cancelled before this request ran"),
    )
}
# A validation failure of the whole batch for the profile's enqueued-token limit.
TOKEN_LIMIT = "token_limit_exceeded"
# A results download answered with these is gone for good.
GONE = frozenset({404, 410})


def batch_error(pb: ProviderBatch) -> bytes:
    """The stored outcome of a line a failed batch ran nowhere: the batch's own first error."""
    first = pb.errors[0] if pb.errors else {}
    return orjson.dumps(
        {
            "code": first.get("code") or "batch_failed",
            "message": first.get("message") or f"provider batch {pb.id} failed",
            "status_code": None,
            "body": None,
        }
    )


def line_error(err: dict[str, Any], line: int) -> bytes:
    """The stored outcome of a line a failed batch's validation errors name (by 1-based line)."""
    return orjson.dumps(
        {
            "code": err.get("code"),
            "message": err.get("message"),
            "param": err.get("param"),
            "line": line,
            "status_code": None,
            "body": None,
        }
    )


@dataclass(frozen=True)
class ProviderBatch:
    id: str
    status: str
    created_at: float
    counts: dict[str, int] = field(default_factory=dict)
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    input_ref: str | None = None
    results_url: str | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


@dataclass(slots=True)  # not frozen: one is built per result line, and frozen costs ~3 us each
class Outcome:
    """One request's result line: `ok` stores the response body, `fail` is final with the
    provider's error, `retry` sends the request back to the pending queue (read-only)."""

    custom_id: str
    kind: OutcomeKind
    status_code: int
    payload: bytes
    #: The response body `payload` encodes, for an `ok` line: a reader that needs its usage
    #: (`batchrelay run`'s cost table) does not parse it again.
    body: Any = None


@dataclass(frozen=True)
class Claim:
    """What reconciliation may know about one claimed batch (docs/architecture.md, promise 4: no
    double spend).

    `owns` says whether a custom_id is one of this claim's requests (request ids are unique,
    and a request is in one live batch at most, so one id identifies the claim); `recorded`
    says which claim, if any, has already recorded a provider batch id at this profile.
    """

    bid: str
    since: float  # epoch seconds: no provider batch for this claim was created earlier
    n: int  # requests sent in the batch
    owns: Callable[[str], bool]
    recorded: Callable[[str], str | None]
    #: The input file this claim uploaded, if any: a batch created from it is this claim's.
    input_ref: str | None = None


class ProviderError(Exception):
    """An API call failed; `retryable` says whether the same call may succeed later, and
    `retry_after` how long the provider asked us to wait first (None: it did not say)."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after


class ReconcilePending(ProviderError):
    """The provider may hold this claim's batch but cannot show it yet; creating one now
    could pay twice, so the claim waits and asks again later."""

    def __init__(self, message: str):
        super().__init__(message, retryable=True)


class BatchAdapter(ABC):
    """One provider profile's Batch API. Methods are synchronous and stream large bodies."""

    #: The wire protocol this adapter speaks; its facts (limits, files) live in config/kinds.py.
    kind: ClassVar[ProviderKind]

    def uploads(self, size: int) -> bool:
        """Whether a batch input of `size` bytes is uploaded as a file first (False: it
        travels inline in the create call). Decided once per claim: the file id it records
        makes every later attempt use the file."""
        return self.kind.uploads_files

    @abstractmethod
    def write_input(
        self, out: IO[bytes], endpoint: str, items: Iterable[tuple[str, bytes]]
    ) -> None:
        """Write the batch input for (request id, body JSON) pairs to `out`, streaming."""

    @abstractmethod
    def upload(self, path: Path, *, model: str) -> str:
        """Upload the input file and return its provider id."""

    @abstractmethod
    def create(
        self, *, input_ref: str | None, path: Path | None, endpoint: str, model: str, bid: str
    ) -> ProviderBatch:
        """Create the provider batch (carrying `bid` in its metadata where the provider has
        any). Not retried on an ambiguous failure: the caller reconciles with `find` first."""

    @abstractmethod
    def find(self, claim: Claim) -> ProviderBatch | None:
        """The provider batch created for this claim, if there is one; raises
        ReconcilePending while that cannot be decided yet."""

    @abstractmethod
    def retrieve(self, provider_id: str) -> ProviderBatch: ...

    @abstractmethod
    def cancel(self, provider_id: str) -> ProviderBatch: ...

    @abstractmethod
    def results(self, batch: ProviderBatch) -> Iterator[Outcome]:
        """Every result line of a terminal batch, streamed, in the provider's order."""

    @abstractmethod
    def cleanup(self, batch: ProviderBatch) -> None:
        """Delete what the batch left at the provider (files), best effort."""

    @abstractmethod
    def close(self) -> None:
        """Release connections."""
