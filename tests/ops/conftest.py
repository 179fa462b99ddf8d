from tests._redis import redis_server, redis_url  # noqa: F401
