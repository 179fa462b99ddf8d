"""Quiet when idle (promise 11): real worker and beat processes, counted on the broker.

An idle relay publishes at most one task a minute (the sweep); when work arrives it is
dispatched within a tick, and every task that ran after the work says what it did."""

from __future__ import annotations

import time

import pytest

from batchrelay import BatchRelay, Webhook
from batchrelay.emulator import start_emulator
from tests._receiver import WebhookReceiver
from tests._stack import Stack
from tests.ops._events import task_events
from tests.relay.harness import CHAT, chat, fast_emulator_config, relay_settings

IDLE_S = 60.0


@pytest.mark.timeout(240)
def test_an_idle_stack_publishes_at_most_one_task_a_minute(redis_url, tmp_path):
    with start_emulator(fast_emulator_config()) as emu, WebhookReceiver() as receiver:
        settings = relay_settings(redis_url, emu, tick_s=0.25, lease_s=4)
        stack = Stack(settings, tmp_path)
        producer = BatchRelay(settings)
        try:
            with task_events(settings) as events:
                stack.start_worker("w1")
                stack.start_beat()
                hook = Webhook(receiver.url + "/in")
                first = [producer.submit(CHAT, chat(f"warm {i}"), callback=hook) for i in range(3)]
                stack.wait_until(lambda: receiver.wait_for(3, 0.01), 60, "3 webhooks")
                assert set(receiver.ok_ids()) == set(first)
                time.sleep(3)  # the last deliveries' dispatch settles

                start = time.time()
                stack.wait_until(lambda: time.time() - start >= IDLE_S, IDLE_S + 30, "idle")
                idle = events.names(start, start + IDLE_S)
                assert len(idle) <= 1, idle
                assert set(idle) <= {"batchrelay.sweep"}, idle

                # Still awake: a new request is claimed, polled and delivered promptly.
                asked = time.time()
                late = producer.submit(CHAT, chat("after the quiet"), callback=hook)
                stack.wait_until(lambda: late in receiver.ok_ids(), 30, "the late webhook")
                took = time.time() - asked
                busy = events.names(asked)
            stack_logs = stack.logs()
        finally:
            stack.stop()
            producer.close()
        # Flush wait 0.2 s, then a few 0.25 s ticks and emulator seconds, not a poll loop.
        assert took < 10, (took, stack_logs)
        assert {"batchrelay.submit", "batchrelay.poll_batch", "batchrelay.deliver"} <= set(busy)
