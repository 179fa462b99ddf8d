"""Every Redis key and id batchrelay uses, in one place (as arq keeps its constants).

A *group* is one (provider profile, endpoint, model): the unit that is packed into a provider
batch. Its tag is a short hash that every key of the group carries in `{braces}`, so all of a
group's keys share one Redis Cluster hash slot and a Lua script may touch any of them.
Request and batch ids embed the tag, so a key can be found from an id alone.

    {p}:groups                  hash   tag -> JSON {profile, endpoint, model}; and
                                       "retired:<tag>" -> the same plus "at": a group the
                                       sweep retired lately, watched for a late request
    {p}:{tag}:pending           zset   request id -> enqueue time (ms); the pending queue
    {p}:{tag}:pbytes            string total JSONL bytes of the pending requests
    {p}:{tag}:req:{rid}         hash   the request record
    {p}:{tag}:batch:{bid}       hash   the batch record
    {p}:{tag}:items:{bid}       list   the request ids of a batch, in JSONL line order
    {p}:{tag}:inflight          zset   batch id -> when it next needs attention (ms)
    {p}:{tag}:finished          zset   batch id -> when it was collected (ms): the group's
                                       finished batches still on record (`batches list --all`)
    {p}:{tag}:deliver           zset   request id -> when its next delivery attempt is due (ms)
    {p}:{tag}:dead              zset   request id -> when its delivery was given up (ms)
    {p}:{tag}:backoff           string set while the group must not be packed (token limit)
    {p}:{tag}:registered        string set by intake: the group is on the groups list
    {p}:{tag}:alive             string refreshed when a request becomes final; expires with
                                       the request records, so while it exists one may be left
    {p}:{tag}:lock:{bid}        string a worker's lease on one batch
    {p}:{tag}:bill              zset   request id -> when final: requests of a tenant whose
                                       cost is not yet counted in the tenant's totals
    {p}:{tag}:done              sharded pub/sub channel (SPUBLISH): space-separated ids of
                                       requests just made final, in the group's slot
    {p}:idem:{sha256(key)}      string "rid fingerprint" of an idempotency key (see `idem`)

`batchrelay run` in direct file mode (batchrelay/direct/) keeps a small record per input file,
named by the first 32 hex digits of the file's SHA-256 (`fp`); its provider batches are
`run_<fp>_<part>` (see `run_batch_id`), which hold profile slots and tokens like the relay's:

    {p}:run:{fp}                hash   part id -> JSON {profile, create_started, file_id,
                                       pbatch}: what was created at the provider for each part
    {p}:run:{fp}:lock:{part}    string the lock of the process creating one part (redis-py Lock)
    {p}:run:{fp}:alive          string refreshed while a `run` of the file is live (or, after
                                       --no-wait, while its batches may still run); once it
                                       expires the sweep gives back the run's reservations

Counters the workers keep for the metrics exporter (see batchrelay/metrics_store.py):

    {p}:metrics:counters        hash   JSON [name, label values...] -> count
    {p}:metrics:histograms      hash   JSON [name, bucket bound | "sum" | "count"] -> value
    {p}:pwh:{webhook-id}        string a provider webhook already taken (dedupe)

A provider profile's keys are shared by every group and worker that sends batches to it. They
carry the tag `{pf:<profile>}`, so the `reserve` script may touch them together:

    {p}:{pf:<profile>}:live           hash  batch id -> model: batches holding one of the
                                            profile's in-flight slots (max_batches_in_flight)
    {p}:{pf:<profile>}:tokens:<model> hash  batch id -> its estimated enqueued tokens, and
                                            "total" -> their sum (enqueued_token_budget)
    {p}:{pf:<profile>}:pbatches       hash  provider batch id -> our batch id: which claim a
                                            provider batch belongs to, for providers whose
                                            batches carry no metadata (Anthropic)

A tenant's keys carry the tag `{t:<tenant>}`, so `admit` and `spend` touch them together:

    {p}:{t:<tenant>}:open             zset  request id -> created (ms): requests not yet
                                            final (the max_pending quota)
    {p}:{t:<tenant>}:day:<date>       hash  requests and usd_micro (estimated) admitted on
                                            that UTC date (the per-day quotas)
    {p}:{t:<tenant>}:costs:<date>     hash  "<model>|<measure>" -> totals of the requests
                                            made final on that UTC date (`batchrelay costs`)
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"


def group_tag(profile: str, endpoint: str, model: str) -> str:
    digest = hashlib.blake2b(f"{profile}\x00{endpoint}\x00{model}".encode(), digest_size=8)
    return _b32(int.from_bytes(digest.digest(), "big"), 12)


def _b32(value: int, width: int) -> str:
    out = []
    for _ in range(width):
        out.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(out))


def _ulid() -> str:
    """Time-ordered and unique: 10 base32 characters of milliseconds and 64 random bits in hex
    (hex digits are Crockford base32 digits too), 26 characters; cheap enough for intake."""
    return _b32(time.time_ns() // 1_000_000, 10) + os.urandom(8).hex()


def new_request_id(tag: str) -> str:
    """`r_<tag>_<ulid>`: 41 characters, valid as an Anthropic custom_id (^[a-zA-Z0-9_-]{1,64}$)."""
    return f"r_{tag}_{_ulid()}"


def new_batch_id(tag: str) -> str:
    return f"b_{tag}_{_ulid()}"


def tag_of(any_id: str) -> str:
    """The group tag inside a request or batch id; ValueError if it is not one of ours."""
    parts = any_id.split("_")
    if len(parts) != 3 or parts[0] not in ("r", "b") or len(parts[1]) != 12 or len(parts[2]) != 26:
        raise ValueError(f"{any_id!r} is not a batchrelay request or batch id")
    return parts[1]


def run_batch_id(fp: str, part: str) -> str:
    """`run_<fp>_<part>`: a `batchrelay run` part's batch id (fp: 32 hex digits of the file's
    SHA-256; part: `<group tag>-<n>-<attempt>`)."""
    return f"run_{fp}_{part}"


def run_fingerprint_of(bid: str) -> str | None:
    """The file fingerprint inside a `run_` batch id, or None for a relay batch id."""
    parts = bid.split("_")
    return parts[1] if len(parts) == 3 and parts[0] == "run" else None


def fingerprint(endpoint: str, body: bytes, callback: bytes, metadata: bytes) -> str:
    """An idempotency key's binding (see `idem` in relay.lua): a hash of every field."""
    digest = hashlib.sha256(endpoint.encode())
    for part in (body, callback, metadata):
        digest.update(b"\x00" + part)
    return digest.hexdigest()[:32]


