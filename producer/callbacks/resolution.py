"""A webhook host's addresses, every one checked against the policy, with a small DNS cache.

DNS answers are cached for `RESOLUTION_TTL_S` so a burst of submits to one URL costs one
lookup; the worker asks again with `fresh=True` before each delivery.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Callable

from batchrelay.producer import errors
from batchrelay.producer.callbacks.addresses import IPAddress, address_block_reason, literal_address
from batchrelay.producer.callbacks.policy import WebhookPolicy

RESOLUTION_TTL_S = 60.0
# Failed lookups are cached too (a typo submitted 10,000 times is one lookup), but briefly.
NEGATIVE_TTL_S = 10.0
_CACHE_MAX_ENTRIES = 4096


class _ResolutionCache:
    """host → (expiry, addresses or error text); small, thread-safe, expiring."""

    def __init__(
        self,
        ttl: float = RESOLUTION_TTL_S,
        negative_ttl: float = NEGATIVE_TTL_S,
        max_entries: int = _CACHE_MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.max_entries = max_entries
        self.clock = clock
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[float, tuple[IPAddress, ...] | str]] = {}

    def get(self, host: str) -> tuple[IPAddress, ...] | str | None:
        with self._lock:
            entry = self._entries.get(host)
            if entry is None:
                return None
            if entry[0] <= self.clock():
                del self._entries[host]
                return None
            return entry[1]

    def put(self, host: str, value: tuple[IPAddress, ...] | str) -> None:
        ttl = self.negative_ttl if isinstance(value, str) else self.ttl
        with self._lock:
            if len(self._entries) >= self.max_entries and host not in self._entries:
                now = self.clock()
                for key in [k for k, (exp, _) in self._entries.items() if exp <= now]:
                    del self._entries[key]
                # Still full: drop the oldest half (dicts keep insertion order).
                for key in list(self._entries)[: max(1, len(self._entries) // 2)]:
                    if len(self._entries) < self.max_entries:
                        break
                    del self._entries[key]
            self._entries.pop(host, None)
            self._entries[host] = (self.clock() + ttl, value)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


_cache = _ResolutionCache()


def clear_resolution_cache() -> None:
    """Forget every cached DNS answer (tests, or after fixing a receiver's DNS)."""
    _cache.clear()


def _lookup(host: str) -> tuple[IPAddress, ...] | str:
    """Every address `host` resolves to, in resolver order, or the reason it does not resolve."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)):
            return "does not resolve"
        return f"could not be resolved ({exc.strerror or exc})"
    except (UnicodeError, OSError) as exc:
        return f"could not be resolved ({type(exc).__name__})"
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        try:
            ip = ipaddress.ip_address(sockaddr[0])
        except ValueError:
            continue
        if ip not in addresses:
            addresses.append(ip)
    return tuple(addresses) if addresses else "does not resolve"


def resolve_webhook_host(
    host: str, policy: WebhookPolicy, *, fresh: bool = False
) -> tuple[IPAddress, ...]:
    """The addresses of `host`, all of them allowed by `policy`, or InvalidCallbackError.

    Every address must pass, not just the first: a name with one public and one private
    address would otherwise reach the private one whenever the client happens to pick it.
    `fresh=True` skips the cache (and refreshes it) — use it at delivery time. The worker
    connects only to the addresses returned here, so the check and the connection agree.
    """
    literal = literal_address(host)
    if literal is not None:
        addresses: tuple[IPAddress, ...] = (literal,)
        named = False
    else:
        key = host.lower()
        cached = None if fresh else _cache.get(key)
        if cached is None:
            cached = _lookup(host)
            _cache.put(key, cached)
        if isinstance(cached, str):
            raise errors.InvalidCallbackError(f"webhook URL host {host!r} {cached}")
        if policy.allows_name(host):
            return cached
        addresses = cached
        named = True
    for ip in addresses:
        check_address(ip, policy, f"{host!r} ({ip})" if named else str(ip))
    return addresses


def check_address(ip: IPAddress, policy: WebhookPolicy, described: str) -> None:
    reason = address_block_reason(ip)
    if reason is not None and not policy.allows_address(ip):
        raise errors.InvalidCallbackError(
            f"webhook URL host {described} is not a public address ({reason}); batchrelay "
            "does not call internal networks unless BATCHRELAY_WEBHOOK_ALLOW_HOSTS names the host "
            "or BATCHRELAY_WEBHOOK_ALLOW_PRIVATE is true"
        )
