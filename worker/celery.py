"""The app `celery -A batchrelay.worker worker|beat` finds. Bad configuration stops it here, with a
message naming each bad setting, before Celery starts anything."""

from __future__ import annotations

import sys

from batchrelay.config import ConfigurationError, load_settings
from batchrelay.worker.celery_app import create_app

try:
    app = create_app(load_settings())
except ConfigurationError as exc:
    sys.stderr.write(f"batchrelay: {exc}\n")
    raise SystemExit(78) from None  # EX_CONFIG
