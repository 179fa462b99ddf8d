"""producer/connection.py's decisions from a server's INFO, without servers."""

from __future__ import annotations

import pytest

from batchrelay.config import ConfigurationError, load_settings
from batchrelay.producer.connection import _verdict, cluster_enabled

S = load_settings(redis_url="redis://:pw-secret@127.0.0.1:1/0")


def test_a_redis_older_than_7_is_refused_with_the_url_masked():
    with pytest.raises(ConfigurationError, match="is 6.2.14; batchrelay needs Redis 7.0") as old:
        _verdict(S, {"redis_version": "6.2.14", "cluster_enabled": 0})
    assert "pw-secret" not in str(old.value)


def test_cluster_mode_comes_from_info_unless_the_setting_says():
    assert _verdict(S, {"redis_version": "7.0.15", "cluster_enabled": 1}) is True
    assert _verdict(S, {"redis_version": "7.2.4", "cluster_enabled": 0}) is False
    # Forced: no server is asked (port 1 would refuse the connection).
    assert cluster_enabled(load_settings(redis_url=S.redis_url, redis_cluster=True)) is True
    assert cluster_enabled(load_settings(redis_url=S.redis_url, redis_cluster=False)) is False
