"""Streaming multipart receiver: the `file` part goes straight to disk, checked on the way.

Starlette's form parser would spool the upload and copy it again; this writes each chunk
once, counting bytes and checking UTF-8 incrementally, so a 200 MB upload costs one pass
and flat memory. Everything else is bounded too: the file, the number and total size of the
other fields (they are kept with the file), and the body as a whole; a body that ends before
its closing boundary is refused rather than stored cut short.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from fastapi import Request
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from batchrelay.emulator.bodies import bounded_stream
from batchrelay.emulator.errors import Shape

MAX_FIELDS = 16
MAX_FIELDS_BYTES = 64 * 1024
# Part headers and boundaries: with the field bounds above, a form is never near this.
FORM_OVERHEAD_BYTES = 1024 * 1024


class UploadError(ValueError):
    """The request body is not a usable multipart form."""


@dataclass
class Upload:
    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None
    size: int = 0
    utf8: bool = True
    complete: bool = False


class _Receiver:
    def __init__(self, target: Path, max_bytes: int) -> None:
        self.upload = Upload()
        self._target = target
        self._max_bytes = max_bytes
        self._fh: BinaryIO | None = None
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._name = ""
        self._is_file = False
        self._value = bytearray()
        self._fields_bytes = 0

    def on_part_begin(self) -> None:
        self._disposition, self._name, self._is_file = b"", "", False
        self._value = bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name, self._header_value = b"", b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if b"name" not in options:
            raise UploadError('A multipart part has no "name" in its Content-Disposition.')
        self._name = options[b"name"].decode("utf-8", "replace")
        if self._name == "file" and b"filename" in options:
            if self._fh is not None:
                raise UploadError("Only one 'file' part is allowed.")
            self._is_file = True
            self.upload.filename = options[b"filename"].decode("utf-8", "replace")
            self._fh = open(self._target, "wb")  # noqa: SIM115 - closed in on_part_end/close
        elif len(self.upload.fields) >= MAX_FIELDS:
            raise UploadError(f"Too many form fields: at most {MAX_FIELDS} besides 'file'.")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if not self._is_file:
            self._fields_bytes += len(chunk)
            if self._fields_bytes > MAX_FIELDS_BYTES:
                raise UploadError(
                    f"Form fields are too large: at most {MAX_FIELDS_BYTES} bytes in all."
                )
            self._value.extend(chunk)
            return
        upload = self.upload
        upload.size += len(chunk)
        if upload.size > self._max_bytes:
            raise UploadError("File is too large.")
        if upload.utf8:
            try:
                self._decoder.decode(chunk)
            except UnicodeDecodeError:
                upload.utf8 = False
        assert self._fh is not None
        self._fh.write(chunk)

    def on_part_end(self) -> None:
        if self._is_file:
            if self.upload.utf8:
                try:
                    self._decoder.decode(b"", final=True)
                except UnicodeDecodeError:
                    self.upload.utf8 = False
            self.close()
        else:
            self.upload.fields[self._name] = self._value.decode("utf-8", "replace")

    def on_end(self) -> None:
        self.upload.complete = True

    def close(self) -> None:
        if self._fh is not None and not self._fh.closed:
            self._fh.close()


async def receive_upload(
    request: Request, target: Path, max_bytes: int, shape: Shape = "openai"
) -> Upload:
    """Parse a multipart/form-data body, writing the `file` part (at most `max_bytes`) to
    `target`; raises UploadError (a 400) or a 413 `ApiError` for a body past every bound."""
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or b"boundary" not in params:
        raise UploadError("Expected a multipart/form-data body with a boundary.")
    receiver = _Receiver(target, max_bytes)
    callbacks = {
        name: getattr(receiver, name)
        for name in (
            "on_part_begin",
            "on_part_data",
            "on_part_end",
            "on_header_field",
            "on_header_value",
            "on_header_end",
            "on_headers_finished",
            "on_end",
        )
    }
    parser = MultipartParser(params[b"boundary"], callbacks)  # type: ignore[arg-type]
    try:
        async for chunk in bounded_stream(request, max_bytes + FORM_OVERHEAD_BYTES, shape):
            parser.write(chunk)
    except FormParserError as exc:
        raise UploadError(f"Invalid multipart body: {exc}") from exc
    finally:
        receiver.close()
    if not receiver.upload.complete:
        raise UploadError("Invalid multipart body: it ends before its closing boundary.")
    return receiver.upload
