"""`batchrelay serve`: the producer API over HTTP for any language (needs the `api` extra).

Nothing is imported here, so the CLI (part of the core) can register the command without
FastAPI installed; `batchrelay.api.app.create_app` builds the ASGI app.
"""
