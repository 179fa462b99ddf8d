"""examples/node/ runs as the README says, with the machine's node and `npm ci` (the
standardwebhooks package from the npm registry): submit with fetch, long-poll the result,
verify the webhook's signature."""

from __future__ import annotations

import os
import shutil
import subprocess

import orjson
import pytest

from tests._stack import ROOT
from tests.api.conftest import Api, api_key
from tests.relay.harness import SECRET

EXAMPLE = ROOT / "examples" / "node"


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed on this machine")
def test_node_example_against_the_live_api(api: Api, tmp_path):
    npm = shutil.which("npm")
    assert npm, "node without npm: install npm to run the Node example"
    work = tmp_path / "node"
    shutil.copytree(EXAMPLE, work, ignore=shutil.ignore_patterns("node_modules"))
    subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund"],
        cwd=work,
        check=True,
        capture_output=True,
        timeout=300,
    )
    env = {
        **os.environ,
        "BATCHRELAY_URL": api.url,
        "BATCHRELAY_API_KEY": api_key("node"),
        "BATCHRELAY_WEBHOOK_SECRET": SECRET,
    }
    out = subprocess.run(
        ["node", "example.mjs"], cwd=work, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    seen = orjson.loads(out.stdout.strip().splitlines()[-1])
    assert seen["status"] == "succeeded" and seen["content"] == "echo: hello from node"
    assert seen["webhook_verified"] and seen["webhook_matches_result"]
    assert seen["tenant"] == "node"
