"""Thin Celery tasks: each runs one plain function of the pipeline with ids as arguments.

Nothing waits in a countdown (docs/architecture.md, promise 6): a task that fails leaves its batch
or delivery on its due-time schedule in Redis, and the next beat tick after the lease hands it out
again. Beat sends the three dispatchers (aggregate, poll, deliver_due) only when they have work
(`worker/dispatch.py`, promise 11). What Flower shows says what each task did: the work tasks
take the batch or request ids they handle, and every result names the ids or counts it produced.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task, shared_task
from celery.signals import task_postrun

from batchrelay import metrics_store
from batchrelay.worker import collection, delivery, packing, polling, submission, sweep
from batchrelay.worker.celery_app import relay_of

log = logging.getLogger(__name__)


@shared_task(bind=True, name="batchrelay.aggregate")
def aggregate(self: Task) -> dict[str, list[str]]:
    """Beat: claim every due batch and send it to `submit`; returns the claimed batch ids."""
    claimed = packing.aggregate(relay_of(self.app))
    for bid in claimed:
        submit.delay(bid)
    return {"claimed": claimed}


@shared_task(bind=True, name="batchrelay.submit")
def submit(self: Task, batch_id: str) -> str:
    return submission.submit_batch(relay_of(self.app), batch_id)


@shared_task(bind=True, name="batchrelay.poll")
def poll(self: Task) -> dict[str, list[str]]:
    """Beat: hand out every batch that is due (poll, or re-drive a submit or collect);
    returns the batch ids sent to each."""
    due = sweep.lease_due_batches(relay_of(self.app))
    tasks = {"submit": submit, "poll": poll_batch, "collect": collect}
    sent: dict[str, list[str]] = {}
    for action, bid in due:
        tasks[action].delay(bid)
        sent.setdefault(action, []).append(bid)
    return sent


@shared_task(bind=True, name="batchrelay.poll_batch")
def poll_batch(self: Task, batch_id: str) -> str:
    status = polling.poll_batch(relay_of(self.app), batch_id)
    if status == "collect":
        collect.delay(batch_id)
    return status


@shared_task(bind=True, name="batchrelay.collect")
def collect(self: Task, batch_id: str) -> dict[str, int]:
    """Collect a finished batch, then hand out the deliveries it made due at once instead of
    waiting for beat's next tick (they are leased first, so beat cannot send them twice)."""
    relay = relay_of(self.app)
    counts = collection.collect_batch(relay, batch_id)
    if counts["ok"] or counts["fail"]:
        _hand_out(delivery.lease_due(relay))
    return dict(counts)


@shared_task(bind=True, name="batchrelay.deliver_due")
def deliver_due(self: Task) -> dict[str, int]:
    """Beat: hand out due deliveries in chunks; returns how many chunks and requests."""
    return _hand_out(delivery.lease_due(relay_of(self.app)))


def _hand_out(chunks: list[delivery.LeasedChunk]) -> dict[str, int]:
    for chunk in chunks:
        deliver.delay(chunk.request_ids, chunk.leased_until_ms)
    return {"chunks": len(chunks), "requests": sum(len(c.request_ids) for c in chunks)}


@shared_task(bind=True, name="batchrelay.deliver")
def deliver(self: Task, request_ids: list[str], leased_until_ms: int) -> dict[str, int]:
    app = self.app

    def send_task(name: str, payload: dict[str, Any], queue: str | None) -> None:
        app.send_task(name, args=[payload], queue=queue or "celery")

    return dict(delivery.deliver_chunk(relay_of(app), request_ids, leased_until_ms, send_task))


@shared_task(bind=True, name="batchrelay.sweep")
def sweep_task(self: Task) -> dict[str, int]:
    return {"stuck": sweep.sweep(relay_of(self.app))}


@task_postrun.connect
def _flush_metrics(sender: Task | None = None, **_: Any) -> None:
    """Write what the task counted (provider calls, settled requests, deliveries) to Redis."""
    if sender is not None and sender.name.startswith("batchrelay."):
        relay = relay_of(sender.app)
        metrics_store.flush(relay.redis, relay.keys)
