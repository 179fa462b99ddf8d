"""Every request body is read with a bound: oversized or malformed bodies get a 413/400 in the
provider's envelope, and the emulator's memory stays flat while it refuses a huge one.

The huge bodies are streamed from generators (chunked), so neither side of the test holds
them; the emulator runs as `batchrelay emulator` in a subprocess whose peak RSS is sampled.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import psutil
import pytest

from tests.emulator.helpers import jsonl, request_line
from tests.emulator.process import PeakRss, cli_emulator

MB = 1024 * 1024
BOUNDARY = "batchrelay-test-boundary"
MULTIPART = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}
GROWTH_BOUND_MB = 40  # a refused body may cost buffers, never its own size


def field_part(name: str, value: bytes) -> bytes:
    head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
    return head.encode() + value + b"\r\n"


def file_part(content: bytes, filename: str = "in.jsonl") -> bytes:
    head = (
        f"--{BOUNDARY}\r\n"
        f'Content-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: application/jsonl\r\n\r\n"
    )
    return head.encode() + content + b"\r\n"


def closing() -> bytes:
    return f"--{BOUNDARY}--\r\n".encode()


def many_fields(count: int, size: int) -> Iterator[bytes]:
    yield field_part("purpose", b"batch")
    value = b"x" * size
    for i in range(count):
        yield field_part(f"extra{i}", value)
    yield file_part(jsonl([request_line(0)]))
    yield closing()


def huge_json(total: int) -> Iterator[bytes]:
    """`{"metadata": {"k": "xxxx…"}}` of about `total` bytes, 1 MB at a time."""
    yield b'{"metadata": {"k": "'
    chunk = b"x" * MB
    for _ in range(total // MB):
        yield chunk
    yield b'"}}'


@pytest.fixture(scope="module")
def cli_server() -> Iterator[tuple[int, str]]:
    with cli_emulator() as (proc, base_url):
        yield proc.pid, base_url


@pytest.fixture
def auth(emulator) -> dict[str, str]:
    return {"Authorization": f"Bearer {emulator.api_key}"}


def refused_in_flat_memory(
    cli_server: tuple[int, str], method: str, path: str, body: Iterator[bytes], headers: dict
) -> httpx.Response:
    """Send `body` and return the answer, asserting the server's RSS did not grow with it."""
    pid, base_url = cli_server
    with httpx.Client(base_url=base_url, timeout=120) as http:
        # Warm the route first, so lazy imports and first-use allocations are in the baseline.
        http.request(method, path, content=b"{}", headers={**headers, "content-type": "x/y"})
        idle = psutil.Process(pid).memory_info().rss
        watcher = PeakRss(pid)
        watcher.start()
        try:
            response = http.request(method, path, content=body, headers=headers)
        finally:
            peak = watcher.stop()
    growth_mb = (peak - idle) / MB
    print(f"\n{method} {path}: {response.status_code}, peak RSS +{growth_mb:.1f} MB")
    assert growth_mb < GROWTH_BOUND_MB, f"emulator RSS grew by {growth_mb:.0f} MB"
    return response


@pytest.mark.parametrize("path", ["/v1/batches", "/_emulator/faults"])
def test_a_300_mb_json_body_is_refused_without_reading_it_whole(cli_server, path):
    method = "PATCH" if path.startswith("/_emulator") else "POST"
    headers = {"Authorization": "Bearer sk-emulator", "content-type": "application/json"}
    response = refused_in_flat_memory(cli_server, method, path, huge_json(300 * MB), headers)
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"] == "Request exceeds the maximum allowed size of 1048576 bytes."


def test_thousands_of_large_form_fields_are_refused_in_flat_memory(cli_server):
    headers = {"Authorization": "Bearer sk-emulator", **MULTIPART}
    body = many_fields(3000, 60 * 1024)
    response = refused_in_flat_memory(cli_server, "POST", "/v1/files", body, headers)
    assert response.status_code == 400
    assert response.json()["error"] == {
        "message": "Form fields are too large: at most 65536 bytes in all.",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }


