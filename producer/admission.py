"""A tenant's quotas at the door: what `admit` is sent for a submit, and what a refusal says.

The tenant's keys live in their own hash slot, so admission is a step of its own, after the
idempotency keys are settled (only new requests count) and before `intake` (a refused
submit stores nothing).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from batchrelay.config import Settings
from batchrelay.config.prices import PriceTable, load_prices
from batchrelay.config.tenants import Quota
from batchrelay.producer import commands, errors
from batchrelay.producer.intake import Prepared
from batchrelay.producer.keys import Keys

DAY_TTL_S = 2 * 86400  # a day's quota counters outlive the day, for a late look
# An `open` entry older than this is dropped at the next admission: what a submit that died
# between `admit` and `intake` leaves behind (a real request is final well before).
OPEN_MAX_AGE_MS = 7 * 86400 * 1000
# A tenant at its max_pending waits for results, which take at least a poll interval.
PENDING_RETRY_AFTER_S = 30


def utc_date(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).date().isoformat()


def seconds_to_midnight(ms: int) -> int:
    now = datetime.fromtimestamp(ms / 1000, UTC)
    midnight = datetime(now.year, now.month, now.day, tzinfo=UTC) + timedelta(days=1)
    return max(1, math.ceil((midnight - now).total_seconds()))


class Admission:
    """Builds the `admit` call of one submit and explains a refusal."""

    def __init__(self, settings: Settings, keys: Keys):
        self.settings = settings
        self.keys = keys
        self._prices: PriceTable | None = None

    def call(
        self,
        tenant: str,
        quota: Quota | None,
        fresh: Sequence[tuple[str, Prepared]],
        now_ms: int,
    ) -> commands.Call[str]:
        quota = quota or Quota()
        priced = quota.usd_per_day is not None
        rows = [(rid, self.estimate_usd_micro(p) if priced else 0) for rid, p in fresh]
        limits = commands.Limits(
            max_pending=quota.max_pending or 0,
            requests_per_day=quota.requests_per_day or 0,
            usd_micro_per_day=round((quota.usd_per_day or 0) * 1_000_000),
        )
        return commands.admit(
            self.keys,
            tenant,
            utc_date(now_ms),
            rows,
            now_ms=now_ms,
            stale_before_ms=now_ms - OPEN_MAX_AGE_MS,
            limits=limits,
            day_ttl_s=DAY_TTL_S,
        )

    def estimate_usd_micro(self, p: Prepared) -> int:
        """The batch price of the request's estimated input tokens and of all the output its
        body allows; a tenant with a USD quota may only use models the price table knows."""
        if self._prices is None:
            self._prices = load_prices()
        price = self._prices.lookup(p.model)
        if price is None:
            raise errors.InvalidRequestError(
                f"model {p.model!r} has no price (BATCHRELAY_PRICES), so tenant {p.tenant!r}'s "
                "usd_per_day quota cannot be checked; add the model's price"
            )
        profile = next(x for x in self.settings.providers if x.name == p.profile)
        input_tokens = math.ceil(p.line_bytes / profile.bytes_per_token(p.model))
        return math.ceil(price.batch_cost(input_tokens, p.max_output_tokens) * 1_000_000)

    @staticmethod
    def refused(tenant: str, quota: Quota | None, name: str, n: int, now_ms: int) -> Exception:
        limit = getattr(quota, name, None)
        what = {
            "max_pending": f"at most {limit} requests not yet final",
            "requests_per_day": f"at most {limit} requests per UTC day",
            "usd_per_day": f"at most {limit} USD of estimated cost per UTC day",
        }[name]
        retry = PENDING_RETRY_AFTER_S if name == "max_pending" else seconds_to_midnight(now_ms)
        return errors.QuotaExceededError(
            f"tenant {tenant!r} is over its {name} quota ({what}) with {n} more request(s); "
            "nothing was stored",
            quota=name,
            retry_after_s=retry,
        )
