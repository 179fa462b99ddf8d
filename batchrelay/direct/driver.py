"""Driving a run's parts to the end: create each provider batch at most once, poll, collect.

One loop, one poll interval apart: parts not yet at the provider are submitted (or adopted
from another run of the same file, or found at the provider after a crash), batches in flight
are retrieved, and a finished one is collected into `Results`. Lines its batch did not answer
(expired, cancelled, failed as a whole, missing, or a retryable error) are sent again in a new
part, up to `max_attempts` sendings, as the relay re-pools them; then they fail with the last
error. The run starts no worker and needs none.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from batchrelay.config import Settings
from batchrelay.direct.parts import Part, index_of, write_again
from batchrelay.direct.results import Results
from batchrelay.direct.store import RunStore, now_ms
from batchrelay.producer.intake import Intake
from batchrelay.worker.providers import (
    BatchAdapter,
    Claim,
    ProviderBatch,
    ProviderError,
    ReconcilePending,
    make_adapter,
)
from batchrelay.worker.providers.base import (
    GONE,
    MISSING,
    NEVER_RAN,
    TOKEN_LIMIT,
    batch_error,
    line_error,
)
from batchrelay.worker.providers.http import retry_delay_s

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """Line counts for the progress bars: every line is in exactly one of queued (not at a
    provider), in a batch, done or failed; `submitted` counts lines sent at least once."""

    total: int
    submitted: int = 0
    queued: int = 0
    in_batch: int = 0
    done: int = 0
    failed: int = 0
    created: int = 0  # batches this process created
    adopted: int = 0  # batches found already created (an earlier or concurrent run)
    waiting: str = ""  # why parts are still queued, if they are


class Adapters:
    """One adapter per profile for the whole run."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._made: dict[str, BatchAdapter] = {}

    def __call__(self, profile: str) -> BatchAdapter:
        if profile not in self._made:
            self._made[profile] = make_adapter(self.settings.profile(profile), self.settings)
        return self._made[profile]

    def close(self) -> None:
        for adapter in self._made.values():
            adapter.close()


