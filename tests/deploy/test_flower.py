"""Flower, as compose runs it, seen by a person: headless Chromium on a live worker's tasks.

Needs Debian's chromium (scripts/ensure-chromium.sh). Missing in CI, the test fails; on a
developer's machine it is skipped with that instruction.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from batchrelay import BatchRelay
from tests.deploy._compose import ComposeRun

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,900",
    # Let the page's own requests (the tasks table is loaded by XHR) finish before the dump.
    "--virtual-time-budget=10000",
]


def chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        message = "chromium is not installed: run scripts/ensure-chromium.sh (Debian's chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def open_page(browser: str, url: str, tmp_path: Path, name: str, shot: bool = True) -> str:
    """The DOM of `url` after its scripts ran; a screenshot lands beside it for a person."""
    profile = tmp_path / f"profile-{name}"
    common = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}"]
    if shot:
        png = f"--screenshot={tmp_path / f'{name}.png'}"
        subprocess.run([*common, png, url], capture_output=True, timeout=120)
    done = subprocess.run([*common, "--dump-dom", url], capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    return done.stdout.decode(errors="replace")


def flower_tasks(run: ComposeRun, auth: tuple[str, str], name: str) -> dict[str, dict]:
    url = run.url("flower", "/api/tasks")
    reply = httpx.get(url, params={"taskname": name, "limit": 20}, auth=auth, timeout=10)
    return reply.json() if reply.status_code == 200 else {}


def test_flower_shows_batchrelay_tasks_in_chromium(
    compose_run: ComposeRun, compose_producer: BatchRelay, tmp_path: Path
):
    browser = chromium()
    credentials = compose_run.env("flower")["FLOWER_BASIC_AUTH"]
    auth = tuple(credentials.split(",")[0].split(":", 1))
    assert len(auth) == 2

    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello flower"}]}
    rid = compose_producer.submit("/v1/chat/completions", body)
    assert compose_producer.result(rid, timeout=90)["status"] == "succeeded"
    submits = compose_run.wait_until(
        lambda: flower_tasks(compose_run, auth, "batchrelay.submit"), 30, "Flower to see a submit"
    )

    base = f"http://{credentials.split(',')[0]}@127.0.0.1:{compose_run.ports['flower']}"
    dom = open_page(browser, f"{base}/tasks", tmp_path, "tasks")
    assert "TASK HISTORY" in dom.upper(), dom[:2000]
    shown = set(re.findall(r"batchrelay\.[a-z_]+", dom))
    assert "batchrelay.aggregate" in shown, sorted(shown)

    uuid, task = next(iter(submits.items()))
    dom = open_page(browser, f"{base}/task/{uuid}", tmp_path, "submit")
    assert "batchrelay.submit" in dom, dom[:2000]
    assert uuid in dom
    # Small, readable arguments: a batch id, never request bodies or secrets.
    assert len(str(task.get("args"))) < 200, task.get("args")
    settings = compose_producer.settings
    secrets = [p.api_key.get_secret_value() for p in settings.providers]
    secrets += [s.get_secret_value() for s in settings.webhook_secrets]
    assert not [s for s in secrets if s in dom]

    # Without the credentials the browser gets Flower's 401 (an empty page), not the tasks.
    anonymous = open_page(
        browser, compose_run.url("flower", "/tasks"), tmp_path, "anonymous", shot=False
    )
    assert "batchrelay." not in anonymous and "TASK HISTORY" not in anonymous.upper()
