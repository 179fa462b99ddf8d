"""The README's curl block, run with bash against the live API: each call answers as the
comments say."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time

import pytest

from tests._stack import ROOT
from tests.api.conftest import Api, api_key


def curl_block() -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("tests/api/test_readme_curl.py")
    return re.search(r"```bash\n(.*?)```", readme[start:], re.S).group(1)


def answers(text: str) -> list[dict]:
    """The JSON documents curl printed back to back."""
    decoder, out, i = json.JSONDecoder(), [], 0
    while i < len(text):
        if text[i].isspace():
            i += 1
            continue
        doc, i = decoder.raw_decode(text, i)
        out.append(doc)
    return out


@pytest.mark.skipif(not (shutil.which("curl") and shutil.which("jq")), reason="needs curl, jq")
def test_readme_curl_block(api: Api):
    env = {
        **os.environ,
        "API": api.url,
        "KEY": api_key("alpha"),
        "WEBHOOK_URL": api.receiver.url + "/readme",
    }
    script = "set -euo pipefail\n" + curl_block() + '\necho "{\\"id\\": \\"$ID\\"}"\n'
    out = subprocess.run(
        ["bash", "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    bulk, status, result, cancel, usage, last = answers(out.stdout)
    rid = last["id"]
    assert rid.startswith("r_") and len(bulk["ids"]) == 2
    assert status["id"] == rid and status["tenant"] == "alpha"
    assert result["status"] == "succeeded" and result["metadata"] == {"order": 42}
    assert result["idempotency_key"] == "order-42"
    assert cancel["status"] == 409 and "already final" in cancel["detail"]
    assert usage["tenant"] == "alpha"
    deadline = time.monotonic() + 15
    while rid not in api.receiver.by_id():  # the webhook, too
        assert time.monotonic() < deadline, "the README's webhook never arrived"
        time.sleep(0.05)
