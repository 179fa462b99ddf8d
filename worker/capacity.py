"""Where a batch may go now: provider profiles' in-flight slots and enqueued-token budgets.

Both are shared by every worker, so they live in Redis (`Keys.live`, `Keys.tokens`) and are
taken by the `reserve` Lua command, one batch at a time: from when a batch is claimed for a
profile until the provider says it has ended (or refused it), then given back by `release`,
which may be repeated. A process killed in between leaves a reservation that the sweep gives
back once its batch is done, gone, or placed at another profile. So batches are held back
here instead of being refused by the provider with `token_limit_exceeded`.

A group's candidates are its profile and that profile's `fallbacks`, in order (fallbacks of
fallbacks are not followed); one that is disabled, does not accept the group's endpoint and
model, is at its batches-in-flight cap or is out of tokens for the model is passed over.

Token estimates: a characters-per-token ratio applies to the request as a batch line (its
stored byte size, which is at least the line's length, so the estimate errs high); a
tokenizer counts the tokens of the request body. A tokenizer never counts more tokens than
a text has bytes, so a claim bounded at one token per byte fits whatever it counts.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable

from batchrelay.config import ProviderProfile, Settings
from batchrelay.config.tokens import tokenizer
from batchrelay.producer import commands
from batchrelay.worker.context import Relay

log = logging.getLogger(__name__)


def candidates(
    settings: Settings, profile_name: str, endpoint: str, model: str
) -> list[ProviderProfile]:
    """The profiles a group's batches may go to, in order of preference."""
    primary = settings.profile(profile_name)
    chain = [primary, *(settings.profile(n) for n in primary.fallbacks)]
    return [p for p in chain if p.enabled and p.accepts(endpoint, model)]


def estimate_key(profile: ProviderProfile, model: str) -> str:
    """Names how a batch's `tokens` were counted, so a profile counting alike reuses them (a
    claim counts `ratio:<bytes_per_token>`, which for a tokenizer is only a bound)."""
    spec = profile.token_estimate(model)
    return spec if isinstance(spec, str) else f"ratio:{float(spec)}"


def estimate(
    profile: ProviderProfile, model: str, n: int, size: int, bodies: Iterable[bytes]
) -> int:
    """Estimated enqueued tokens of a batch of `n` requests, `size` bytes as batch lines."""
    spec = profile.token_estimate(model)
    if isinstance(spec, str):
        count = tokenizer(spec)
        return sum(count(body.decode()) for body in bodies)
    # Each request rounds up, so the sum is at most one token per request above size/ratio.
    return math.ceil(size / float(spec)) + n


def room(relay: Relay, profile: ProviderProfile, model: str) -> int | None:
    """Tokens `profile` can take for `model` now: None when it has no room (no free slot or
    no tokens left), 0 when the model has no budget there."""
    pipe = relay.redis.pipeline(transaction=False)
    pipe.hlen(relay.keys.live(profile.name))
    pipe.hget(relay.keys.tokens(profile.name, model), "total")
    live, total = pipe.execute()
    cap = profile.max_batches_in_flight
    if cap is not None and live >= cap:
        return None
    budget = profile.token_budget(model)
    if budget is None:
        return 0
    left = budget - int(total or 0)
    return left if left > 0 else None


def reserve(
    relay: Relay,
    profile: ProviderProfile,
    bid: str,
    model: str,
    tokens: int,
    *,
    force: bool = False,
) -> bool:
    """Hold a slot and `tokens` at `profile` for batch `bid`, or nothing; `force` records a
    batch that already exists at the provider, room or not."""
    budget = profile.token_budget(model) or 0
    if budget and tokens > budget:
        log.warning(
            "batch %s needs about %d tokens, more than %s's whole budget for %s (%d); it goes "
            "alone when nothing else is reserved",
            bid,
            tokens,
            profile.name,
            model,
            budget,
        )
    call = commands.reserve(
        relay.keys,
        profile.name,
        model,
        bid,
        tokens=tokens,
        max_live=profile.max_batches_in_flight or 0,
        budget=budget,
        force=force,
    )
    return commands.run(relay.redis, call)


def release(relay: Relay, profile_name: str, model: str, bid: str) -> bool:
    """Give back what `bid` holds at a profile; True if it held anything."""
    return commands.run(relay.redis, commands.release(relay.keys, profile_name, model, bid))


def reserved(relay: Relay, profile_name: str) -> dict[str, str]:
    """Batch id -> model of every batch holding a slot at the profile."""
    raw = relay.redis.hgetall(relay.keys.live(profile_name))
    return {k.decode(): v.decode() for k, v in raw.items()}
