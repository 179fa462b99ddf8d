"""Callbacks a web app attaches to a request, and the check that a webhook URL is safe to call.

A webhook URL comes from an app, and the worker that calls it sits inside our network, so a
careless or hostile URL could make batchrelay POST to Redis, a cloud metadata endpoint or an
admin panel (SSRF). `check_webhook_url` refuses such URLs at the door (promise 9) and again at
delivery time, because DNS may have changed in between. It parses with httpx's URL parser, the
same one the worker sends with, so the check and the request cannot disagree about the host.
DNS answers are cached for `RESOLUTION_TTL_S` so a burst of submits to one URL costs one lookup.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from batchrelay.producer import errors

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_URL_LENGTH = 2048
MAX_PORT = 65535
RESOLUTION_TTL_S = 60.0
# Failed lookups are cached too (a typo submitted 10,000 times is one lookup), but briefly.
NEGATIVE_TTL_S = 10.0
_CACHE_MAX_ENTRIES = 4096

_TASK_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z_][A-Za-z0-9_-]*)*$")
_QUEUE_NAME = re.compile(r"^[A-Za-z0-9_.:-]+$")
_MAX_NAME = 255


# -- callback kinds -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Webhook:
    """POST the result, signed per Standard Webhooks, to `url`; the request id is `webhook-id`."""

    url: str

    def to_record(self) -> dict[str, Any]:
        return {"kind": "webhook", "url": self.url}


@dataclass(frozen=True, slots=True)
class CeleryTask:
    """Send the result as the single argument of the Celery task `name` (on `queue`, if given).

    The task runs in the app's own workers; batchrelay only publishes the message.
    """

    name: str
    queue: str | None = None

    def to_record(self) -> dict[str, Any]:
        return {"kind": "celery", "name": self.name, "queue": self.queue}


Callback = Webhook | CeleryTask


def callback_from_record(record: Mapping[str, Any] | None) -> Callback | None:
    """Rebuild a callback from its `to_record()` form (as stored in Redis); None means none."""
    if not record:
        return None
    kind = record.get("kind")
    try:
        if kind == "webhook":
            return Webhook(url=record["url"])
        if kind == "celery":
            return CeleryTask(name=record["name"], queue=record.get("queue"))
    except KeyError as exc:
        raise errors.InvalidCallbackError(f"{kind} callback record lacks {exc}") from None
    raise errors.InvalidCallbackError(f"unknown callback record kind {kind!r}")


# -- policy ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class WebhookPolicy:
    """Which webhook destinations batchrelay will call.

    `allow_hosts` lists exact host names, IP addresses or CIDR networks that may be called even
    though they are private or loopback (an internal receiver). `allow_private` lifts the
    address check entirely: right for a laptop or a test, wrong in production, where it also
    opens cloud metadata endpoints such as 169.254.169.254.
    """

    allow_private: bool = False
    allow_hosts: tuple[str, ...] = ()
    require_https: bool = False
    _names: frozenset[str] = field(init=False, repr=False, compare=False)
    _networks: tuple[IPNetwork, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.allow_hosts, str):
            raise errors.ConfigurationError(
                "WebhookPolicy.allow_hosts must be a list of hosts, not a single string"
            )
        hosts = tuple(self.allow_hosts)
        names: set[str] = set()
        networks: list[IPNetwork] = []
        for entry in hosts:
            if not isinstance(entry, str):
                raise errors.ConfigurationError(
                    f"WebhookPolicy.allow_hosts entries must be strings, got {type(entry).__name__}"
                )
            network = _parse_network(entry)
            if network is not None:
                networks.append(network)
                continue
            name = _normalise_allowed_name(entry)
            if name is None:
                raise errors.ConfigurationError(
                    f"WebhookPolicy.allow_hosts: {entry!r} is not a host name, IP address or "
                    "CIDR network"
                )
            names.add(name)
        object.__setattr__(self, "allow_hosts", hosts)
        object.__setattr__(self, "_names", frozenset(names))
        object.__setattr__(self, "_networks", tuple(networks))

    def allows_name(self, host: str) -> bool:
        """True when `host` (as parsed from a URL) is listed by name in `allow_hosts`."""
        return host.lower().rstrip(".") in self._names

    def allows_address(self, ip: IPAddress) -> bool:
        """True when `ip` may be called although it is not public."""
        if self.allow_private:
            return True
        candidates: list[IPAddress] = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            candidates.append(ip.ipv4_mapped)
        return any(c in net for c in candidates for net in self._networks)


def _parse_network(entry: str) -> IPNetwork | None:
    text = entry.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


def _normalise_allowed_name(entry: str) -> str | None:
    if not entry or any(c in entry for c in "/:@?#[] \t"):
        return None
    try:
        host = httpx.URL(f"http://{entry}/").raw_host.decode("ascii")
    except (httpx.InvalidURL, ValueError):
        return None
    return host.lower().rstrip(".") or None


# -- address classification -----------------------------------------------------------------

_V4_SPECIAL: tuple[tuple[ipaddress.IPv4Network, str], ...] = tuple(
    (ipaddress.IPv4Network(net), label)
    for net, label in (
        ("0.0.0.0/8", "this-network"),
        ("100.64.0.0/10", "shared (carrier-grade NAT)"),
        ("192.0.0.0/24", "IETF protocol assignment"),
        ("192.0.2.0/24", "documentation"),
        ("198.18.0.0/15", "benchmarking"),
        ("198.51.100.0/24", "documentation"),
        ("203.0.113.0/24", "documentation"),
        ("240.0.0.0/4", "reserved"),
        ("255.255.255.255/32", "broadcast"),
    )
)
_V6_SPECIAL: tuple[tuple[ipaddress.IPv6Network, str], ...] = tuple(
    (ipaddress.IPv6Network(net), label)
    for net, label in (
        ("fc00::/7", "unique-local"),
        ("fec0::/10", "site-local"),
        ("64:ff9b:1::/48", "local-use NAT64"),
        ("100::/64", "discard-only"),
        ("2001::/23", "IETF protocol assignment"),
        ("2001:db8::/32", "documentation"),
    )
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def address_block_reason(ip: IPAddress) -> str | None:
    """Why `ip` must not be called by default (e.g. "loopback"), or None for a public address.

    IPv6 forms that embed an IPv4 address (mapped ::ffff:a.b.c.d, NAT64 64:ff9b::/96, 6to4
    2002::/16) are judged by that IPv4 address, since that is where the packets end up. The
    explicit tables make the answer independent of the Python patch release, whose
    `ipaddress` flags have changed over time.
    """
    if isinstance(ip, ipaddress.IPv6Address):
        embedded, how = _embedded_ipv4(ip)
        if embedded is not None:
            reason = address_block_reason(embedded)
            return f"{reason} ({how} IPv4)" if reason else None
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    table = _V4_SPECIAL if isinstance(ip, ipaddress.IPv4Address) else _V6_SPECIAL
    for network, label in table:
        if ip in network:
            return label
    if ip.is_private:
        return "private"
    if ip.is_reserved:
        return "reserved"
    if not ip.is_global:
        return "not globally routable"
    return None


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address | None, str]:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped, "mapped"
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF), "NAT64"
    if ip.sixtofour is not None:
        return ip.sixtofour, "6to4"
    return None, ""


def _literal_address(host: str) -> IPAddress | None:
    """The address a host string denotes by itself, without DNS.

    Besides dotted quads and IPv6, this recognises the legacy forms that the C resolver also
    accepts and maps to an address ("127.1", "0x7f.1", "2130706433"), so they cannot pass as
    host names when resolution is skipped.
    """
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if host and all(c in "0123456789abcdefxABCDEFX." for c in host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


# -- resolution cache -----------------------------------------------------------------------


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
    literal = _literal_address(host)
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
        _check_address(ip, policy, f"{host!r} ({ip})" if named else str(ip))
    return addresses


def _check_address(ip: IPAddress, policy: WebhookPolicy, described: str) -> None:
    reason = address_block_reason(ip)
    if reason is not None and not policy.allows_address(ip):
        raise errors.InvalidCallbackError(
            f"webhook URL host {described} is not a public address ({reason}); batchrelay "
            "does not call internal networks unless BATCHRELAY_WEBHOOK_ALLOW_HOSTS names the host "
            "or BATCHRELAY_WEBHOOK_ALLOW_PRIVATE is true"
        )


def check_webhook_port(port: int | None) -> None:
    """Refuse a port no TCP connection can use: the socket layer would wrap 120539 to 55003,
    reaching a port the URL check never saw. None is the scheme's default port."""
    if port is not None and not 1 <= port <= MAX_PORT:
        raise errors.InvalidCallbackError(f"webhook URL port {port} is outside 1-{MAX_PORT}")


