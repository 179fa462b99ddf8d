"""Provider completion -> first result delivered, with provider webhooks and with polling alone.

    python -m bench.bench_provider_webhook

Two relays run side by side, each with its own Redis, emulator, worker and beat (the production
commands), `POLL_INTERVAL_S=300` and the default `TICK_S=1`. One emulator sends OpenAI-style
`batch.completed` webhooks to that relay's `batchrelay metrics` process; the other sends none,
so its batches are seen at their first poll (the baseline). Each relay gets BATCHES batches at
once (one model each); per batch, the figure is from the emulator's terminal time of the batch
to the receiver getting the first result webhook of one of its requests. Target: <= 2 s with
provider webhooks.
"""

from __future__ import annotations

import base64
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import orjson

from batchrelay import BatchRelay, Webhook
from batchrelay.emulator import start_emulator
from batchrelay.emulator.lifecycle import terminal_time
from bench._redis import private_redis
from tests._receiver import WebhookReceiver
from tests._stack import Stack
from tests.ops._exporter import exporter
from tests.relay.harness import CHAT, chat, fast_emulator_config, relay_settings

BATCHES = int(os.environ.get("BENCH_BATCHES", "4"))
MODELS = [f"gpt-bench-{i}" for i in range(BATCHES)]
PER_BATCH = 20
SECRET = "whsec_" + base64.b64encode(b"bench-provider-webhook-secret-32").decode()
TARGET_S = 2.0


def run(webhooks: bool, workdir: Path) -> list[float]:
    config = fast_emulator_config(validating_delay_s=1.0, finalizing_delay_s=0.5)
    with private_redis() as server, start_emulator(config) as emu, WebhookReceiver() as rx:
        settings = relay_settings(
            server.url,
            emu,
            profile={"webhook_secret": SECRET},
            poll_interval_s=300,
            poll_max_interval_s=300,
            tick_s=1.0,
            lease_s=30,
            flush_max_wait_s=0.2,
        )
        stack, producer = Stack(settings, workdir), BatchRelay(settings)
        try:
            with exporter(settings, workdir) as metrics:
                if webhooks:
                    emu.set_webhook(metrics.hook_url("emu"), SECRET)
                stack.start_worker("w1")
                stack.start_beat()
                hook = Webhook(rx.url + "/in")
                items = [
                    {"endpoint": CHAT, "body": chat(f"{m} {i}", m), "callback": hook}
                    for m in MODELS
                    for i in range(PER_BATCH)
                ]
                ids = set(producer.submit_many(items))
                stack.wait_until(lambda: ids <= rx.ok_ids(), 900, "every result")
        finally:
            stack.stop()
            producer.close()
        first: dict[str, float] = {}
        for d in rx.received:
            pbid = orjson.loads(d.body)["batch"]["provider_batch_id"]
            first[pbid] = min(first.get(pbid, d.at), d.at)
        return [
            at - (terminal_time(emu.engine.store.get_batch(p)) or 0.0) for p, at in first.items()
        ]


def main() -> None:
    out: dict[str, list[float]] = {}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-pwh-") as tmp:

        def measure(name: str, webhooks: bool) -> None:
            (Path(tmp) / name).mkdir()
            out[name] = run(webhooks, Path(tmp) / name)

        threads = [
            threading.Thread(target=measure, args=("webhooks", True)),
            threading.Thread(target=measure, args=("polling", False)),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for name in ("webhooks", "polling"):
        figures = out[name]
        shown = ", ".join(f"{f:.2f}" for f in sorted(figures))
        print(
            f"provider completion -> first result delivered, {name:8}: "
            f"median {statistics.median(figures):7.2f} s, max {max(figures):7.2f} s ({shown})"
        )
    verdict = "ok" if max(out["webhooks"]) <= TARGET_S else "OVER TARGET"
    took = time.monotonic() - started
    print(f"target <= {TARGET_S:.0f} s with provider webhooks: {verdict} (ran {took:.0f} s)")


if __name__ == "__main__":
    main()
