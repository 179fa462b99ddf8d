"""Redis with AUTH over TLS (`rediss://`): the producer, a real worker and beat all connect."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
import redis

from batchrelay import BatchRelay
from batchrelay.emulator import start_emulator
from tests._redis import free_port
from tests._stack import Stack
from tests.relay.harness import CHAT, chat, fast_emulator_config, relay_settings

PASSWORD = "redis-pass-for-tests"


@pytest.fixture
def tls_redis(tmp_path: Path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    port = free_port()
    proc = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", "0", "--tls-port", str(port),
         "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-auth-clients", "no",
         "--requirepass", PASSWORD, "--save", "", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"rediss://:{PASSWORD}@127.0.0.1:{port}/0?ssl_cert_reqs=required&ssl_ca_certs={cert}"
    deadline = time.monotonic() + 10
    while True:
        try:
            redis.Redis.from_url(url).ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.05)
    yield url, port
    proc.terminate()
    proc.wait(10)


def test_rediss_with_password_end_to_end(tls_redis, tmp_path):
    url, port = tls_redis
    with pytest.raises(redis.ConnectionError):
        redis.Redis(port=port, password=PASSWORD, socket_timeout=1).ping()  # plain TCP refused
    with start_emulator(fast_emulator_config()) as emu:
        settings = relay_settings(url, emu)
        stack = Stack(settings, tmp_path)
        producer = BatchRelay(settings)
        try:
            ids = producer.submit_many(
                [{"endpoint": CHAT, "body": chat(f"tls{i}")} for i in range(20)]
            )
            stack.start_worker("w1")
            stack.start_beat()
            stack.wait_until(
                lambda: all(producer.status(i).final for i in ids), 60, "results over TLS"
            )
            assert (
                producer.result(ids[3])["response"]["body"]["choices"][0]["message"]["content"]
                == "echo: tls3"
            )
        finally:
            stack.stop()
            producer.close()
        assert PASSWORD not in stack.logs()
