"""docker-compose.yml, Dockerfile and .env.example: their promises, and every service's
command run for real (as a local process with the compose environment, no Docker)."""

from __future__ import annotations

import os
import re
import shlex

import httpx
import pytest
from pydantic import SecretStr

from batchrelay import BatchRelay
from batchrelay.config import Settings
from batchrelay.config.settings import _check_webhook_secret
from batchrelay.emulator import EmulatorConfig
from tests.deploy._compose import (
    ENV_EXAMPLE,
    ROOT,
    ComposeRun,
    compose_variables,
    interpolate,
    load_compose,
    read_env_file,
    resolved_compose,
    service_command,
    service_env,
)
from tests.deploy.conftest import settings_for

SERVICES = {
    "redis",
    "worker",
    "beat",
    "flower",
    "emulator",
    "api",
    "metrics",
    "prometheus",
    "grafana",
}
APP_SERVICES = SERVICES - {"redis", "prometheus", "grafana"}
CHAT = "/v1/chat/completions"


def celery_conf():
    """The Celery configuration every compose service runs with (any valid settings)."""
    from batchrelay.worker.celery_app import create_app

    profile = {"name": "p", "base_url": "http://p/v1", "api_key": "k"}
    return create_app(Settings(providers=[profile])).conf


def seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    total = 0.0
    for amount, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration):
        total += float(amount) * units[unit]
    return total


def documented() -> dict[str, tuple[str, bool]]:
    """NAME -> (value, active) for every `NAME=value` line of .env.example, commented or not."""
    out: dict[str, tuple[str, bool]] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        m = re.match(r"^(# )?([A-Z][A-Z0-9_]*)=(.*)$", line)
        if m:
            value = m.group(3)
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            out[m.group(2)] = (value, m.group(1) is None)
    return out


# --- the files ------------------------------------------------------------------------------


def test_compose_services_and_their_promises():
    compose = resolved_compose()
    services = compose["services"]
    assert set(services) == SERVICES

    redis_cmd = service_command(services["redis"])
    assert services["redis"]["image"] == "redis:7"
    assert redis_cmd[0] == "redis-server"
    flags = " ".join(redis_cmd[1:])
    for flag in ("--appendonly yes", "--appendfsync everysec", "--maxmemory-policy noeviction"):
        assert flag in flags
    assert "redis-cli" in services["redis"]["healthcheck"]["test"]
    volume = services["redis"]["volumes"][0].split(":")
    assert volume[0] in compose["volumes"] and volume[1] == "/data"

    for name in APP_SERVICES:
        svc = services[name]
        assert svc["build"] == ".", name  # one Dockerfile for all
        assert svc["image"] == "batchrelay:local", name
        assert svc["env_file"] == ENV_EXAMPLE.name, name
        assert "container_name" not in svc, name
    for name in ("worker", "beat", "flower", "api", "metrics"):
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"

    worker = services["worker"]
    assert service_command(worker) == shlex.split("celery -A batchrelay.worker worker -l INFO")
    assert "ports" not in worker and "container_name" not in worker  # --scale worker=N
    # docker stop -> SIGTERM -> (remapped) Celery cold shutdown with its soft-shutdown window,
    # which must end before Docker's SIGKILL.
    assert worker["environment"]["REMAP_SIGTERM"] == "SIGQUIT"
    assert seconds(worker["stop_grace_period"]) >= celery_conf().worker_soft_shutdown_timeout + 15

    assert service_command(services["beat"])[:4] == ["celery", "-A", "batchrelay.worker", "beat"]
    assert "ports" not in services["beat"]  # --scale beat=2 for a standby
    assert service_command(services["flower"]) == shlex.split(
        "celery -A batchrelay.worker flower --port=5555"
    )
    assert service_command(services["emulator"]) == shlex.split(
        "batchrelay emulator --host 0.0.0.0 --port 8089"
    )
    assert service_command(services["api"]) == shlex.split(
        "batchrelay serve --host 0.0.0.0 --port 8080"
    )
    assert "/healthz" in services["api"]["healthcheck"]["test"][-1]
    assert service_command(services["metrics"]) == shlex.split(
        "batchrelay metrics --host 0.0.0.0 --port 9108"
    )
    for name, port in (("flower", 5555), ("emulator", 8089), ("api", 8080), ("metrics", 9108)):
        (published,) = services[name]["ports"]
        assert published.startswith("127.0.0.1:") and published.endswith(f":{port}"), published


def test_flower_is_always_behind_basic_auth():
    raw = load_compose()["services"]["flower"]["environment"]["FLOWER_BASIC_AUTH"]
    assert raw.startswith("${FLOWER_BASIC_AUTH:?"), raw  # compose refuses to run without it
    variables = {k: v for k, v in compose_variables().items() if k != "FLOWER_BASIC_AUTH"}
    with pytest.raises(ValueError, match="FLOWER_BASIC_AUTH"):
        interpolate(raw, variables)
    with pytest.raises(ValueError, match="FLOWER_BASIC_AUTH"):
        interpolate(raw, {**variables, "FLOWER_BASIC_AUTH": ""})
    env = service_env(resolved_compose()["services"]["flower"])
    user, _, password = env["FLOWER_BASIC_AUTH"].partition(":")
    assert user and password
    assert env["FLOWER_ENABLE_EVENTS"] == "true"


