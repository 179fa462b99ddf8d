"""Which webhook destinations batchrelay will call (from BATCHRELAY_WEBHOOK_ALLOW_*)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import httpx

from batchrelay.producer import errors
from batchrelay.producer.callbacks.addresses import IPAddress, IPNetwork

if TYPE_CHECKING:
    from batchrelay.config import Settings


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

    @classmethod
    def from_settings(cls, settings: Settings) -> WebhookPolicy:
        """The policy BATCHRELAY_WEBHOOK_ALLOW_PRIVATE / _ALLOW_HOSTS configure; the same at
        submit and at delivery."""
        return cls(
            allow_private=settings.webhook_allow_private,
            allow_hosts=tuple(settings.webhook_allow_hosts),
        )

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