# -- checks ---------------------------------------------------------------------------------


def check_webhook_url(
    url: str, policy: WebhookPolicy, *, resolve: bool = True, resolve_fresh: bool = False
) -> None:
    """Raise InvalidCallbackError unless batchrelay may POST to `url` under `policy`.

    `resolve=False` checks only what the URL says by itself (literal addresses included);
    `resolve_fresh=True` bypasses the DNS cache, for the re-check just before delivery.
    Messages name the host but never echo the whole URL, whose query may carry a token.
    """
    if not isinstance(url, str):
        raise errors.InvalidCallbackError(f"webhook URL must be a string, not {type(url).__name__}")
    if len(url) > MAX_URL_LENGTH:
        raise errors.InvalidCallbackError(
            f"webhook URL is {len(url)} characters long; the limit is {MAX_URL_LENGTH}"
        )
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        raise errors.InvalidCallbackError("webhook URL contains whitespace or control characters")
    try:
        parsed = httpx.URL(url)
        host = parsed.raw_host.decode("ascii")
        port = parsed.port
    except (httpx.InvalidURL, ValueError) as exc:
        raise errors.InvalidCallbackError(f"webhook URL is not a valid URL ({exc})") from None
    scheme = parsed.scheme.lower()
    if scheme not in ("http", "https"):
        what = f"scheme {scheme!r} is not allowed" if scheme else "has no scheme"
        raise errors.InvalidCallbackError(f"webhook URL {what}; use http or https")
    if policy.require_https and scheme != "https":
        raise errors.InvalidCallbackError(
            "webhook URL must use https (WebhookPolicy.require_https)"
        )
    authority = re.split(r"[/?#]", url.split("//", 1)[-1], maxsplit=1)[0]
    if parsed.userinfo or "@" in authority:
        raise errors.InvalidCallbackError(
            "webhook URL must not contain credentials (user:password@); authenticate receivers "
            "with the webhook signature instead"
        )
    if not host:
        raise errors.InvalidCallbackError("webhook URL has no host")
    check_webhook_port(port)
    if resolve:
        resolve_webhook_host(host, policy, fresh=resolve_fresh)
        return
    if policy.allows_name(host):
        return
    literal = _literal_address(host)
    if literal is not None:
        _check_address(literal, policy, str(literal))


