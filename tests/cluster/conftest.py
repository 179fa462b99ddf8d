from tests._cluster import cluster_url, redis_cluster  # noqa: F401
from tests._redis import redis_server, redis_url  # noqa: F401