def test_beat_runs_redbeat_so_a_second_beat_is_a_standby():
    from celery.utils.imports import symbol_by_name
    from redbeat import RedBeatScheduler

    command = service_command(load_compose()["services"]["beat"])
    configured = celery_conf().beat_scheduler
    scheduler = command[command.index("-S") + 1] if "-S" in command else configured
    assert issubclass(symbol_by_name(scheduler), RedBeatScheduler), scheduler
    if configured != "celery.beat:PersistentScheduler":
        # The app picks its own RedBeat subclass; an explicit -S must not replace it.
        assert scheduler == configured, (scheduler, configured)


def test_dockerfile_is_slim_and_runs_as_a_user():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    # Not editable, with every service's extra (worker, emulator, flower).
    assert re.search(r'^RUN pip install "\.\[all\]"', text, re.M)
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0")
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".env", ".venv", ".git", "tests"):
        assert entry in ignored, entry


def test_env_example_documents_every_setting_with_its_default(monkeypatch, tmp_path):
    docs = documented()
    missing = [
        f"BATCHRELAY_{name.upper()}"
        for name in Settings.model_fields
        if f"BATCHRELAY_{name.upper()}" not in docs
    ]
    assert not missing, f".env.example does not document {missing}"
    assert "BATCHRELAY_CONFIG_FILE" in docs and "FLOWER_BASIC_AUTH" in docs

    monkeypatch.chdir(tmp_path)  # no stray .env
    for key in [k for k in os.environ if k.startswith("BATCHRELAY_")]:
        monkeypatch.delenv(key)
    for name, field in Settings.model_fields.items():
        var = f"BATCHRELAY_{name.upper()}"
        value, active = docs[var]
        if active:
            continue
        default = field.get_default(call_default_factory=True)
        if value == "":
            assert default is None, f"{var}: documented as unset, default is {default!r}"
            continue
        with monkeypatch.context() as mp:
            mp.setenv(var, value)
            assert getattr(Settings(), name) == default, f"{var}={value} is not the default"

    emulator_vars = [v for v in docs if v.startswith("BATCHRELAY_EMULATOR_")]
    assert len(emulator_vars) >= 5
    defaults = EmulatorConfig()
    for var in emulator_vars:
        value, active = docs[var]
        assert not active, f"{var}: the emulator's settings stay at their defaults"
        path = var.removeprefix("BATCHRELAY_EMULATOR_").lower().split("__")
        default = defaults
        for part in path:
            default = getattr(default, part)  # AttributeError: documents no such setting
        with monkeypatch.context() as mp:
            if value:
                mp.setenv(var, value)
            got = EmulatorConfig()
            for part in path:
                got = getattr(got, part)
            assert got == default, f"{var}={value} is not the default {default!r}"


def test_env_example_loads_and_points_at_the_emulator(monkeypatch, tmp_path):
    env = read_env_file(ENV_EXAMPLE)
    monkeypatch.chdir(tmp_path)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    (profile,) = settings.providers
    assert profile.base_url == "http://emulator:8089/v1"
    assert profile.api_key.get_secret_value() in EmulatorConfig().api_keys
    assert settings.redis_url.get_secret_value() == "redis://redis:6379/0"
    for secret in settings.webhook_secrets:
        _check_webhook_secret(SecretStr(secret.get_secret_value()))
    text = ENV_EXAMPLE.read_text()
    assert text.count("change me") >= 2  # the webhook secret and Flower's password


def test_every_compose_variable_is_documented():
    used = set(re.findall(r"\$\{(\w+)", (ROOT / "docker-compose.yml").read_text()))
    assert used, "no ${...} in docker-compose.yml?"
    missing = used - set(documented())
    assert not missing, f".env.example does not document {sorted(missing)}"


# --- the services, run --------------------------------------------------------------------


def test_redis_runs_with_the_compose_flags(compose_run: ComposeRun):
    client = compose_run.redis.client()
    try:
        assert compose_run.redis.port != 6379
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    finally:
        client.close()


def test_emulator_answers(compose_run: ComposeRun):
    settings = settings_for(compose_run)
    (profile,) = settings.providers
    assert profile.base_url == compose_run.url("emulator", "/v1")
    assert httpx.get(compose_run.url("emulator", "/_emulator/health"), timeout=10).is_success
    headers = {"Authorization": f"Bearer {profile.api_key.get_secret_value()}"}
    listed = httpx.get(f"{profile.base_url}/batches", headers=headers, timeout=10)
    assert listed.status_code == 200, listed.text
    assert httpx.get(f"{profile.base_url}/batches", timeout=10).status_code == 401


def test_worker_and_beat_relay_a_request(compose_run: ComposeRun, compose_producer: BatchRelay):
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello compose"}]}
    rid = compose_producer.submit(CHAT, body)
    result = compose_producer.result(rid, timeout=90)
    assert result["status"] == "succeeded", result
    content = result["response"]["body"]["choices"][0]["message"]["content"]
    assert content == "echo: hello compose"
    # Two beats ran (--scale beat=2): one holds the RedBeat lock, the other waits.
    holders = [n for n in ("beat", "beat-standby") if "beat: Acquired lock" in compose_run.log(n)]
    assert len(holders) == 1, compose_run.logs()


def test_flower_requires_auth(compose_run: ComposeRun):
    user, _, password = compose_run.env("flower")["FLOWER_BASIC_AUTH"].partition(":")
    for path in ("/", "/tasks", "/api/workers"):
        assert httpx.get(compose_run.url("flower", path), timeout=10).status_code == 401, path
        wrong = httpx.get(compose_run.url("flower", path), auth=(user, "wrong"), timeout=10)
        assert wrong.status_code == 401, path
    ok = httpx.get(compose_run.url("flower", "/"), auth=(user, password), timeout=10)
    assert ok.status_code == 200
    assert "Flower" in ok.text