def _check_celery_task(cb: CeleryTask) -> None:
    name = cb.name
    if not isinstance(name, str) or not name:
        raise errors.InvalidCallbackError("CeleryTask.name must be a non-empty string")
    if len(name) > _MAX_NAME or not _TASK_NAME.match(name):
        raise errors.InvalidCallbackError(
            f"CeleryTask.name {name[:80]!r} is not a task name; use the registered dotted name, "
            "e.g. 'myapp.tasks.on_result'"
        )
    queue = cb.queue
    if queue is None:
        return
    if not isinstance(queue, str) or not queue:
        raise errors.InvalidCallbackError("CeleryTask.queue must be a non-empty string or None")
    if len(queue) > _MAX_NAME or not _QUEUE_NAME.match(queue):
        raise errors.InvalidCallbackError(
            f"CeleryTask.queue {queue[:80]!r} is not a queue name (letters, digits, _ . : -)"
        )


def validate_callback(
    cb: object, policy: WebhookPolicy, *, resolve: bool = True
) -> Webhook | CeleryTask | None:
    """Check a callback given to submit(); return it unchanged, or raise InvalidCallbackError."""
    if cb is None:
        return None
    if isinstance(cb, Webhook):
        check_webhook_url(cb.url, policy, resolve=resolve)
        return cb
    if isinstance(cb, CeleryTask):
        _check_celery_task(cb)
        return cb
    hint = "; wrap a URL as Webhook(url)" if isinstance(cb, str) else ""
    raise errors.InvalidCallbackError(
        f"callback must be Webhook, CeleryTask or None, not {type(cb).__name__}{hint}"
    )