@dataclass(frozen=True)
class Keys:
    prefix: str = "br"

    @property
    def groups(self) -> str:
        return f"{self.prefix}:groups"

    def _g(self, tag: str) -> str:
        return f"{self.prefix}:{{{tag}}}"

    def pending(self, tag: str) -> str:
        return f"{self._g(tag)}:pending"

    def pbytes(self, tag: str) -> str:
        return f"{self._g(tag)}:pbytes"

    def req_prefix(self, tag: str) -> str:
        return f"{self._g(tag)}:req:"

    def req(self, rid: str) -> str:
        return f"{self._g(tag_of(rid))}:req:{rid}"

    def batch_prefix(self, tag: str) -> str:
        return f"{self._g(tag)}:batch:"

    def batch(self, bid: str) -> str:
        return f"{self._g(tag_of(bid))}:batch:{bid}"

    def items(self, bid: str) -> str:
        return f"{self._g(tag_of(bid))}:items:{bid}"

    def inflight(self, tag: str) -> str:
        return f"{self._g(tag)}:inflight"

    def finished(self, tag: str) -> str:
        return f"{self._g(tag)}:finished"

    def deliver(self, tag: str) -> str:
        return f"{self._g(tag)}:deliver"

    def dead(self, tag: str) -> str:
        return f"{self._g(tag)}:dead"

    def registered(self, tag: str) -> str:
        return f"{self._g(tag)}:registered"

    def alive(self, tag: str) -> str:
        return f"{self._g(tag)}:alive"

    def backoff(self, tag: str) -> str:
        return f"{self._g(tag)}:backoff"

    def lock(self, bid: str) -> str:
        return f"{self._g(tag_of(bid))}:lock:{bid}"

    def bill(self, tag: str) -> str:
        return f"{self._g(tag)}:bill"

    def run(self, fp: str) -> str:
        return f"{self.prefix}:run:{fp}"

    def run_lock(self, fp: str, part: str) -> str:
        return f"{self.run(fp)}:lock:{part}"

    def run_alive(self, fp: str) -> str:
        return f"{self.run(fp)}:alive"

    def _t(self, tenant: str) -> str:
        return f"{self.prefix}:{{t:{tenant}}}"

    def tenant_open(self, tenant: str) -> str:
        return f"{self._t(tenant)}:open"

    def tenant_day(self, tenant: str, date: str) -> str:
        return f"{self._t(tenant)}:day:{date}"

    def tenant_costs(self, tenant: str, date: str) -> str:
        return f"{self._t(tenant)}:costs:{date}"

    def tenant_costs_pattern(self, tenant: str | None) -> str:
        """A SCAN pattern for the costs keys of one tenant, or of every tenant."""
        return f"{self.prefix}:{{t:{tenant or '*'}}}:costs:*"

    def idem(self, key: str) -> str:
        return f"{self.prefix}:idem:{hashlib.sha256(key.encode()).hexdigest()}"

    def done(self, tag: str) -> str:
        return f"{self._g(tag)}:done"

    @property
    def metric_counters(self) -> str:
        return f"{self.prefix}:metrics:counters"

    @property
    def metric_histograms(self) -> str:
        return f"{self.prefix}:metrics:histograms"

    def provider_webhook(self, webhook_id: str) -> str:
        return f"{self.prefix}:pwh:{hashlib.sha256(webhook_id.encode()).hexdigest()[:32]}"

    def _pf(self, profile: str) -> str:
        return f"{self.prefix}:{{pf:{profile}}}"

    def live(self, profile: str) -> str:
        return f"{self._pf(profile)}:live"

    def tokens(self, profile: str, model: str) -> str:
        return f"{self._pf(profile)}:tokens:{model}"

    def pbatches(self, profile: str) -> str:
        return f"{self._pf(profile)}:pbatches"