class Driver:
    def __init__(
        self,
        settings: Settings,
        store: RunStore,
        adapters: Adapters,
        results: Results,
        parts: list[Part],
        source: Path,
        folder: Path,
    ):
        self.settings, self.store, self.adapters = settings, store, adapters
        self.results, self.source, self.folder = results, source, folder
        self.pending = list(parts)
        self.live: list[tuple[Part, str]] = []
        self.progress = Progress(total=results.total, queued=results.total)
        self._sent: set[tuple[str, int]] = set()  # (group, number) of parts sent once

    def run(self, *, wait: bool, show: Callable[[Progress], None]) -> None:
        """Until every part is at the provider (`wait=False`) or every line is final."""
        while self.pending or (wait and self.live):
            self.progress.waiting = ""
            self.pending = [p for p in self.pending if not self._submitted(p)]
            self._count()
            show(self.progress)
            if not self.pending and not (wait and self.live):
                break
            time.sleep(self.settings.poll_interval_s)
            self._poll()
            self._count()
            show(self.progress)

    # --- submission ---

    def _submitted(self, part: Part) -> bool:
        """Get the part to the provider, or find it there; False while it must wait."""
        rec = self.store.record(part)
        if rec.get("pbatch"):
            return self._adopt(part, rec["pbatch"])
        if rec.get("refused"):
            self._fail_all(part, orjson.dumps(rec["refused"]))
            return True
        lock = self.store.lock(part)
        if lock is None:
            self.progress.waiting = "another run of this file is creating a batch"
            return False
        try:
            rec = self.store.record(part)  # what the last holder did
            if rec.get("pbatch"):
                return self._adopt(part, rec["pbatch"])
            return self._create(part, rec)
        except ReconcilePending as exc:
            self.progress.waiting = str(exc)
            return False
        except ProviderError as exc:
            if exc.retryable:
                log.warning("batch %s: %s; trying again", part.bid, exc)
                self.progress.waiting = f"the provider: {exc}"
                return False
            self._refuse(part, rec, exc)
            return True
        finally:
            self.store.unlock(lock)

    def _adopt(self, part: Part, provider_id: str) -> bool:
        self.store.reserve(part, force=True)  # the creator's reservation, or ours again
        self.progress.adopted += 1
        self._went(part, provider_id)
        return True

    def _went(self, part: Part, provider_id: str) -> None:
        self.live.append((part, provider_id))
        if (part.group, part.number) not in self._sent:
            self._sent.add((part.group, part.number))
            self.progress.submitted += len(part.indices)

    def _create(self, part: Part, rec: dict[str, Any]) -> bool:
        adapter = self.adapters(part.profile)
        if rec.get("create_started"):
            try:
                found = self._find(adapter, part, rec)
            except ProviderError as exc:
                if exc.retryable:
                    raise
                # A batch may exist: never refuse the part (and lose what it is paying for)
                # while the listing that would tell cannot be read; wait, as the worker does.
                raise ReconcilePending(f"cannot list batches to reconcile: {exc}") from exc
            if found is not None:
                log.warning("batch %s already exists as %s; adopting", part.bid, found.id)
                self.store.created(part, rec, found.id)
                return self._adopt(part, found.id)
        if not self.store.reserve(part):
            self.progress.waiting = f"{part.profile} has no free batch slot or tokens"
            return False
        input_ref = rec.get("file_id")
        if not input_ref and adapter.uploads(part.path.stat().st_size):
            input_ref = adapter.upload(part.path, model=part.model)
            self.store.update(part, rec, file_id=input_ref)
        if not rec.get("create_started"):
            self.store.update(part, rec, create_started=now_ms())
        pb = self._create_once(adapter, part, rec, input_ref)
        self.store.created(part, rec, pb.id)
        self.progress.created += 1
        self._went(part, pb.id)
        return True

    def _find(self, adapter: BatchAdapter, part: Part, rec: dict[str, Any]) -> ProviderBatch | None:
        mine = set(part.indices)
        claim = Claim(
            bid=part.bid,
            since=int(rec["create_started"]) / 1000,
            n=len(part.indices),
            owns=lambda custom_id: index_of(part.fp, custom_id) in mine,
            recorded=lambda provider_id: self.store.recorded(part.profile, provider_id),
            input_ref=rec.get("file_id"),
        )
        return adapter.find(claim)

    def _create_once(
        self, adapter: BatchAdapter, part: Part, rec: dict[str, Any], input_ref: str | None
    ) -> ProviderBatch:
        """Create, asking the provider before any retry whether the last try got through
        (as the worker's submission does)."""
        attempts = self.settings.http_max_retries
        for attempt in range(attempts + 1):
            try:
                return adapter.create(
                    input_ref=input_ref,
                    path=part.path,
                    endpoint=part.endpoint,
                    model=part.model,
                    bid=part.bid,
                )
            except ProviderError as exc:
                if attempt > 0 and not exc.retryable:
                    raise ProviderError(str(exc), status=exc.status, retryable=True) from exc
                if not exc.retryable or attempt == attempts or exc.status == 429:
                    raise
                time.sleep(retry_delay_s(exc.retry_after, attempt))
                found = self._find(adapter, part, rec)
                if found is not None:
                    return found
        raise AssertionError("unreachable")

    def _refuse(self, part: Part, rec: dict[str, Any], exc: ProviderError) -> None:
        """The provider will not take the batch (a 4xx on upload or create): its lines fail
        with that error, for this run and any other run of the file."""
        log.error("provider refused batch %s: %s", part.bid, exc)
        error = {"code": "batch_refused", "message": str(exc), "status_code": exc.status}
        self.store.update(part, rec, refused={**error, "body": None})
        self.store.release(part)
        self._fail_all(part, orjson.dumps({**error, "body": None}))

    def _fail_all(self, part: Part, error: bytes) -> None:
        for index in part.indices:
            self.results.failed(index, part.model, error)
        if (part.group, part.number) not in self._sent:
            self._sent.add((part.group, part.number))
            self.progress.submitted += len(part.indices)

    # --- polling and collecting ---

    def _poll(self) -> None:
        still: list[tuple[Part, str]] = []
        for part, provider_id in self.live:
            adapter = self.adapters(part.profile)
            try:
                pb = adapter.retrieve(provider_id)
                if not pb.terminal:
                    still.append((part, provider_id))
                    continue
                again = self._collect(adapter, part, pb)
            except ProviderError as exc:
                if not exc.retryable:
                    raise
                log.warning("batch %s: %s; trying again", part.bid, exc)
                still.append((part, provider_id))
                continue
            self.store.release(part)
            if again is not None:
                self.pending.append(again)
        self.live = still

    def _collect(self, adapter: BatchAdapter, part: Part, pb: ProviderBatch) -> Part | None:
        """Record every final line; returns the part that sends the rest again, if any."""
        mine = set(part.indices)
        retry: dict[int, bytes] = {}
        if pb.status == "failed":
            retry = self._failed_batch(part, pb)
        else:
            try:
                for o in adapter.results(pb):
                    index = index_of(part.fp, o.custom_id)
                    if index is None or index not in mine:
                        log.warning(
                            "batch %s: result for unknown custom_id %.80r", part.bid, o.custom_id
                        )
                    elif o.kind == "ok":
                        self.results.succeeded(index, part.model, o.status_code, o.payload, o.body)
                    elif o.kind == "fail":
                        self.results.failed(index, part.model, o.payload)
                    else:
                        retry[index] = o.payload
            except ProviderError as exc:
                if exc.retryable or exc.status not in GONE:
                    raise
                log.error("results of batch %s gone, sending the rest again: %s", part.bid, exc)
        why = NEVER_RAN.get(pb.status, MISSING)
        left = [i for i in part.indices if not self.results.has(i)]
        if not left:
            return None
        if part.attempt >= self.settings.max_attempts:
            for index in left:
                self.results.failed(index, part.model, retry.get(index, why))
            return None
        return write_again(
            part,
            self.settings,
            Intake(self.settings),
            self.source,
            self.adapters(part.profile),
            left,
            self.folder,
            part.attempt + 1,
        )

    def _failed_batch(self, part: Part, pb: ProviderBatch) -> dict[int, bytes]:
        """Validation failed: lines it names fail with their error; the others were not at
        fault and are sent again."""
        by_line = {e["line"]: e for e in pb.errors if isinstance(e.get("line"), int)}
        whole = pb.errors[0] if pb.errors else {}
        if whole.get("code") == TOKEN_LIMIT:
            log.warning("batch %s refused for enqueued tokens", part.bid)
        retry: dict[int, bytes] = {}
        failed = batch_error(pb)
        for line, index in enumerate(part.indices, 1):
            err = by_line.get(line)
            if err is None:
                retry[index] = failed
                continue
            self.results.failed(index, part.model, line_error(err, line))
        return retry

    def _count(self) -> None:
        p = self.progress
        p.in_batch = sum(len(part.indices) for part, _ in self.live)
        p.done = self.results.summary.succeeded
        p.failed = self.results.summary.failed
        p.queued = p.total - p.in_batch - p.done - p.failed
