"""`batchrelay metrics` refuses to serve without Redis or with a bad setting, in one line."""

from __future__ import annotations

import subprocess
import sys

from tests._redis import free_port
from tests._stack import ROOT, settings_env
from tests.relay.harness import relay_settings

EMU = type("E", (), {"openai_base_url": "http://127.0.0.1:9/v1", "api_key": "k"})


def run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "batchrelay", "metrics", "--port", str(free_port())]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def test_redis_down_is_one_line_and_exit_69():
    env = settings_env(relay_settings(f"redis://:pw@127.0.0.1:{free_port()}/0", EMU))
    done = run(env)
    assert done.returncode == 69, done.stderr
    assert done.stderr.startswith("cannot use Redis at redis://:***@127.0.0.1:"), done.stderr
    assert "pw" not in done.stderr.replace("***", "")


def test_a_bad_webhook_secret_is_exit_78_naming_the_setting(redis_url):
    env = settings_env(relay_settings(redis_url, EMU))
    env["BATCHRELAY_PROVIDERS"] = (
        '[{"name":"emu","base_url":"http://127.0.0.1:9/v1","api_key":"k","webhook_secret":"x"}]'
    )
    done = run(env)
    assert done.returncode == 78, done.stderr
    assert "providers.0.webhook_secret" in done.stderr and "whsec_" in done.stderr
