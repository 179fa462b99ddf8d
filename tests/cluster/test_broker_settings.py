"""Celery's broker setting, without servers: which URL the app gets, what RabbitMQ adds, what is
refused, and that its password stays masked."""

from __future__ import annotations

import pytest

from batchrelay.config import ConfigurationError, load_settings
from batchrelay.worker.celery_app import create_app
from batchrelay.worker.state import refuse_cluster_broker

PROFILE = {"name": "p", "base_url": "http://p/v1", "api_key": "k"}


def settings(**values):
    return load_settings(providers=[PROFILE], redis_url="redis://127.0.0.1:1/0", **values)


def test_the_broker_defaults_to_the_redis_url_with_its_visibility_timeout():
    conf = create_app(settings()).conf
    assert conf.broker_url == "redis://127.0.0.1:1/0"
    assert conf.broker_transport_options == {"visibility_timeout": 3600}
    assert conf.task_default_queue_type == "classic"


def test_rabbitmq_gets_a_quorum_queue_and_publisher_confirms():
    s = settings(broker_url="amqp://u:pw-secret@rabbit:5672/vh")
    conf = create_app(s).conf
    assert conf.broker_url == "amqp://u:pw-secret@rabbit:5672/vh"
    assert conf.task_default_queue_type == "quorum"
    assert conf.broker_transport_options == {"confirm_publish": True}
    assert "pw-secret" not in repr(s) and "amqp://u:***@rabbit" in repr(s)


def test_a_broker_url_of_another_scheme_is_refused():
    with pytest.raises(ConfigurationError, match="BATCHRELAY_BROKER_URL") as bad:
        settings(broker_url="kafka://u:pw-secret@k:9092")
    assert "amqp://" in str(bad.value) and "pw-secret" not in str(bad.value)


def test_a_cluster_is_refused_as_the_broker_and_accepted_beside_one():
    with pytest.raises(ConfigurationError, match="set BATCHRELAY_BROKER_URL"):
        refuse_cluster_broker(settings(), cluster=True)
    refuse_cluster_broker(settings(broker_url="redis://b:6379/0"), cluster=True)
    refuse_cluster_broker(settings(), cluster=False)
