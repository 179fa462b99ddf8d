"""Callback kinds, their records, and the SSRF check on webhook URLs.

Only DNS of "localhost" and of names under the reserved `.invalid` TLD is looked up; "allowed"
public cases use literal addresses, which resolve without network I/O.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator

import pytest

from batchrelay.producer import callbacks
from batchrelay.producer.callbacks import (
    CeleryTask,
    Webhook,
    WebhookPolicy,
    address_block_reason,
    callback_from_record,
    check_webhook_url,
    resolution,
    validate_callback,
)
from batchrelay.producer.errors import ConfigurationError, InvalidCallbackError

STRICT = WebhookPolicy()


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    callbacks.clear_resolution_cache()
    yield
    callbacks.clear_resolution_cache()


@pytest.fixture
def lookups(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Counts real getaddrinfo calls per host (a spy: every call still reaches the resolver)."""
    calls: list[str] = []
    real = socket.getaddrinfo

    def spy(host, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(host)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", spy)
    return calls


REJECTED = [
    ("ftp://files.example.com/x", STRICT, "scheme 'ftp' is not allowed"),
    ("javascript:alert(1)", STRICT, "scheme 'javascript' is not allowed"),
    ("example.com/hook", STRICT, "has no scheme"),
    ("http://user:pass@93.184.216.34/hook", STRICT, "credentials"),
    ("http://@93.184.216.34/hook", STRICT, "credentials"),
    ("http://evil.example\\@127.0.0.1/", STRICT, "credentials"),
    ("http://", STRICT, "has no host"),
    ("http:///path", STRICT, "has no host"),
    ("http://93.184.216.34:0/", STRICT, "port 0 is outside 1-65535"),
    # A port past 65535 would wrap at connect (120539 reaches 55003).
    ("http://93.184.216.34:65536/", STRICT, "port 65536 is outside 1-65535"),
    ("http://93.184.216.34:120539/", STRICT, "port 120539 is outside 1-65535"),
    ("http://93.184.216.34/a b", STRICT, "whitespace or control"),
    ("http://93.184.216.34/\r\nX-Injected: 1", STRICT, "whitespace or control"),
    ("http://93.184.216.34/" + "a" * 2048, STRICT, "limit is 2048"),
    ("http://93.184.216.34/hook", WebhookPolicy(require_https=True), "must use https"),
    ("http://127.0.0.1:8000/hook", STRICT, "(loopback)"),
    ("http://127.8.9.10/", STRICT, "(loopback)"),
    ("http://[::1]/hook", STRICT, "(loopback)"),
    ("http://10.1.2.3/", STRICT, "(private)"),
    ("http://172.16.0.1/", STRICT, "(private)"),
    ("http://172.31.255.254/", STRICT, "(private)"),
    ("http://192.168.1.1/", STRICT, "(private)"),
    ("http://169.254.169.254/latest/meta-data/", STRICT, "(link-local)"),
    ("http://[fc00::1]/", STRICT, "(unique-local)"),
    ("http://[fd00::1]/", STRICT, "(unique-local)"),
    ("http://[fe80::1]/", STRICT, "(link-local)"),
    ("http://[::ffff:127.0.0.1]/", STRICT, "(loopback (mapped IPv4))"),
    ("http://[::ffff:169.254.169.254]/", STRICT, "(link-local (mapped IPv4))"),
    ("http://[64:ff9b::7f00:1]/", STRICT, "(loopback (NAT64 IPv4))"),
    ("http://[2002:a00:1::1]/", STRICT, "(private (6to4 IPv4))"),
    ("http://0.0.0.0:8000/", STRICT, "(unspecified)"),
    ("http://[::]/", STRICT, "(unspecified)"),
    ("http://224.0.0.1/", STRICT, "(multicast)"),
    ("http://[ff02::1]/", STRICT, "(multicast)"),
    ("http://100.64.0.1/", STRICT, "(shared (carrier-grade NAT))"),
    ("http://240.0.0.1/", STRICT, "(reserved)"),
    ("http://2130706433/", STRICT, "127.0.0.1 is not a public address (loopback)"),
    ("http://0x7f.1/", STRICT, "(loopback)"),
    ("http://localhost:8000/hook", STRICT, "'localhost' (127.0.0.1) is not a public address"),
    ("http://localhost./hook", STRICT, "'localhost.'"),  # loopback, or unresolvable as FQDN
    ("http://no-such-receiver.invalid/hook", STRICT, "does not resolve"),
    # Listing one name or network does not open others.
    ("http://127.0.0.1/", WebhookPolicy(allow_hosts=("localhost",)), "(loopback)"),
    ("http://10.1.2.3/", WebhookPolicy(allow_hosts=("192.168.0.0/16",)), "(private)"),
    # Allowed names still have to resolve.
    ("http://gone.invalid/", WebhookPolicy(allow_hosts=("gone.invalid",)), "does not resolve"),
    ("http://gone.invalid/", WebhookPolicy(allow_private=True), "does not resolve"),
]


@pytest.mark.parametrize(("url", "policy", "message"), REJECTED, ids=[r[0][:60] for r in REJECTED])
def test_check_webhook_url_rejects(url: str, policy: WebhookPolicy, message: str) -> None:
    with pytest.raises(InvalidCallbackError) as info:
        check_webhook_url(url, policy)
    assert message in str(info.value)


def test_private_address_message_names_the_settings() -> None:
    with pytest.raises(InvalidCallbackError) as info:
        check_webhook_url("http://10.1.2.3/hook", STRICT)
    assert "BATCHRELAY_WEBHOOK_ALLOW_HOSTS" in str(info.value)
    assert "BATCHRELAY_WEBHOOK_ALLOW_PRIVATE" in str(info.value)
    assert "WebhookPolicy" not in str(info.value)


def test_rejection_never_echoes_the_query() -> None:
    with pytest.raises(InvalidCallbackError) as info:
        check_webhook_url("http://127.0.0.1/hook?token=s3cr3t", STRICT)
    assert "s3cr3t" not in str(info.value)


ACCEPTED = [
    ("https://93.184.216.34/hook?x=1", STRICT),
    ("http://93.184.216.34:8080/hook", STRICT),
    ("http://93.184.216.34:1/hook", STRICT),
    ("http://93.184.216.34:65535/hook", STRICT),
    ("https://[2606:2800:220:1:248:1893:25c8:1946]/hook", STRICT),
    ("https://[64:ff9b::5db8:d822]/hook", STRICT),  # NAT64 of a public address
    ("https://93.184.216.34/hook", WebhookPolicy(require_https=True)),
    ("http://localhost:8000/hook", WebhookPolicy(allow_hosts=("localhost",))),
    ("http://LocalHost:8000/hook", WebhookPolicy(allow_hosts=("localhost",))),
    ("http://10.1.2.3/", WebhookPolicy(allow_hosts=("10.1.2.3",))),
    ("http://10.1.2.3/", WebhookPolicy(allow_hosts=("10.0.0.0/8",))),
    ("http://[::ffff:10.1.2.3]/", WebhookPolicy(allow_hosts=("10.0.0.0/8",))),
    ("http://[fd00::5]/", WebhookPolicy(allow_hosts=("fd00::/8",))),
    ("http://[::1]:9000/", WebhookPolicy(allow_hosts=("[::1]",))),
    ("http://127.0.0.1:9000/", WebhookPolicy(allow_private=True)),
    ("http://169.254.169.254/", WebhookPolicy(allow_private=True)),
    ("http://localhost:9000/", WebhookPolicy(allow_private=True)),
]


@pytest.mark.parametrize(("url", "policy"), ACCEPTED, ids=[a[0][:60] for a in ACCEPTED])
def test_check_webhook_url_accepts(url: str, policy: WebhookPolicy) -> None:
    check_webhook_url(url, policy)


def test_without_resolution_only_literals_are_judged(lookups: list[str]) -> None:
    check_webhook_url("http://localhost:8000/", STRICT, resolve=False)
    check_webhook_url("http://no-such-receiver.invalid/", STRICT, resolve=False)
    with pytest.raises(InvalidCallbackError, match="loopback"):
        check_webhook_url("http://127.1/", STRICT, resolve=False)
    assert lookups == []


@pytest.mark.parametrize(
    "address",
    ["93.184.216.34", "8.8.8.8", "2606:2800:220:1:248:1893:25c8:1946", "::ffff:93.184.216.34"],
)
def test_public_addresses_have_no_block_reason(address: str) -> None:
    assert address_block_reason(ipaddress.ip_address(address)) is None


def test_a_name_is_blocked_if_any_of_its_addresses_is(monkeypatch: pytest.MonkeyPatch) -> None:
    def two_answers(host, *args, **kwargs):  # type: ignore[no-untyped-def]
        assert host == "mixed.invalid"
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", 0)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.7", 0)),
        ]

    monkeypatch.setattr(socket, "getaddrinfo", two_answers)
    with pytest.raises(InvalidCallbackError, match=r"10\.0\.0\.7.*\(private\)"):
        check_webhook_url("https://mixed.invalid/hook", STRICT)


