"""The batch service: creates batches, runs their validate/finish jobs, cancels, deletes.

All record changes happen under `store.lock`; the long steps (reading and writing files)
run outside it on a snapshot and commit only if the batch still exists and is unchanged.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from batchrelay.emulator.config import EmulatorConfig, Timings
from batchrelay.emulator.faults import FaultState
from batchrelay.emulator.gemini_views import gemini_state
from batchrelay.emulator.lifecycle import TERMINAL, cancel_plan, phase, plan_run, terminal_time
from batchrelay.emulator.results import (
    write_anthropic_results,
    write_gemini_results,
    write_openai_results,
)
from batchrelay.emulator.scheduler import Scheduler
from batchrelay.emulator.store import BatchRecord, FileRecord, Store, random_id
from batchrelay.emulator.validation import (
    ModelMatcher,
    batch_error,
    canned_error,
    token_limit_message,
    validate_input,
)
from batchrelay.emulator.views import anthropic_status
from batchrelay.emulator.webhooks import BatchWebhooks, WebhookTarget

OUTPUT_FILE_LIFETIME_S = 30 * 86400
# Gemini: a batch still pending or running after 48 h expires; files are kept 48 h.
GEMINI_WINDOW_S = 2 * 86400
GEMINI_FILE_LIFETIME_S = 2 * 86400
# Purposes that mark the Files API's files as Gemini's (uploads, and responses files).
GEMINI_UPLOAD_PURPOSE = "gemini_upload"
GEMINI_OUTPUT_PURPOSE = "gemini_output"
ENDED = set(TERMINAL.values()) | {"failed"}


@dataclass
class GeminiUnfinished:
    """What an expired or cancelled Gemini batch leaves: counts, and no results."""

    counts: dict[str, int]
    usage: dict[str, int] = field(default_factory=dict)


class CancelConflict(Exception):
    """The batch has already ended and cannot be cancelled; carries its status."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


class NotEnded(Exception):
    """An Anthropic batch may be deleted only once it has ended."""


