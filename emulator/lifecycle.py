"""A batch's timeline: planned once, then read lazily from timestamps.

No thread ticks per batch. Once a batch is validated its whole future is planned: when
processing stops (all lines done, expiry, or a cancel), how many lines ran, and when it turns
terminal. Status and counts are computed from the clock on every read; only the steps that do
real work (validation, writing result files) run on the scheduler, and a batch shows a
terminal status only once its files exist.
"""

from __future__ import annotations

import math

from batchrelay.emulator.store import BatchRecord

TERMINAL = {"done": "completed", "expired": "expired", "cancelled": "cancelled"}
NEVER_RAN = {"expired": "batch_expired", "cancelled": "batch_cancelled"}


def plan_run(batch: BatchRecord, start: float) -> None:
    """Fix when processing of a validated batch stops, how, and how many lines run."""
    batch.in_progress_at = start
    duration = batch.total / batch.rate_rps
    natural_end = start + duration
    window_end = batch.created_at + batch.window_s if batch.window_s is not None else math.inf
    if batch.fault_expire_fraction is not None:
        processed = math.floor(batch.fault_expire_fraction * batch.total)
        batch.run_end_at, batch.run_end_kind = start + processed / batch.rate_rps, "expired"
        batch.processed = processed
    elif window_end < natural_end:
        end = max(window_end, start)
        batch.run_end_at, batch.run_end_kind = end, "expired"
        batch.processed = min(batch.total, max(0, math.floor((end - start) * batch.rate_rps)))
    else:
        batch.run_end_at, batch.run_end_kind, batch.processed = natural_end, "done", batch.total
        batch.finalizing_at = natural_end
    if batch.run_end_kind == "done":
        batch.terminal_at = natural_end + batch.finalizing_delay_s + batch.fault_stuck_s
    else:
        batch.terminal_at = batch.run_end_at


def processed_by(batch: BatchRecord, now: float) -> int:
    """Lines that have run by `now` (never more than the plan allows)."""
    if batch.in_progress_at is None:
        return 0
    ran = math.floor((min(now, batch.run_end_at or now) - batch.in_progress_at) * batch.rate_rps)
    return min(batch.processed, max(0, ran))


def cancel_plan(batch: BatchRecord, now: float) -> None:
    """Re-plan for a cancel at `now` (caller checked the batch may be cancelled)."""
    batch.cancelling_at = now
    cancel_done = now + batch.finalizing_delay_s
    if batch.run_end_kind is None or (batch.run_end_at is not None and now < batch.run_end_at):
        batch.processed = processed_by(batch, now)
        batch.run_end_at = now
        batch.finalizing_at = None
        batch.terminal_at = cancel_done
    else:
        batch.terminal_at = max(batch.terminal_at or now, cancel_done)
    batch.run_end_kind = "cancelled"


def terminal_time(batch: BatchRecord) -> float | None:
    if batch.files_written_at is None or batch.terminal_at is None:
        return None
    return max(batch.terminal_at, batch.files_written_at)


def phase(batch: BatchRecord, now: float) -> str:
    """The OpenAI status of the batch at `now`."""
    if batch.failed_at is not None:
        return "failed"
    if batch.run_end_kind is None:
        return "validating"
    done_at = terminal_time(batch)
    if done_at is not None and now >= done_at:
        return TERMINAL[batch.run_end_kind]
    if batch.cancelling_at is not None:
        return "cancelling"
    if batch.run_end_kind == "expired" or now < (batch.run_end_at or 0):
        return "in_progress"
    return "finalizing"