# -- resolution cache --------------------------------------------------------------------------


def test_ten_thousand_submits_to_one_url_cost_one_lookup(lookups: list[str]) -> None:
    policy = WebhookPolicy(allow_hosts=("127.0.0.0/8", "::1"))
    for _ in range(10_000):
        check_webhook_url("http://localhost:8000/hook", policy)
    assert lookups == ["localhost"]


def test_fresh_resolution_bypasses_and_refreshes_the_cache(lookups: list[str]) -> None:
    policy = WebhookPolicy(allow_private=True)
    check_webhook_url("http://localhost/", policy)
    check_webhook_url("http://localhost/", policy, resolve_fresh=True)
    check_webhook_url("http://localhost/", policy)
    assert lookups == ["localhost", "localhost"]


def test_failed_lookups_are_cached_briefly(lookups: list[str]) -> None:
    for _ in range(3):
        with pytest.raises(InvalidCallbackError, match="does not resolve"):
            check_webhook_url("http://typo.invalid/", STRICT)
    assert lookups == ["typo.invalid"]


def test_cache_entries_expire(monkeypatch: pytest.MonkeyPatch, lookups: list[str]) -> None:
    now = [1000.0]
    cache = resolution._ResolutionCache(ttl=60.0, negative_ttl=5.0, clock=lambda: now[0])
    monkeypatch.setattr(resolution, "_cache", cache)
    policy = WebhookPolicy(allow_private=True)
    check_webhook_url("http://localhost/", policy)
    now[0] += 59.0
    check_webhook_url("http://localhost/", policy)
    assert lookups == ["localhost"]
    now[0] += 2.0
    check_webhook_url("http://localhost/", policy)
    assert lookups == ["localhost", "localhost"]


