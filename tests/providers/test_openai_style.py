"""OpenAI-style providers end to end: a reseller that needs `target_model_names` on uploads
and keeps files at most 48 h, and Azure OpenAI (`api-key`, `/openai/v1/...` or the legacy
`api-version` paths, deployment names as models, jobs that never expire, an error file
on every finished job)."""

from __future__ import annotations

import openai
import pytest

from batchrelay.config import ConfigurationError, load_settings
from batchrelay.emulator import start_emulator
from tests.providers.helpers import Scenario, chat_text
from tests.relay.harness import CHAT, chat, drive, fast_emulator_config

CAP_48H = 172_800
DEPLOYMENT = "chat-deploy-eu"


def test_reseller_with_target_model_names_and_a_48h_file_cap(relays, receiver):
    config = fast_emulator_config(
        required_upload_fields=["target_model_names"],
        max_file_expires_after_s=CAP_48H,
        models=["gpt-4o-mini-batch"],
        auth_headers=["bearer"],
    )
    with start_emulator(config) as emu:
        reseller = {
            "name": "litellm",
            "base_url": emu.openai_base_url,
            "api_key": emu.api_key,
            "models": ["gpt-4o-mini-batch"],
            "extra_upload_fields": {"target_model_names": "{model}"},
            "file_lifetime_cap_s": CAP_48H,
        }
        producer, worker = relays(emu, [reseller], delete_provider_files=False)

        def body(text: str) -> dict:
            return chat(text, "gpt-4o-mini-batch")

        scenario = Scenario(
            producer, worker, emu, receiver, endpoint=CHAT, body=body, reply=chat_text
        )
        scenario.all(final_status=400, final_code="invalid_request_error", retry_status=503)
        uploads = [f for f in emu.engine.store.list_files() if f.purpose == "batch"]
        assert len(uploads) >= 6
        for f in uploads:
            assert f.extra_fields == {"target_model_names": "gpt-4o-mini-batch"}
            assert f.expires_at - f.created_at == CAP_48H  # asked for the cap, not more


def test_file_lifetime_settings_are_checked_at_start_up():
    base = {"name": "r", "base_url": "https://proxy.example/v1", "api_key": "sk-x"}
    with pytest.raises(ConfigurationError, match="lower file_expires_after_s to at most 172800"):
        load_settings(
            providers=[{**base, "file_lifetime_cap_s": CAP_48H, "file_expires_after_s": 259_200}]
        )
    with pytest.raises(ConfigurationError, match="fix file_lifetime_cap_s"):
        load_settings(providers=[{**base, "file_lifetime_cap_s": 43_200}])
    with pytest.raises(ConfigurationError, match="raise file_expires_after_s"):
        load_settings(providers=[{**base, "file_expires_after_s": 7200}])
    ok = load_settings(providers=[{**base, "file_lifetime_cap_s": CAP_48H}])
    assert ok.providers[0].upload_expiry_s == CAP_48H


@pytest.mark.parametrize("api_version", [None, "2024-10-21"], ids=["v1-paths", "legacy-paths"])
def test_azure_deployments_through_both_path_styles(relays, receiver, api_version):
    config = fast_emulator_config(
        models=[DEPLOYMENT], auth_headers=["api-key"], azure_api_versions=["2024-10-21"]
    )
    with start_emulator(config) as emu:
        azure = {
            "name": "azure",
            "kind": "azure",
            "base_url": emu.base_url,
            "api_key": emu.api_key,
            "models": [DEPLOYMENT],
            "file_expires_after_s": 1_209_600,
            **({"api_version": api_version} if api_version else {}),
        }
        producer, worker = relays(emu, [azure], delete_provider_files=False)

        def body(text: str) -> dict:
            return chat(text, DEPLOYMENT)

        scenario = Scenario(
            producer, worker, emu, receiver, endpoint=CHAT, body=body, reply=chat_text
        )
        scenario.all(final_status=400, final_code="invalid_request_error", retry_status=500)
        batches = emu.engine.store.list_batches("openai")
        assert batches and all(b.flavor == "azure" for b in batches)
        assert all(b.model == DEPLOYMENT for b in batches if b.model)
        expected = "/chat/completions" if api_version else CHAT
        assert {b.endpoint for b in batches} == {expected}
        # A job with nothing failed still has an error file, empty; it is read and cleaned.
        clean = [b for b in batches if b.counts.get("failed") == 0 and b.run_end_kind == "done"]
        assert clean and all(b.error_file_id for b in clean)
        assert emu.engine.store.get_file(clean[0].error_file_id).bytes == 0


def test_azure_jobs_outlive_the_completion_window(relays, receiver):
    """Azure keeps a job running past its window instead of expiring it; the relay keeps
    polling and collects every result."""
    config = fast_emulator_config(
        models=[DEPLOYMENT], completion_window_s=0.3, processing_rate_rps=40
    )
    with start_emulator(config) as emu:
        azure = {
            "name": "azure",
            "kind": "azure",
            "base_url": emu.base_url,
            "api_key": emu.api_key,
            "models": [DEPLOYMENT],
        }
        producer, worker = relays(emu, [azure])
        ids = producer.submit_many(
            [{"endpoint": CHAT, "body": chat(f"a{i}", DEPLOYMENT)} for i in range(40)]
        )
        drive(worker, lambda: all(producer.status(i).final for i in ids))
        results = [producer.result(i) for i in ids]
        assert all(r["status"] == "succeeded" and r["attempts"] == 1 for r in results)
        client = openai.OpenAI(
            base_url=emu.azure_base_url, api_key="-", default_headers={"api-key": emu.api_key}
        )
        [batch] = client.batches.list().data
        assert batch.status == "completed" and batch.expired_at is None
