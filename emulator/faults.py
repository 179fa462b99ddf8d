"""Run-time fault state: the current `Faults`, its counters, and the deterministic draws.

Per-request failures are a pure function of (batch id, custom_id), so a request resubmitted
in a new batch gets a fresh draw while a replay of the same batch gives the same answer.
"""

from __future__ import annotations

import fnmatch
import hashlib
import random
import threading
from dataclasses import dataclass

from batchrelay.emulator.config import Faults

_SCALE = float(1 << 64)


def line_digest(batch_id: str, custom_id: str) -> bytes:
    return hashlib.blake2b(f"{batch_id}\0{custom_id}".encode(), digest_size=16).digest()


def digest_fails(digest: bytes, fraction: float) -> bool:
    """The request fails iff the first 8 bytes of its digest, as a fraction, are below."""
    return int.from_bytes(digest[:8], "big") / _SCALE < fraction


@dataclass(frozen=True)
class BatchFaultPlan:
    validation_code: str | None
    expire_fraction: float | None
    stuck_s: float
    malformed_output: str | None
    error_fraction: float
    error_status: int


class FaultState:
    def __init__(self, initial: Faults) -> None:
        self._initial = initial.model_copy(deep=True)
        self._faults = initial.model_copy(deep=True)
        self._lock = threading.Lock()
        self._rng = random.Random(0)
        self.http_faults_injected = 0
        self.downloads_cut = 0
        self.replies_lost = 0

    def get(self) -> Faults:
        with self._lock:
            return self._faults.model_copy(deep=True)

    def update(self, changes: dict) -> Faults:
        """Apply a partial update; raises pydantic.ValidationError on bad values."""
        with self._lock:
            merged = {**self._faults.model_dump(), **changes}
            self._faults = Faults.model_validate(merged)
            self._rng = random.Random(0)
            return self._faults.model_copy(deep=True)

    def reset(self) -> Faults:
        with self._lock:
            self._faults = self._initial.model_copy(deep=True)
            self._rng = random.Random(0)
            return self._faults.model_copy(deep=True)

    def reset_counters(self) -> None:
        with self._lock:
            self.http_faults_injected = 0
            self.downloads_cut = 0
            self.replies_lost = 0

    def draw_batch_plan(self, *, validates: bool) -> BatchFaultPlan:
        """Consume the `*_next` counters for one new batch and snapshot per-request faults."""
        with self._lock:
            f = self._faults
            validation_code = None
            if validates and f.fail_validation_next > 0:
                f.fail_validation_next -= 1
                validation_code = f.fail_validation_code
            expire_fraction = None
            if f.expire_next > 0:
                f.expire_next -= 1
                expire_fraction = f.expire_after_fraction
            stuck_s = 0.0
            if f.stuck_finalizing_next > 0:
                f.stuck_finalizing_next -= 1
                stuck_s = f.stuck_finalizing_s
            malformed_output = None
            if f.malformed_output_next > 0:
                f.malformed_output_next -= 1
                malformed_output = f.malformed_output_kind
            return BatchFaultPlan(
                validation_code=validation_code,
                expire_fraction=expire_fraction,
                stuck_s=stuck_s,
                malformed_output=malformed_output,
                error_fraction=f.request_error_fraction,
                error_status=f.request_error_status,
            )

    def http_fault(self, method: str, path: str) -> tuple[int, float | None] | None:
        """(status, retry_after_s) when this API call should fail, else None."""
        with self._lock:
            f = self._faults
            if not fnmatch.fnmatchcase(f"{method} {path}", f.http_error_match):
                return None
            if f.http_error_next > 0:
                f.http_error_next -= 1
            elif f.http_error_rate <= 0 or self._rng.random() >= f.http_error_rate:
                return None
            status = f.http_error_statuses[self.http_faults_injected % len(f.http_error_statuses)]
            self.http_faults_injected += 1
            return status, f.retry_after_s

    def lose_reply(self, method: str, path: str) -> bool:
        """Whether the answer to this API call, once carried out, is to be lost."""
        with self._lock:
            f = self._faults
            if f.lost_reply_next <= 0 or not fnmatch.fnmatchcase(
                f"{method} {path}", f.lost_reply_match
            ):
                return False
            f.lost_reply_next -= 1
            self.replies_lost += 1
            return True

    def download_plan(self) -> tuple[int | None, float | None]:
        """(bytes_per_s, cut_fraction) for one download, consuming `download_cut_next`."""
        with self._lock:
            f = self._faults
            cut = f.download_cut_fraction
            if cut is not None and f.download_cut_next is not None:
                if f.download_cut_next > 0:
                    f.download_cut_next -= 1
                else:
                    cut = None
            if cut is not None:
                self.downloads_cut += 1
            return f.download_bytes_per_s, cut

    def token_budget(self, model: str) -> int | None:
        with self._lock:
            return self._faults.token_budget_per_model.get(model)
