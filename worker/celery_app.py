"""The Celery app: the at-least-once settings of the reference, the queue, the beat schedule.

`create_app(settings)` builds an app for any settings (tests make one per stack);
`worker/celery.py` builds the one `celery -A batchrelay.worker ...` finds.
"""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import urlsplit

from celery import Celery

from batchrelay.config import Settings
from batchrelay.worker.context import Relay
from batchrelay.worker.state import broker_url

TASK_MODULE = "batchrelay.worker.tasks"


def create_app(settings: Settings) -> Celery:
    settings.require_providers()
    app = Celery("batchrelay", broker=broker_url(settings), include=[TASK_MODULE])
    vt = settings.visibility_timeout_s
    tick = timedelta(seconds=settings.tick_s)
    expires = {"expires": settings.tick_s * 5}
    loop_s = max(1.0, settings.tick_s * 5)
    app.conf.update(
        task_default_queue=settings.queue,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_soft_shutdown_timeout=30,
        worker_enable_soft_shutdown_on_idle=True,
        broker_connection_retry_on_startup=True,
        # No key prefix: CeleryTask callbacks must land in the queues an app's own Celery
        # workers read on the same broker.
        broker_transport_options={"visibility_timeout": vt},
        visibility_timeout=vt,
        task_time_limit=settings.task_time_limit_s,
        task_soft_time_limit=max(1, settings.task_time_limit_s - 30),
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        worker_send_task_events=True,
        task_send_sent_event=True,
        worker_hijack_root_logger=False,
        # A standby beat takes over once the lock expires: five loops, as RedBeat advises.
        beat_max_loop_interval=loop_s,
        beat_scheduler="batchrelay.worker.beat:ResilientRedBeatScheduler",
        # Shown by `inspect conf` and Flower, which mask broker_url but not this key: the
        # masked form. ResilientRedBeatScheduler connects with the settings (a cluster too).
        redbeat_redis_url=str(settings.redis_url),
        redbeat_key_prefix=f"{settings.key_prefix}:redbeat",
        redbeat_lock_timeout=loop_s * 5,
        beat_schedule={
            "aggregate": {"task": "batchrelay.aggregate", "schedule": tick, "options": expires},
            "poll": {"task": "batchrelay.poll", "schedule": tick, "options": expires},
            "deliver-due": {"task": "batchrelay.deliver_due", "schedule": tick, "options": expires},
            "sweep": {
                "task": "batchrelay.sweep",
                "schedule": timedelta(seconds=60),
                "options": {"expires": 60},
            },
        },
    )
    if urlsplit(app.conf.broker_url).scheme.startswith("amqp"):
        # RabbitMQ: batchrelay's queue is a quorum queue (replicated, survives a node) and a
        # publish waits for the broker's confirm. Redis' visibility timeout does not apply.
        app.conf.task_default_queue_type = "quorum"
        app.conf.broker_transport_options = {"confirm_publish": True}
    app.batchrelay_settings = settings  # type: ignore[attr-defined]
    app.batchrelay_relay = None  # type: ignore[attr-defined]
    return app


def relay_of(app: Celery) -> Relay:
    """The process's Relay for this app, made on first use (after any fork)."""
    relay = getattr(app, "batchrelay_relay", None)
    if relay is None:
        relay = Relay(app.batchrelay_settings)  # type: ignore[attr-defined]
        app.batchrelay_relay = relay  # type: ignore[attr-defined]
    return relay
