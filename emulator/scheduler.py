"""One timer thread that hands due jobs to a small worker pool.

Only steps that do real work are scheduled (validate a file, write result files); everything
else about a batch is read from its timestamps. Jobs must be idempotent: a cancel may
schedule a second `finish` for a batch, and a restart re-schedules unfinished work.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger("batchrelay.emulator.scheduler")


class Scheduler:
    def __init__(self, run: Callable[[str, str], None], workers: int = 2) -> None:
        self._run = run
        self._heap: list[tuple[float, int, str, str]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stopping = False
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="emulator-job")
        self._thread = threading.Thread(target=self._loop, name="emulator-timer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(5)
        self._pool.shutdown(wait=True, cancel_futures=True)

    def at(self, when: float, action: str, batch_id: str) -> None:
        with self._cond:
            heapq.heappush(self._heap, (when, next(self._seq), action, batch_id))
            self._cond.notify_all()

    def _loop(self) -> None:
        with self._cond:
            while not self._stopping:
                if not self._heap:
                    self._cond.wait()
                    continue
                delay = self._heap[0][0] - time.time()
                if delay > 0:
                    self._cond.wait(delay)
                    continue
                _, _, action, batch_id = heapq.heappop(self._heap)
                self._pool.submit(self._safe_run, action, batch_id)

    def _safe_run(self, action: str, batch_id: str) -> None:
        try:
            self._run(action, batch_id)
        except Exception:
            log.exception("emulator job %s failed for %s", action, batch_id)
