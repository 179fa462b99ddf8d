"""File downloads streamed from disk, optionally throttled or cut off part-way.

A file whose batch drew the `html` malformed-output fault is answered with an HTML error
page and `200 OK`, as a proxy or CDN in front of a provider sometimes does.

A cut download announces the full Content-Length, sends only part of the body and then
returns without finishing the response, so the server closes the connection: the client sees
a short read, as after a dropped connection in real life.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

CHUNK = 256 * 1024
HTML_ERROR_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head>\n"
    b"<body><h1>502 Bad Gateway</h1><p>The upstream server returned an invalid response.</p>"
    b"</body></html>\n"
)
log = logging.getLogger("batchrelay.emulator.downloads")


class _DropCutMessage(logging.Filter):
    """Uvicorn reports a cut response as an error; here it is intended, so it is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "ASGI callable returned without completing response."


logging.getLogger("uvicorn.error").addFilter(_DropCutMessage())


if TYPE_CHECKING:
    from batchrelay.emulator.engine import Engine
    from batchrelay.emulator.store import FileRecord


def stored_file(
    engine: Engine,
    file_id: str,
    record: FileRecord | None,
    media_type: str = "application/octet-stream",
) -> Response:
    """A stored file as every download route serves it, under the download faults: the HTML
    error page when the file is marked for it, else streamed at the fault's speed and cut."""
    if record is not None and record.serves_html:
        return html_error_page()
    bytes_per_s, cut = engine.faults.download_plan()
    return FileDownload(
        engine.store.blob_path(file_id),
        media_type=media_type,
        bytes_per_s=bytes_per_s,
        cut_fraction=cut,
    )


def html_error_page() -> Response:
    return Response(HTML_ERROR_PAGE, media_type="text/html; charset=utf-8")


class FileDownload(Response):
    """ASGI response sending `path` (all of it, or `cut_fraction` of it), at a chosen speed."""

    def __init__(
        self,
        path: Path,
        *,
        media_type: str,
        bytes_per_s: int | None = None,
        cut_fraction: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        # Starlette's Response.__init__ renders a body; this response streams from disk.
        self.status_code = 200
        self.background = None
        self.path = path
        self.media_type = media_type
        self.bytes_per_s = bytes_per_s
        self.cut_fraction = cut_fraction
        self.extra_headers = headers or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        with open(self.path, "rb") as src:
            size = self.path.stat().st_size
            headers = [
                (b"content-type", self.media_type.encode()),
                (b"content-length", str(size).encode()),
                *((k.encode(), v.encode()) for k, v in self.extra_headers.items()),
            ]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            limit = size if self.cut_fraction is None else int(size * self.cut_fraction)
            step = CHUNK if not self.bytes_per_s else max(1, min(CHUNK, self.bytes_per_s // 10))
            sent = 0
            while sent < limit:
                data = src.read(min(step, limit - sent))
                if not data:
                    break
                if self.bytes_per_s:
                    await asyncio.sleep(len(data) / self.bytes_per_s)
                await send({"type": "http.response.body", "body": data, "more_body": True})
                sent += len(data)
        if self.cut_fraction is not None:
            log.info("download of %s cut after %d of %d bytes", self.path.name, sent, size)
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})
