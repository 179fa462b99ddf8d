"""The app `celery -A batchrelay.worker worker|beat` finds. Bad configuration stops it here, with a
message naming each bad setting, before Celery starts anything; a Redis Cluster that would also
be the broker stops a worker or beat as it starts (only then is Redis asked)."""

from __future__ import annotations

import sys
from typing import Any

from celery.signals import beat_init, worker_init

from batchrelay.config import ConfigurationError, load_settings
from batchrelay.worker.celery_app import create_app
from batchrelay.worker.state import check_broker_at_start


def _stop(exc: ConfigurationError) -> SystemExit:
    sys.stderr.write(f"batchrelay: {exc}\n")
    return SystemExit(78)  # EX_CONFIG


try:
    app = create_app(load_settings())
except ConfigurationError as exc:
    raise _stop(exc) from None


@worker_init.connect(weak=False)
@beat_init.connect(weak=False)
def _refuse_cluster_broker(sender: Any, signal: Any, **_: Any) -> None:
    try:
        check_broker_at_start(app.batchrelay_settings, "beat" if signal is beat_init else "worker")
    except ConfigurationError as exc:
        raise _stop(exc) from None