class Engine:
    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.store = Store(config.data_dir)
        self.faults = FaultState(config.faults)
        self._initial_timings = config.timings()
        self.timings = config.timings()
        self.known_model = ModelMatcher(config.models)
        self.scheduler = Scheduler(self._job)
        # Batches with a job running, per job kind (a validate may schedule its own finish).
        self._busy: dict[str, set[str]] = {"validate": set(), "finish": set()}
        self._counters: Counter[str] = Counter()
        self._counter_lock = threading.Lock()
        self.webhooks = BatchWebhooks(
            WebhookTarget(url=config.webhook_url, secret=config.webhook_secret)
        )

    @property
    def lock(self) -> threading.RLock:
        return self.store.lock

    def start(self) -> None:
        with self.lock:
            for batch in self.store.batches.values():
                if batch.failed_at is not None or batch.files_written_at is not None:
                    continue
                if batch.run_end_kind is None:
                    self.scheduler.at(
                        batch.created_at + batch.validating_delay_s, "validate", batch.id
                    )
                else:
                    self.scheduler.at(batch.run_end_at or 0.0, "finish", batch.id)
        self.scheduler.start()

    def close(self) -> None:
        self.scheduler.stop()
        self.webhooks.close()
        self.store.close()

    def count(self, name: str, n: int = 1) -> None:
        with self._counter_lock:
            self._counters[name] += n

    # Files.

    def add_file(
        self,
        tmp: Path,
        *,
        filename: str,
        purpose: str,
        size: int,
        expires_at: int | None,
        extra_fields: dict[str, str] | None = None,
        internal: bool = False,
        prefix: str = "file-",
        serves_html: bool = False,
        file_id: str | None = None,
    ) -> FileRecord:
        record = FileRecord(
            id=file_id or random_id(prefix),
            filename=filename,
            purpose=purpose,
            bytes=size,
            created_at=int(time.time()),
            expires_at=expires_at,
            extra_fields=extra_fields or {},
            internal=internal,
            serves_html=serves_html,
        )
        os.replace(tmp, self.store.blob_path(record.id))
        self.store.put_file(record)
        return record

    # Creating batches.

    def _new_batch(self, shape: str, flavor: str, **fields) -> BatchRecord:
        now = time.time()
        plan = self.faults.draw_batch_plan(validates=shape == "openai")
        timings = self.timings
        ids = {
            "openai": lambda: "batch_" + secrets.token_hex(16),
            "anthropic": lambda: random_id("msgbatch_", 24),
            "gemini": lambda: secrets.token_hex(12),
        }
        window_s = {"azure": None, "gemini": GEMINI_WINDOW_S}.get(
            flavor, timings.completion_window_s
        )
        return BatchRecord(
            id=ids[shape](),
            shape=shape,
            flavor=flavor,
            created_at=now,
            validating_delay_s=timings.validating_delay_s,
            rate_rps=timings.processing_rate_rps,
            finalizing_delay_s=timings.finalizing_delay_s,
            window_s=window_s,
            fault_validation_code=plan.validation_code,
            fault_expire_fraction=plan.expire_fraction,
            fault_stuck_s=plan.stuck_s,
            fault_malformed_output=plan.malformed_output,
            fault_error_fraction=plan.error_fraction,
            fault_error_status=plan.error_status,
            **fields,
        )

    def create_openai_batch(
        self,
        *,
        flavor: str,
        input_file_id: str,
        endpoint: str,
        completion_window: str,
        metadata: dict[str, str] | None,
        output_expires_after_s: int | None,
        window_factor: float = 1.0,
    ) -> BatchRecord:
        """`window_factor` scales the emulated window for a completion_window over 24h."""
        batch = self._new_batch(
            "openai",
            flavor,
            input_file_id=input_file_id,
            endpoint=endpoint,
            completion_window=completion_window,
            metadata=metadata,
            output_expires_after_s=output_expires_after_s,
        )
        if batch.window_s is not None:
            batch.window_s *= window_factor
        self.store.save_batch(batch)
        self.count(f"batches_created.{flavor}")
        self.scheduler.at(batch.created_at + batch.validating_delay_s, "validate", batch.id)
        return batch

    def create_mistral_job(
        self,
        requests: Path,
        size: int,
        *,
        endpoint: str,
        input_files: list[str],
        metadata: dict[str, str] | None,
        timeout_hours: int,
    ) -> BatchRecord:
        """A Mistral job over its requests, normalised to OpenAI lines in an internal file
        (`requests`), so it runs through the same validate and finish steps. Emulated time
        scales its timeout: `timeout_hours` = 24 lasts `completion_window_s`."""
        spool = self.add_file(
            requests,
            filename="requests.jsonl",
            purpose="batch",
            size=size,
            expires_at=None,
            internal=True,
            prefix="mistralreq_",
        )
        batch = self._new_batch(
            "openai",
            "mistral",
            input_file_id=spool.id,
            endpoint=endpoint,
            completion_window=f"{timeout_hours}h",
            metadata=metadata,
            input_files=input_files,
            inline=not input_files,
        )
        batch.id = str(uuid.uuid4())
        batch.window_s = self.timings.completion_window_s * timeout_hours / 24
        self.store.save_batch(batch)
        self.count("batches_created.mistral")
        self.scheduler.at(batch.created_at + batch.validating_delay_s, "validate", batch.id)
        return batch

    def create_anthropic_batch(self, spool: Path, size: int, total: int) -> BatchRecord:
        requests = self.add_file(
            spool,
            filename="requests.jsonl",
            purpose="batch",
            size=size,
            expires_at=None,
            internal=True,
            prefix="msgbatchreq_",
        )
        batch = self._new_batch(
            "anthropic", "anthropic", input_file_id=requests.id, endpoint="/v1/messages"
        )
        batch.total = total
        plan_run(batch, batch.created_at)
        self.store.save_batch(batch)
        self.count("batches_created.anthropic")
        self.scheduler.at(batch.run_end_at or batch.created_at, "finish", batch.id)
        return batch

    def create_gemini_batch(
        self,
        *,
        method: str,
        model: str,
        display_name: str,
        total: int,
        inline_spool: Path | None = None,
        file_id: str | None = None,
    ) -> BatchRecord:
        """A Gemini batch of inline requests (spooled as JSONL, kept internal) or of an
        uploaded file; it is PENDING for the validating delay, then runs."""
        if inline_spool is not None:
            file_id = self.add_file(
                inline_spool,
                filename="requests.jsonl",
                purpose="batch",
                size=inline_spool.stat().st_size,
                expires_at=None,
                internal=True,
                prefix="geminireq-",
            ).id
        assert file_id is not None
        batch = self._new_batch(
            "gemini",
            "gemini",
            input_file_id=file_id,
            endpoint=method,
            display_name=display_name,
            inline=inline_spool is not None,
            model=model,
        )
        batch.total = total
        plan_run(batch, batch.created_at + batch.validating_delay_s)
        self.store.save_batch(batch)
        self.count("batches_created.gemini")
        self.scheduler.at(batch.run_end_at or batch.created_at, "finish", batch.id)
        return batch

    # Cancel and delete.

    def cancel(self, batch_id: str, shape: str) -> BatchRecord | None:
        with self.lock:
            batch = self.store.get_batch(batch_id)
            if batch is None or batch.shape != shape:
                return None
            now = time.time()
            status = phase(batch, now)
            if status == "cancelled" and shape == "openai":
                return batch
            if status in ENDED:
                raise CancelConflict(status)
            if batch.cancelling_at is not None:
                return batch
            if batch.run_end_kind == "expired" and now >= (batch.run_end_at or now):
                return batch
            cancel_plan(batch, now)
            self.store.save_batch(batch)
            self.scheduler.at(max(now, batch.run_end_at or now), "finish", batch.id)
            return batch

    def delete_anthropic(self, batch_id: str) -> bool:
        with self.lock:
            batch = self.store.get_batch(batch_id)
            if batch is None or batch.shape != "anthropic":
                return False
            if phase(batch, time.time()) not in ENDED:
                raise NotEnded(batch_id)
            self.store.delete_batch(batch_id)
            for file_id in (batch.input_file_id, batch.output_file_id):
                if file_id:
                    self.store.delete_file(file_id)
            return True

    def delete_gemini(self, batch_id: str) -> bool:
        """Forget a Gemini batch (a running one stops); an uploaded input file stays, as does
        a responses file (Files are kept 48 h on their own)."""
        with self.lock:
            batch = self.store.get_batch(batch_id)
            if batch is None or batch.shape != "gemini":
                return False
            self.store.delete_batch(batch_id)
            if batch.inline:
                for file_id in (batch.input_file_id, batch.output_file_id):
                    if file_id:
                        self.store.delete_file(file_id)
            return True

    # Jobs.

    def _job(self, action: str, batch_id: str) -> None:
        if action == "validate":
            self._validate(batch_id)
        elif action == "notify":
            self._notify(batch_id)
        else:
            self._finish(batch_id)

    def _claim(self, action: str, batch_id: str) -> BatchRecord | None:
        batch = self.store.get_batch(batch_id)
        if batch is None or batch_id in self._busy[action]:
            return None
        self._busy[action].add(batch_id)
        return batch

    def _enqueued_tokens(self, model: str, now: float) -> int:
        return sum(
            b.enqueued_tokens
            for b in self.store.batches.values()
            if b.shape == "openai"
            and b.model == model
            and b.in_progress_at is not None
            and b.failed_at is None
            and now < (b.run_end_at or 0)
        )

    def _validate(self, batch_id: str) -> None:
        with self.lock:
            batch = self._claim("validate", batch_id)
            if batch is None:
                return
            if batch.run_end_kind is not None or batch.failed_at is not None:
                self._busy["validate"].discard(batch_id)
                return
            source = self.store.get_file(batch.input_file_id)
        try:
            if source is None:
                message = (
                    f"Cannot find file {batch.input_file_id}, or organization org-emulator "
                    "does not have access to it."
                )
                errors, result = [batch_error("invalid_request", message, "file_id")], None
            else:
                result = validate_input(
                    self.store.blob_path(source.id),
                    endpoint=batch.endpoint,
                    batch_id=batch.id,
                    error_fraction=batch.fault_error_fraction,
                    known_model=self.known_model,
                    max_requests=self._max_requests(batch),
                    lines_name_method_url=batch.flavor != "together",
                )
                errors = result.errors
                if batch.fault_validation_code:
                    code = batch.fault_validation_code
                    errors = [canned_error(code, result.model, self._max_requests(batch))]
            self._commit_validation(batch, errors, result)
        finally:
            with self.lock:
                self._busy["validate"].discard(batch_id)

    def _max_requests(self, batch: BatchRecord) -> int:
        if batch.flavor == "mistral":
            return self.config.max_mistral_requests
        return self.config.max_batch_requests

    def _commit_validation(self, batch: BatchRecord, errors: list[dict], result) -> None:
        with self.lock:
            if self.store.get_batch(batch.id) is not batch or batch.run_end_kind is not None:
                return
            now = time.time()
            if result is not None:
                batch.model = result.model
            if not errors and result is not None:
                budget = self.faults.token_budget(result.model or "")
                used = self._enqueued_tokens(result.model or "", now)
                if budget is not None and used + result.enqueued_tokens > budget:
                    message = token_limit_message(result.model or "", budget)
                    errors = [batch_error("token_limit_exceeded", message)]
            if errors:
                batch.failed_at, batch.errors = now, errors
                self.webhooks.notify(batch.id, "failed")
            else:
                batch.total = result.total
                batch.planned_failures = result.planned_failures
                batch.enqueued_tokens = result.enqueued_tokens
                plan_run(batch, now)
                self.scheduler.at(batch.run_end_at or now, "finish", batch.id)
            self.store.save_batch(batch)

    def _finish(self, batch_id: str) -> None:
        with self.lock:
            batch = self._claim("finish", batch_id)
            if batch is None:
                return
            if batch.files_written_at is not None or time.time() < (batch.run_end_at or 0):
                self._busy["finish"].discard(batch_id)
                return
            snapshot = batch.model_copy(deep=True)
        out_tmp, err_tmp = self.store.tmp_path(".jsonl"), self.store.tmp_path(".jsonl")
        try:
            outcome = None
            if snapshot.in_progress_at is not None:
                source = self.store.blob_path(snapshot.input_file_id)
                if snapshot.shape == "openai":
                    outcome = write_openai_results(
                        snapshot, source, out_tmp, err_tmp, embedding_dim=self.config.embedding_dim
                    )
                elif snapshot.shape == "gemini":
                    outcome = self._gemini_outcome(snapshot, source, out_tmp)
                else:
                    outcome = write_anthropic_results(
                        snapshot,
                        source,
                        out_tmp,
                        known_model=self.known_model,
                        embedding_dim=self.config.embedding_dim,
                    )
            with self.lock:
                if self.store.get_batch(batch_id) is not batch:
                    return
                now = time.time()
                if outcome is not None:
                    self._register_outputs(batch, outcome, out_tmp, err_tmp, now)
                    batch.counts, batch.usage = outcome.counts, outcome.usage
                batch.files_written_at = now
                self.store.save_batch(batch)
                if batch.shape == "openai":
                    self.scheduler.at(terminal_time(batch) or now, "notify", batch.id)
        finally:
            for tmp in (out_tmp, err_tmp):
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
            with self.lock:
                self._busy["finish"].discard(batch_id)

    def _gemini_outcome(self, batch: BatchRecord, source: Path, out_tmp: Path):
        """Results of a Gemini batch that ran to the end; one that expired or was cancelled
        has none (its requests count as pending)."""
        if batch.run_end_kind == "done":
            return write_gemini_results(
                batch, source, out_tmp, embedding_dim=self.config.embedding_dim
            )
        return GeminiUnfinished(
            counts={"requestCount": batch.total, "pendingRequestCount": batch.total}
        )

    def _notify(self, batch_id: str) -> None:
        """Send the batch event of an OpenAI-shaped batch that has turned terminal."""
        with self.lock:
            batch = self.store.get_batch(batch_id)
            status = phase(batch, time.time()) if batch is not None else None
        if status in ENDED:
            self.webhooks.notify(batch_id, status)

    def _register_outputs(self, batch, outcome, out_tmp: Path, err_tmp: Path, now: float) -> None:
        html = batch.fault_malformed_output == "html"
        if batch.shape == "gemini":
            if isinstance(outcome, GeminiUnfinished):
                return
            batch.output_file_id = self.add_file(
                out_tmp,
                filename=f"batch-{batch.id}",
                purpose=GEMINI_OUTPUT_PURPOSE,
                size=out_tmp.stat().st_size,
                expires_at=int(now) + GEMINI_FILE_LIFETIME_S,
                internal=True,
                serves_html=html,
                file_id=f"batch-{batch.id}",
            ).id
            return
        if batch.shape == "anthropic":
            results = self.add_file(
                out_tmp,
                filename=f"{batch.id}_results.jsonl",
                purpose="batch_output",
                size=out_tmp.stat().st_size,
                expires_at=None,
                internal=True,
                prefix="msgbatchres_",
                serves_html=html,
            )
            batch.output_file_id = results.id
            return
        expires = int(now) + (batch.output_expires_after_s or OUTPUT_FILE_LIFETIME_S)
        if outcome.output_lines:
            batch.output_file_id = self.add_file(
                out_tmp,
                filename=f"{batch.id}_output.jsonl",
                purpose="batch_output",
                size=out_tmp.stat().st_size,
                expires_at=expires,
                serves_html=html,
            ).id
        if outcome.error_lines or batch.flavor == "azure":
            batch.error_file_id = self.add_file(
                err_tmp,
                filename=f"{batch.id}_error.jsonl",
                purpose="batch_output",
                size=err_tmp.stat().st_size,
                expires_at=expires,
            ).id

    # Admin.

    def set_timings(self, changes: dict) -> Timings:
        merged = {**self.timings.model_dump(), **changes}
        self.timings = Timings.model_validate(merged)
        return self.timings

    def reset(self, *, data: bool) -> None:
        self.faults.reset()
        self.faults.reset_counters()
        self.timings = self._initial_timings.model_copy()
        with self._counter_lock:
            self._counters.clear()
        if data:
            self.store.wipe()

    def stats(self) -> dict:
        now = time.time()
        by_status: dict[str, Counter[str]] = {
            "openai": Counter(),
            "anthropic": Counter(),
            "gemini": Counter(),
        }
        status_of = {"openai": phase, "anthropic": anthropic_status, "gemini": gemini_state}
        with self.lock:
            for batch in self.store.batches.values():
                by_status[batch.shape][status_of[batch.shape](batch, now)] += 1
            files = len(self.store.list_files())
        with self._counter_lock:
            counters = dict(self._counters)
        created = {
            flavor: counters.get(f"batches_created.{flavor}", 0)
            for flavor in ("openai", "azure", "anthropic", "mistral", "groq", "together", "gemini")
        }
        return {
            "batches_created": {**created, "total": sum(created.values())},
            "batches_by_status": {shape: dict(c) for shape, c in by_status.items()},
            "files_uploaded": counters.get("files_uploaded", 0),
            "files_stored": files,
            "api_requests": counters.get("api_requests", 0),
            "http_faults_injected": self.faults.http_faults_injected,
            "downloads_cut": self.faults.downloads_cut,
            "replies_lost": self.faults.replies_lost,
        }
