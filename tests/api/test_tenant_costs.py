"""The Python producer's `tenant=` and quotas, and `batchrelay costs`, on the live stack."""

from __future__ import annotations

import subprocess
import sys
import time

import orjson
import pytest
import redis

from batchrelay import BatchRelay, QuotaExceededError
from batchrelay.config.tenants import Tenant, Tenants, key_digest
from tests._stack import ROOT
from tests.api.conftest import Api
from tests.relay.harness import CHAT, chat


def costs_cli(api: Api, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "batchrelay", "costs", *args],
        cwd=ROOT,
        env=api.env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_python_tenant_is_recorded_and_its_costs_counted(api: Api):
    with BatchRelay(api.settings) as producer:
        ids = producer.submit_many([{"endpoint": CHAT, "body": chat(f"py {i}")} for i in range(2)],
                                   tenant="py")  # fmt: skip
        results = [producer.result(rid, timeout=30) for rid in ids]
    assert {r["tenant"] for r in results} == {"py"}
    assert producer.status(ids[0]).tenant == "py"
    tokens = sum(r["usage"]["prompt_tokens"] for r in results)
    deadline = time.monotonic() + 10
    while not (rows := orjson.loads(costs_cli(api, "--tenant", "py", "--json").stdout)):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    (row,) = rows
    assert row["tenant"] == "py" and row["model"] == "gpt-4o-mini" and row["requests"] == 2
    assert row["input_tokens"] == tokens and row["priced"] and row["batch_usd"] > 0
    table = costs_cli(api, "--tenant", "py")
    assert table.returncode == 0 and "py" in table.stdout and "gpt-4o-mini" in table.stdout
    assert orjson.loads(costs_cli(api, "--since", "2999-01-01", "--json").stdout) == []
    bad = costs_cli(api, "--since", "soon")
    assert bad.returncode == 2 and "'soon' is not a date" in bad.stderr


def test_python_quota_refuses_and_stores_nothing(api: Api):
    tenants = Tenants.of([Tenant(name="pyq", key_sha256=[key_digest("k")], max_pending=1)])
    client = redis.Redis.from_url(api.settings.redis_url.get_secret_value())
    with BatchRelay(api.settings, tenants=tenants) as producer:
        producer.submit(CHAT, chat("one"), tenant="pyq")
        before = client.dbsize()
        with pytest.raises(QuotaExceededError) as refused:
            producer.submit(CHAT, chat("two"), tenant="pyq", idempotency_key="pyq-2")
        assert refused.value.quota == "max_pending"
        assert "nothing was stored" in str(refused.value)
        assert client.get(producer._core.keys.idem("pyq\x00pyq-2")) is None
    assert client.dbsize() <= before  # no record, no pending entry, no idempotency key
    client.close()


def test_a_bad_tenant_name_is_refused(api: Api):
    from batchrelay import InvalidRequestError

    with BatchRelay(api.settings) as producer, pytest.raises(InvalidRequestError, match="tenant"):
        producer.submit(CHAT, chat("x"), tenant="{slot}")


def test_serve_without_tenants_exits_78_naming_the_setting(api: Api):
    env = {k: v for k, v in api.env.items() if k != "BATCHRELAY_TENANTS"}
    out = subprocess.run(
        [sys.executable, "-m", "batchrelay", "serve", "--port", "1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 78
    assert "BATCHRELAY_TENANTS is not set" in out.stderr
