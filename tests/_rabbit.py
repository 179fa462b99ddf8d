"""A private RabbitMQ virtual host on the machine's RabbitMQ, made and deleted by the test
(`rabbitmqctl`); no other vhost is touched."""

from __future__ import annotations

import secrets
import shutil
import subprocess
from collections.abc import Iterator

import pytest

USER = "guest"  # RabbitMQ's default user, allowed from loopback only


def _ctl(*args: str) -> str:
    done = subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=60)
    return done.stdout.decode()


def queue_types(url: str) -> dict[str, str]:
    """Queue name -> type (classic, quorum) in the vhost of an `amqp://` URL."""
    vhost = url.rsplit("/", 1)[1]
    out = _ctl("list_queues", "-p", vhost, "--quiet", "--no-table-headers", "name", "type")
    return dict(line.split("\t") for line in out.splitlines() if "\t" in line)


@pytest.fixture
def rabbit_url() -> Iterator[str]:
    """`amqp://` URL of a fresh vhost, deleted afterwards."""
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("RabbitMQ is not installed here (rabbitmqctl not on PATH)")
    vhost = f"batchrelay-test-{secrets.token_hex(4)}"
    _ctl("add_vhost", vhost)
    try:
        _ctl("set_permissions", "-p", vhost, USER, ".*", ".*", ".*")
        yield f"amqp://{USER}:{USER}@127.0.0.1:5672/{vhost}"
    finally:
        _ctl("delete_vhost", vhost)
