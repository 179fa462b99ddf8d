"""The HTTP client webhooks are sent with, and its SSRF guard; one per worker process.

An aiohttp session (keep-alive connections that outlive a chunk) bound to one `WebhookPolicy`
and one event loop. The guard has two layers:

- Before each attempt `check` re-checks the URL: its own parts (scheme, port, credentials,
  a literal address; cached per URL, the policy being fixed) and the host's DNS answer, every
  address against the policy. The answer is fresh, looked up at most `FRESH_DNS_TTL_S` (1 s)
  earlier and shared by the attempts of that second to the same host, so a wave of 1,000
  deliveries to one receiver costs one lookup, not 1,000.
- At connect time `_CheckedResolver` answers aiohttp with exactly the addresses that check
  accepted, so a DNS answer that flips between the check and the connect (DNS rebinding)
  cannot reach an internal address. aiohttp does not call a resolver for an IP-literal host;
  that address is what the pre-attempt check judged, and yarl (aiohttp's parser) must read
  the same host and port as httpx (the producer's parser) or the attempt is blocked.

Redirects are never followed, the environment's proxy and certificate variables are ignored
(`trust_env=False`: a proxy would defeat the connect-time check), answers are not
decompressed, and no cookie is kept.
"""

from __future__ import annotations

import asyncio
import socket
import time

import aiohttp
import httpx
import yarl
from aiohttp.abc import AbstractResolver, ResolveResult

from batchrelay.producer import errors
from batchrelay.producer.callbacks import WebhookPolicy, check_webhook_url, resolve_webhook_host
from batchrelay.producer.callbacks.addresses import literal_address

FRESH_DNS_TTL_S = 1.0
KEEPALIVE_S = 30.0
_MAX_CACHED_URLS = 4096


class WebhookClient:
    """Make it inside a running loop (`await WebhookClient.open(...)`), use it only there."""

    def __init__(self, policy: WebhookPolicy, session: aiohttp.ClientSession):
        self.policy = policy
        self.session = session
        self._targets: dict[str, tuple[yarl.URL, bool] | str] = {}
        self._answers: dict[str, tuple[float, asyncio.Future[None]]] = {}

    @classmethod
    async def open(cls, policy: WebhookPolicy, *, max_connections: int = 100) -> WebhookClient:
        connector = aiohttp.TCPConnector(
            limit=max_connections,
            use_dns_cache=False,  # the resolver below answers from the checked addresses
            resolver=_CheckedResolver(policy),
            keepalive_timeout=KEEPALIVE_S,
        )
        session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            trust_env=False,
            # send_webhook bounds the whole attempt itself (asyncio.timeout).
            timeout=aiohttp.ClientTimeout(total=None),
        )
        return cls(policy, session)

    async def close(self) -> None:
        await self.session.close()

    async def check(self, url: str) -> yarl.URL:
        """The URL to send to, or InvalidCallbackError saying why it may not be called now."""
        target = self._targets.get(url)
        if target is None:
            target = _target(url, self.policy)
            if len(self._targets) >= _MAX_CACHED_URLS:
                self._targets.clear()
            self._targets[url] = target
        if isinstance(target, str):
            raise errors.InvalidCallbackError(target)
        parsed, named = target
        if named:
            await self._fresh_answer(parsed.raw_host or "")
        return parsed

    async def _fresh_answer(self, host: str) -> None:
        """Look `host` up again (bypassing the shared DNS cache) unless that was done less
        than FRESH_DNS_TTL_S ago; raise if any address it has is not allowed."""
        key = host.lower()
        now = time.monotonic()
        entry = self._answers.get(key)
        if entry is None or entry[0] <= now:
            loop = asyncio.get_running_loop()
            lookup = loop.run_in_executor(None, _resolve_fresh, host, self.policy)
            entry = (now + FRESH_DNS_TTL_S, asyncio.ensure_future(lookup))
            if len(self._answers) >= _MAX_CACHED_URLS:
                self._answers = {k: v for k, v in self._answers.items() if v[0] > now}
            self._answers[key] = entry
        await asyncio.shield(entry[1])


def _resolve_fresh(host: str, policy: WebhookPolicy) -> None:
    resolve_webhook_host(host, policy, fresh=True)


def _target(url: str, policy: WebhookPolicy) -> tuple[yarl.URL, bool] | str:
    """What the URL says by itself, checked once: the yarl URL to send to and whether its host
    is a name (to look up before each attempt), or why it may not be called."""
    try:
        check_webhook_url(url, policy, resolve=False)
    except errors.InvalidCallbackError as exc:
        return str(exc)
    try:
        target = yarl.URL(url, encoded=False)
    except ValueError:
        return "webhook URL is not a valid URL"
    expected = httpx.URL(url)
    if (target.raw_host or "").lower() != expected.raw_host.decode("ascii").lower() or (
        target.port != (expected.port or (443 if expected.scheme == "https" else 80))
    ):
        return "webhook URL is ambiguous (its host or port parses differently)"
    return target, literal_address(target.raw_host or "") is None


class _CheckedResolver(AbstractResolver):
    """aiohttp's resolver: the host's addresses as the policy check accepted them (the DNS
    cache the pre-attempt check just refreshed), or a `blocked:` error."""

    def __init__(self, policy: WebhookPolicy):
        self._policy = policy

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        loop = asyncio.get_running_loop()
        try:
            addresses = await loop.run_in_executor(None, resolve_webhook_host, host, self._policy)
        except errors.InvalidCallbackError as exc:
            raise OSError(f"blocked: {exc}") from None
        return [
            {
                "hostname": host,
                "host": str(ip),
                "port": port,
                "family": socket.AF_INET6 if ip.version == 6 else socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
            for ip in addresses
        ]

    async def close(self) -> None:
        return None
