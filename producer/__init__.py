"""The producer side: what a web app imports, re-exported as the public API by `batchrelay`.

Importing it pulls in redis-py and pydantic, never Celery.
"""