def test_at_most_16_form_fields(emulator, auth):
    parts = [field_part("purpose", b"batch")]
    parts += [field_part(f"extra{i}", b"x") for i in range(16)]
    parts += [file_part(jsonl([request_line(0)])), closing()]
    response = httpx.post(
        emulator.openai_base_url + "/files",
        content=b"".join(parts),
        headers={**auth, **MULTIPART},
    )
    assert response.status_code == 400
    assert response.json()["error"]["message"] == (
        "Too many form fields: at most 16 besides 'file'."
    )
    assert emulator.stats()["files_uploaded"] == 0


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(field_part("purpose", b"batch") + file_part(b"ab")[:-2], id="no-boundary"),
        pytest.param(field_part("purpose", b"batch") + file_part(b"ab"), id="no-closing"),
        pytest.param(field_part("purpose", b"bat"), id="cut-in-a-field"),
    ],
)
def test_a_multipart_body_without_its_closing_boundary_is_refused(emulator, auth, body):
    response = httpx.post(
        emulator.openai_base_url + "/files", content=body, headers={**auth, **MULTIPART}
    )
    assert response.status_code == 400
    assert response.json()["error"] == {
        "message": "Invalid multipart body: it ends before its closing boundary.",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }
    assert emulator.stats()["files_uploaded"] == 0


@pytest.mark.parametrize(
    ("method", "path", "envelope"),
    [
        ("POST", "/v1/batches", "openai"),
        ("POST", "/openai/v1/batches", "openai"),
        ("PATCH", "/_emulator/timings", "openai"),
        ("POST", "/v1/messages/batches", "anthropic"),
    ],
)
def test_bodies_over_the_limit_get_413_in_the_route_envelope(
    emulator_factory, method, path, envelope
):
    emu = emulator_factory(max_anthropic_body_bytes=MB)
    auth = {"Authorization": f"Bearer {emu.api_key}", "content-type": "application/json"}
    body = b'{"metadata": {"k": "' + b"x" * MB + b'"}}'
    response = httpx.request(method, emu.base_url + path, content=body, headers=auth)
    assert response.status_code == 413
    message = "Request exceeds the maximum allowed size of 1048576 bytes."
    if envelope == "anthropic":
        assert response.json()["type"] == "error"
        assert response.json()["error"] == {"type": "request_too_large", "message": message}
    else:
        assert response.json()["error"]["message"] == message
    assert emu.stats()["batches_created"]["total"] == 0


def test_a_body_just_under_the_limit_is_read(emulator, auth):
    body = b'{"metadata": {"k": "' + b"x" * (MB - 64) + b'"}}'
    response = httpx.post(
        emulator.openai_base_url + "/batches",
        content=body,
        headers={**auth, "content-type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "input_file_id"


def test_gemini_bodies_are_bounded_with_googles_answer(emulator_factory):
    """Gemini's create and upload routes read through the same bounds; Google answers an
    oversized payload with 400 INVALID_ARGUMENT, and a chunk past an upload's declared size
    ends the upload session."""
    emu = emulator_factory(max_gemini_body_bytes=MB)
    key = {"x-goog-api-key": emu.api_key}
    body = b'{"batch": {"displayName": "' + b"x" * MB + b'"}}'
    create = "/v1beta/models/gemini-2.5-flash:batchGenerateContent"
    response = httpx.post(
        emu.base_url + create, content=body, headers={**key, "content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"] == {
        "code": 400,
        "message": "Request payload size exceeds the limit: 1048576 bytes.",
        "status": "INVALID_ARGUMENT",
    }
    start = httpx.post(
        emu.base_url + "/upload/v1beta/files",
        json={"file": {"displayName": "in.jsonl"}},
        headers={
            **key,
            "x-goog-upload-protocol": "resumable",
            "x-goog-upload-command": "start",
            "x-goog-upload-header-content-length": "10",
        },
    )
    url = start.headers["x-goog-upload-url"]
    finalize = {"x-goog-upload-command": "upload, finalize", "x-goog-upload-offset": "0"}
    over = httpx.post(url, content=b"x" * 11, headers=finalize)
    assert over.status_code == 400
    assert over.json()["error"]["message"] == "The upload exceeds its declared size of 10 bytes."
    assert httpx.post(url, content=b"x" * 10, headers=finalize).status_code == 404  # ended
    stats = emu.stats()
    assert stats["batches_created"]["total"] == 0 and stats["files_uploaded"] == 0
