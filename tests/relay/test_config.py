"""Settings from the environment, `.env` and a TOML file; bad values name the setting."""

from __future__ import annotations

import pytest

from batchrelay.config import ConfigurationError, load_settings

PROVIDER = '[{"name": "oa", "base_url": "https://api.openai.com/v1", "api_key": "sk-secret-1"}]'


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    import os

    for name in list(os.environ):
        if name.startswith("BATCHRELAY_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_environment(monkeypatch):
    monkeypatch.setenv("BATCHRELAY_REDIS_URL", "rediss://:pw@redis.example:6380/2")
    monkeypatch.setenv("BATCHRELAY_PROVIDERS", PROVIDER)
    monkeypatch.setenv("BATCHRELAY_FLUSH_MAX_WAIT_S", "5")
    s = load_settings()
    assert s.redis_url.get_secret_value() == "rediss://:pw@redis.example:6380/2"
    assert s.flush_max_wait_s == 5
    assert s.providers[0].api_key.get_secret_value() == "sk-secret-1"
    assert "sk-secret-1" not in repr(s) and "sk-secret-1" not in str(s.model_dump())


def test_dotenv(tmp_path):
    (tmp_path / ".env").write_text(
        f"BATCHRELAY_PROVIDERS='{PROVIDER}'\nBATCHRELAY_MAX_ATTEMPTS=3\n"
    )
    s = load_settings()
    assert s.max_attempts == 3 and s.providers[0].name == "oa"


def test_toml_file(monkeypatch, tmp_path):
    path = tmp_path / "batchrelay.toml"
    path.write_text(
        """
redis_url = "redis://127.0.0.1:6390/0"
poll_interval_s = 10

[[providers]]
name = "litellm"
base_url = "http://proxy:4000/v1"
api_key = "sk-proxy"
models = ["gpt-4o-batch"]
file_expires_after_s = 172800
extra_upload_fields = { target_model_names = "{model}" }
"""
    )
    monkeypatch.setenv("BATCHRELAY_CONFIG_FILE", str(path))
    monkeypatch.setenv("BATCHRELAY_POLL_INTERVAL_S", "7")  # the environment wins
    s = load_settings()
    assert s.poll_interval_s == 7 and s.redis_url.get_secret_value().endswith(":6390/0")
    p = s.profile("litellm")
    assert p.extra_upload_fields == {"target_model_names": "{model}"}
    assert p.file_expires_after_s == 172800


@pytest.mark.parametrize(
    ("env", "named", "problem"),
    [
        ({"BATCHRELAY_REDIS_URL": "http://x"}, "BATCHRELAY_REDIS_URL", "redis://"),
        ({"BATCHRELAY_PROVIDERS": "not json"}, "BATCHRELAY_PROVIDERS", "JSON"),
        (
            {"BATCHRELAY_PROVIDERS": PROVIDER.replace("https://", "ftp://")},
            "BATCHRELAY_PROVIDERS (providers.0.base_url)",
            "http(s) URL",
        ),
        (
            {
                "BATCHRELAY_PROVIDERS": PROVIDER.replace(
                    '"oa"', '"oa", "file_expires_after_s": 3600'
                )
            },
            "providers.0",
            "must exceed the completion window",
        ),
        (
            {"BATCHRELAY_PROVIDERS": PROVIDER.replace('"oa"', '"oa", "endpoints": ["/v1/x"]')},
            "providers.0.endpoints",
            "unsupported endpoint",
        ),
        ({"BATCHRELAY_WEBHOOK_SECRETS": '["nope"]'}, "BATCHRELAY_WEBHOOK_SECRETS", "whsec_"),
        ({"BATCHRELAY_RESULT_RETENTION_S": "60"}, "settings", "result_retention_s"),
        ({"BATCHRELAY_TASK_TIME_LIMIT_S": "9999"}, "settings", "visibility_timeout_s"),
        ({"BATCHRELAY_CONFIG_FILE": "/nonexistent.toml"}, "BATCHRELAY_CONFIG_FILE", "exist"),
    ],
)
def test_bad_settings_name_the_setting(monkeypatch, env, named, problem):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as info:
        load_settings()
    assert named in str(info.value) and problem in str(info.value)
    assert "sk-secret-1" not in str(info.value)


def test_processes_that_move_batches_need_a_provider():
    with pytest.raises(ConfigurationError, match="BATCHRELAY_PROVIDERS: no provider profile"):
        load_settings().require_providers()


@pytest.mark.parametrize(
    ("name", "value", "shown"),
    [
        (
            "BATCHRELAY_PROVIDERS",
            PROVIDER.replace("https://api.openai.com", "ftp://u:secret@x"),
            "'ftp://u:***@x/v1'",
        ),
        (
            "BATCHRELAY_PROVIDERS",
            PROVIDER.replace("https://api.openai.com", "ftp://secret@x"),
            "'ftp://***@x/v1'",
        ),
        ("BATCHRELAY_REDIS_URL", "http://:secret@redis.example/0", "BATCHRELAY_REDIS_URL"),
    ],
)
def test_config_errors_never_echo_credentials(monkeypatch, name, value, shown):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as info:
        load_settings()
    assert shown in str(info.value) and "secret" not in str(info.value)


def test_a_config_file_path_with_credentials_is_redacted(monkeypatch):
    monkeypatch.setenv("BATCHRELAY_CONFIG_FILE", "s3://key:secret@bucket/batchrelay.toml")
    with pytest.raises(ConfigurationError, match=r"s3://key:\*\*\*@bucket") as info:
        load_settings()
    assert "secret" not in str(info.value)


@pytest.mark.parametrize(
    ("where", "said"),
    [("env", "in the environment"), ("dotenv", "in .env")],
)
def test_unparsable_json_names_where_it_was_set_not_pydantic_internals(
    monkeypatch, tmp_path, where, said
):
    if where == "env":
        monkeypatch.setenv("BATCHRELAY_PROVIDERS", "not json")
    else:
        (tmp_path / ".env").write_text("BATCHRELAY_PROVIDERS='[{\"a\":'\n")
    with pytest.raises(ConfigurationError) as info:
        load_settings()
    message = str(info.value)
    assert f"BATCHRELAY_PROVIDERS {said}" in message, message
    assert "SettingsSource" not in message and "Expecting value" in message, message