def test_cache_stays_bounded() -> None:
    cache = resolution._ResolutionCache(max_entries=10)
    for i in range(100):
        cache.put(f"h{i}.example", (ipaddress.ip_address("93.184.216.34"),))
    assert len(cache._entries) <= 10
    assert cache.get("h99.example") is not None


# -- policy ------------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", ["", "http://x.example", "a b", "host:80", "10.0.0.0/33"])
def test_policy_rejects_bad_allow_hosts(entry: str) -> None:
    with pytest.raises(ConfigurationError, match="allow_hosts"):
        WebhookPolicy(allow_hosts=(entry,))


def test_policy_rejects_non_string_entries() -> None:
    with pytest.raises(ConfigurationError, match="must be strings, got int"):
        WebhookPolicy(allow_hosts=(10,))  # type: ignore[arg-type]


def test_policy_rejects_a_bare_string_and_accepts_a_list() -> None:
    with pytest.raises(ConfigurationError, match="not a single string"):
        WebhookPolicy(allow_hosts="10.0.0.0/8")  # type: ignore[arg-type]
    policy = WebhookPolicy(allow_hosts=["receiver.internal", "10.0.0.0/8"])  # type: ignore[arg-type]
    assert policy.allow_hosts == ("receiver.internal", "10.0.0.0/8")
    assert policy == WebhookPolicy(allow_hosts=("receiver.internal", "10.0.0.0/8"))
    assert hash(policy) == hash(WebhookPolicy(allow_hosts=("receiver.internal", "10.0.0.0/8")))


# -- callback kinds and records ----------------------------------------------------------------


@pytest.mark.parametrize(
    "cb",
    [
        Webhook("https://93.184.216.34/hook?app=1"),
        CeleryTask("myapp.tasks.on_result"),
        CeleryTask("myapp.tasks.on_result", queue="results"),
    ],
)
def test_records_round_trip(cb: Webhook | CeleryTask) -> None:
    record = cb.to_record()
    assert record["kind"] in ("webhook", "celery")
    assert callback_from_record(record) == cb


def test_record_forms() -> None:
    assert Webhook("https://x.example/h").to_record() == {
        "kind": "webhook",
        "url": "https://x.example/h",
    }
    assert CeleryTask("a.b", "q").to_record() == {"kind": "celery", "name": "a.b", "queue": "q"}
    assert callback_from_record(None) is None
    assert callback_from_record({}) is None
    with pytest.raises(InvalidCallbackError, match="unknown callback record kind"):
        callback_from_record({"kind": "carrier-pigeon"})
    with pytest.raises(InvalidCallbackError, match="lacks 'url'"):
        callback_from_record({"kind": "webhook"})


def test_validate_callback_accepts_good_callbacks() -> None:
    assert validate_callback(None, STRICT) is None
    hook = Webhook("https://93.184.216.34/hook")
    assert validate_callback(hook, STRICT) is hook
    task = CeleryTask("myapp.tasks.on_result", queue="results.high")
    assert validate_callback(task, STRICT) is task
    assert validate_callback(CeleryTask("on_result"), STRICT) is not None


@pytest.mark.parametrize(
    ("cb", "message"),
    [
        (Webhook("http://127.0.0.1/hook"), "loopback"),
        (Webhook(42), "must be a string"),  # type: ignore[arg-type]
        (CeleryTask(""), "non-empty"),
        (CeleryTask("myapp tasks"), "is not a task name"),
        (CeleryTask("myapp..tasks"), "is not a task name"),
        (CeleryTask(".hidden"), "is not a task name"),
        (CeleryTask("a." * 200 + "b"), "is not a task name"),
        (CeleryTask("myapp.tasks.x", queue=""), "queue must be a non-empty"),
        (CeleryTask("myapp.tasks.x", queue="bad queue"), "is not a queue name"),
        (CeleryTask(None), "non-empty string"),  # type: ignore[arg-type]
        ("https://93.184.216.34/hook", "not str; wrap a URL as Webhook(url)"),
        ({"kind": "webhook"}, "not dict"),
        (print, "not builtin_function_or_method"),
    ],
)
def test_validate_callback_rejects(cb: object, message: str) -> None:
    with pytest.raises(InvalidCallbackError) as info:
        validate_callback(cb, STRICT)
    assert message in str(info.value)
