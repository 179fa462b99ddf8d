"""A run's small record in Redis: what each part created at the provider, who is creating it,
whether the run is alive, and the profile capacity its batches hold.

A part is created under a lock (redis-py `Lock`, a lease the live run extends), and its record
says `create_started` before the create call, so a run that takes over a part whose creator
died asks the provider (`BatchAdapter.find`) before creating it again (promise 4). The run's
batches hold slots and tokens at their profile through the same `reserve`/`release` commands as
the relay's batches; the `alive` key, refreshed by the live run, tells the sweep (and the next
run) when a killed run's reservations may be given back.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

import orjson
from redis.exceptions import LockError
from redis.lock import Lock

from batchrelay.config import Settings
from batchrelay.direct.parts import Part
from batchrelay.producer import commands
from batchrelay.producer.connection import Client
from batchrelay.producer.keys import Keys, run_fingerprint_of


class RunStore:
    def __init__(self, settings: Settings, client: Client, fp: str):
        self.settings, self.redis, self.fp = settings, client, fp
        self.keys = Keys(settings.key_prefix)
        self.lease_s = settings.run_lease_s
        self._held: set[Lock] = set()
        self._guard = threading.Lock()
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    # --- liveness ---

    def touch(self, hold_s: float | None = None) -> None:
        """Mark the run alive for `hold_s` (one lease by default) and keep its record for the
        result retention."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(self.keys.run_alive(self.fp), 1, px=int((hold_s or self.lease_s) * 1000))
        pipe.expire(self.keys.run(self.fp), self.settings.result_retention_s)
        pipe.execute()

    def start_heartbeat(self) -> None:
        """Refresh the alive mark and extend held locks every third of a lease, from a thread,
        so a long upload does not lose its lock."""
        self.touch()
        self._beat = threading.Thread(target=self._heartbeat, name="run-heartbeat", daemon=True)
        self._beat.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                self.touch()
                with self._guard:
                    held = list(self._held)
                for lock in held:
                    lock.reacquire()
            except Exception:  # the main thread meets the same Redis error and reports it
                continue

    def stop_heartbeat(self, hold_s: float | None = None) -> None:
        """Stop refreshing; `hold_s` keeps the run alive that long (its batches still run at
        the provider after --no-wait or Ctrl-C), else the mark lapses within one lease."""
        self._stop.set()
        if self._beat is not None:
            self._beat.join(5)
        if hold_s is not None:
            self.touch(hold_s)

    # --- part records ---

    def record(self, part: Part) -> dict[str, Any]:
        raw = self.redis.hget(self.keys.run(self.fp), part.id)
        return orjson.loads(raw) if raw else {}

    def update(self, part: Part, rec: dict[str, Any], **fields: Any) -> None:
        """Write a part's record (only its lock holder does)."""
        rec.update(fields)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(self.keys.run(self.fp), part.id, orjson.dumps(rec))
        pipe.expire(self.keys.run(self.fp), self.settings.result_retention_s)
        pipe.execute()

    def created(self, part: Part, rec: dict[str, Any], provider_id: str) -> None:
        """Name the provider batch: in the profile's registry first (a crash after it leaves
        the batch recognisably this part's, as for the relay's batches), then the record."""
        self.redis.hset(self.keys.pbatches(part.profile), provider_id, part.bid)
        self.update(part, rec, pbatch=provider_id)

    def lock(self, part: Part) -> Lock | None:
        """The part's creation lock, or None while another live run holds it."""
        lock = self.redis.lock(
            self.keys.run_lock(self.fp, part.id), timeout=self.lease_s, thread_local=False
        )
        if not lock.acquire(blocking=False):
            return None
        with self._guard:
            self._held.add(lock)
        return lock

    def unlock(self, lock: Lock) -> None:
        with self._guard:
            self._held.discard(lock)
        # A lease that ran out: whoever holds the lock now reads the record first.
        with contextlib.suppress(LockError):
            lock.release()

    def recorded(self, profile: str, provider_id: str) -> str | None:
        owner = self.redis.hget(self.keys.pbatches(profile), provider_id)
        return owner.decode() if owner else None

    # --- capacity shared with the relay ---

    def reserve(self, part: Part, *, force: bool = False) -> bool:
        profile = self.settings.profile(part.profile)
        call = commands.reserve(
            self.keys,
            part.profile,
            part.model,
            part.bid,
            tokens=part.tokens,
            max_live=profile.max_batches_in_flight or 0,
            budget=profile.token_budget(part.model) or 0,
            force=force,
        )
        return commands.run(self.redis, call)

    def release(self, part: Part) -> None:
        commands.run(self.redis, commands.release(self.keys, part.profile, part.model, part.bid))

    def release_stale(self) -> int:
        """Give back reservations that killed runs (of any file) left at the profiles, as the
        sweep does; so a relay without a worker does not keep them either."""
        released = 0
        for profile in self.settings.providers:
            held = self.redis.hgetall(self.keys.live(profile.name))
            for raw_bid, raw_model in held.items():
                fp = run_fingerprint_of(raw_bid.decode())
                if fp is None or self.redis.exists(self.keys.run_alive(fp)):
                    continue
                call = commands.release(
                    self.keys, profile.name, raw_model.decode(), raw_bid.decode()
                )
                released += commands.run(self.redis, call)
        return released


def now_ms() -> int:
    return int(time.time() * 1000)
