"""What each tenant spent: final results priced and added to per-tenant, per-model, per-day
totals in Redis, and those totals read back (`batchrelay costs`, `GET /v1/usage`).

`settle` puts a tenant's request on its group's `bill` when it becomes final; `bill` (run by
the worker right after each settle) prices the request's usage with the price table (batch
and synchronous prices) and sends one `spend` per tenant and day. `spend` counts a request
only while it is still in the tenant's `open` set, so draining a bill twice (a crash after
`spend`, before the bill entries are removed) counts each request once; a crash before
`bill` leaves the entries to the group's next settle.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson
import redis

from batchrelay.config.prices import PriceTable, load_prices, usage_tokens
from batchrelay.producer import commands
from batchrelay.producer.admission import utc_date
from batchrelay.producer.keys import Keys

BILL_CHUNK = 500
COSTS_TTL_S = 400 * 86400  # per-day totals are kept for 400 days
MEASURES = ("requests", "input_tokens", "output_tokens", "batch_usd_micro", "sync_usd_micro")


@lru_cache(maxsize=1)
def _prices() -> PriceTable:
    return load_prices()


def price_row(rid: str, model: str, result: bytes | None, prices: PriceTable) -> commands.SpendRow:
    """One final request's usage and cost; a failed request (no result) costs nothing, and a
    model without a price counts its tokens at 0 USD (`batchrelay costs` flags it)."""
    body = orjson.loads(result) if result else None
    usage = body.get("usage") if isinstance(body, dict) else None
    input_tokens, output_tokens = usage_tokens(usage)
    price = prices.lookup(model)
    batch = sync = 0
    if price is not None:
        batch = round(price.batch_cost(input_tokens, output_tokens) * 1_000_000)
        sync = round(price.sync_cost(input_tokens, output_tokens) * 1_000_000)
    return commands.SpendRow(rid, model, input_tokens, output_tokens, batch, sync)


def bill(client: redis.Redis, keys: Keys, tag: str, model: str) -> int:
    """Count every billed request of group `tag` into its tenant's totals; how many."""
    counted = 0
    while True:
        due = client.zrange(keys.bill(tag), 0, BILL_CHUNK - 1, withscores=True)
        if not due:
            return counted
        pipe = client.pipeline(transaction=False)
        for rid, _ in due:
            pipe.hmget(keys.req(rid.decode()), "tenant", "result")
        records = pipe.execute()
        by_day: dict[tuple[str, str], list[commands.SpendRow]] = defaultdict(list)
        for (rid, finished), (tenant, result) in zip(due, records, strict=True):
            if tenant:  # a record gone after retention has nothing left to count
                row = price_row(rid.decode(), model, result, _prices())
                by_day[tenant.decode(), utc_date(int(finished))].append(row)
        for (tenant, date), rows in by_day.items():
            counted += commands.run(client, commands.spend(keys, tenant, date, rows, COSTS_TTL_S))
        client.zrem(keys.bill(tag), *(rid for rid, _ in due))


@dataclass
class CostRow:
    """One tenant's totals for one model on one UTC date."""

    tenant: str
    date: str
    model: str
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    batch_usd: float = 0.0
    sync_usd: float = 0.0
    priced: bool = True

    def as_json(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "date": self.date,
            "model": self.model,
            "requests": self.requests,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "batch_usd": round(self.batch_usd, 6),
            "sync_usd": round(self.sync_usd, 6),
            "priced": self.priced,
        }


def _costs_keys(client: redis.Redis, keys: Keys, tenant: str | None) -> Iterator[str]:
    for raw in client.scan_iter(match=keys.tenant_costs_pattern(tenant), count=1000):
        yield raw.decode() if isinstance(raw, bytes) else raw


def read_costs(
    client: redis.Redis, keys: Keys, *, tenant: str | None = None, since: str | None = None
) -> list[CostRow]:
    """Totals per tenant, date and model, sorted; `since` is an ISO date (inclusive)."""
    rows: list[CostRow] = []
    for key in _costs_keys(client, keys, tenant):
        name = key.split("{t:", 1)[1].split("}", 1)[0]
        date = key.rsplit(":", 1)[1]
        if since is not None and date < since:
            continue
        rows += _rows(name, date, client.hgetall(key))
    return sorted(rows, key=lambda r: (r.tenant, r.date, r.model))


def _rows(tenant: str, date: str, fields: dict[bytes, bytes]) -> list[CostRow]:
    by_model: dict[str, CostRow] = {}
    for field, value in fields.items():
        model, _, measure = field.decode().rpartition("|")
        row = by_model.setdefault(model, CostRow(tenant, date, model))
        if measure.endswith("_usd_micro"):
            setattr(row, measure.removesuffix("_micro"), int(value) / 1_000_000)
        elif measure in MEASURES:
            setattr(row, measure, int(value))
    prices = _prices()
    for row in by_model.values():
        row.priced = prices.lookup(row.model) is not None
    return list(by_model.values())
