"""Gemini Batch Mode and the Files API through Google's own SDK (google-genai), under both
/v1/ (the SDK's default since 3.0) and /v1beta/, plus the raw wire details the SDK hides."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import orjson
import pytest
from google import genai
from google.genai import errors, types

MODEL = "gemini-2.5-flash"
DONE = {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED"}


def client(emu, version: str = "v1beta") -> genai.Client:
    options = types.HttpOptions(base_url=emu.base_url, api_version=version)
    return genai.Client(api_key=emu.api_key, http_options=options)


def prompt(i: int) -> dict:
    return {"contents": [{"role": "user", "parts": [{"text": f"say token-{i}"}]}]}


def wait_job(gemini: genai.Client, name: str, timeout: float = 10.0) -> types.BatchJob:
    deadline = time.monotonic() + timeout
    while True:
        job = gemini.batches.get(name=name)
        if job.state and job.state.name in DONE:
            return job
        assert time.monotonic() < deadline, f"{name} still {job.state}"
        time.sleep(0.05)


def raw(emu, method: str, path: str, **kwargs) -> httpx.Response:
    headers = {"x-goog-api-key": emu.api_key, **kwargs.pop("headers", {})}
    return httpx.request(method, emu.base_url + path, headers=headers, timeout=10, **kwargs)


def write_jsonl(path: Path, lines: list[dict]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    return path


@pytest.mark.parametrize("version", ["v1", "v1beta"])
def test_inline_batch_results_in_input_order(emulator, version):
    gemini = client(emulator, version)
    src = [{**prompt(i), "metadata": {"key": f"k{i}"}} for i in range(5)]
    job = gemini.batches.create(model=MODEL, src=src, config={"display_name": "br_1"})
    assert job.name.startswith("batches/") and job.display_name == "br_1"
    assert job.state.name in ("JOB_STATE_PENDING", "JOB_STATE_RUNNING")
    job = wait_job(gemini, job.name)
    assert job.state.name == "JOB_STATE_SUCCEEDED" and job.end_time >= job.create_time
    inlined = job.dest.inlined_responses
    assert [r.metadata["key"] for r in inlined] == [f"k{i}" for i in range(5)]
    for i, result in enumerate(inlined):
        assert result.response.text == f"echo: say token-{i}"
        assert result.response.usage_metadata.prompt_token_count > 0


def test_operation_shape_on_the_wire(emulator):
    gemini = client(emulator)
    job = wait_job(gemini, gemini.batches.create(model=MODEL, src=[prompt(0)]).name)
    op = raw(emulator, "GET", f"/v1beta/{job.name}").json()
    meta = op["metadata"]
    assert op["done"] is True and meta["name"] == op["name"] == job.name
    assert meta["@type"].endswith(".GenerateContentBatch")
    assert meta["state"] == "BATCH_STATE_SUCCEEDED" and meta["model"] == f"models/{MODEL}"
    assert meta["batchStats"] == {
        "requestCount": "1",
        "successfulRequestCount": "1",
        "failedRequestCount": "0",
        "pendingRequestCount": "0",
    }
    assert op["response"]["@type"].endswith(".GenerateContentBatchOutput")
    assert op["response"]["inlinedResponses"] == meta["output"]["inlinedResponses"]
    listed = raw(emulator, "GET", "/v1beta/batches").json()["operations"]
    assert [o["name"] for o in listed] == [job.name]
    assert "output" not in listed[0]["metadata"]  # the list call leaves inline results out


@pytest.mark.parametrize("version", ["v1", "v1beta"])
def test_file_batch_upload_and_both_download_paths(emulator, tmp_path, version):
    gemini = client(emulator, version)
    lines = [{"key": f"k{i}", "request": prompt(i)} for i in range(3)]
    lines.append(prompt(3))  # the REST docs' bare-request line form
    source = write_jsonl(tmp_path / "in.jsonl", lines)
    uploaded = gemini.files.upload(file=source, config={"mime_type": "jsonl"})
    assert uploaded.name.startswith("files/") and uploaded.size_bytes == source.stat().st_size
    assert gemini.files.get(name=uploaded.name).size_bytes == uploaded.size_bytes
    job = wait_job(gemini, gemini.batches.create(model=MODEL, src=uploaded.name).name)
    assert job.state.name == "JOB_STATE_SUCCEEDED"
    name = job.dest.file_name
    assert name == "files/batch-" + job.name.removeprefix("batches/")
    content = gemini.files.download(file=name)
    results = [orjson.loads(line) for line in content.splitlines()]
    assert [r.get("key") for r in results] == ["k0", "k1", "k2", None]
    assert results[3]["response"]["candidates"][0]["content"]["parts"][0]["text"] == (
        "echo: say token-3"
    )
    direct = raw(emulator, "GET", f"/download/{version}/{name}:download", params={"alt": "media"})
    assert direct.status_code == 200 and direct.content == content
    gemini.files.delete(name=uploaded.name)
    with pytest.raises(errors.ClientError) as gone:
        gemini.files.get(name=uploaded.name)
    assert gone.value.code == 403


def test_malformed_output_faults(emulator, tmp_path):
    gemini = client(emulator)
    emulator.set_faults(malformed_output_next=1, malformed_output_kind="unparseable_line")
    src = [{**prompt(i), "metadata": {"key": f"k{i}"}} for i in range(4)]
    job = wait_job(gemini, gemini.batches.create(model=MODEL, src=src).name)
    assert [r.metadata["key"] for r in job.dest.inlined_responses] == ["k1", "k2", "k3"]
    emulator.set_faults(malformed_output_next=1, malformed_output_kind="truncated")
    lines = [{"key": f"k{i}", "request": prompt(i)} for i in range(4)]
    source = write_jsonl(tmp_path / "in.jsonl", lines)
    uploaded = gemini.files.upload(file=source, config={"mime_type": "jsonl"})
    job = wait_job(gemini, gemini.batches.create(model=MODEL, src=uploaded.name).name)
    content = gemini.files.download(file=job.dest.file_name)
    assert not content.endswith(b"\n") and content.count(b"\n") < 4


def test_resumable_upload_in_chunks_checks_offsets(emulator):
    body = b"".join(orjson.dumps({"key": f"k{i}", "request": prompt(i)}) + b"\n" for i in range(40))
    start = raw(
        emulator,
        "POST",
        "/upload/v1beta/files",
        json={"file": {"display_name": "chunked"}},
        headers={
            "x-goog-upload-protocol": "resumable",
            "x-goog-upload-command": "start",
            "x-goog-upload-header-content-length": str(len(body)),
            "x-goog-upload-header-content-type": "application/jsonl",
        },
    )
    assert start.status_code == 200 and start.headers["x-goog-upload-status"] == "active"
    url = start.headers["x-goog-upload-url"]
    half = len(body) // 2

    def send(command: str, offset: int, data: bytes) -> httpx.Response:
        # No API key: the upload URL itself is the capability, as google-genai relies on.
        headers = {"x-goog-upload-command": command, "x-goog-upload-offset": str(offset)}
        return httpx.post(url, content=data, headers=headers, timeout=10)

    assert send("upload", 0, body[:half]).headers["x-goog-upload-status"] == "active"
    wrong = send("upload", 0, body[half:])
    assert wrong.status_code == 400 and wrong.json()["error"]["status"] == "INVALID_ARGUMENT"
    query = send("query", 0, b"")
    assert query.headers["x-goog-upload-size-received"] == str(half)
    final = send("upload, finalize", half, body[half:])
    assert final.headers["x-goog-upload-status"] == "final"
    file = final.json()["file"]
    assert file["sizeBytes"] == str(len(body)) and file["displayName"] == "chunked"
    assert send("upload", len(body), b"x").status_code == 404  # the session is closed


def test_cancel_list_and_delete(emulator):
    emulator.set_timings(processing_rate_rps=1.0)
    gemini = client(emulator)
    jobs = [gemini.batches.create(model=MODEL, src=[prompt(i)] * 50) for i in range(3)]
    listed = list(gemini.batches.list(config={"page_size": 2}))
    assert [j.name for j in listed] == [j.name for j in reversed(jobs)]
    gemini.batches.cancel(name=jobs[0].name)
    cancelled = wait_job(gemini, jobs[0].name)
    assert cancelled.state.name == "JOB_STATE_CANCELLED" and cancelled.dest is None
    with pytest.raises(errors.ClientError) as ended:
        gemini.batches.cancel(name=jobs[0].name)
    assert (ended.value.code, ended.value.status) == (400, "FAILED_PRECONDITION")
    gemini.batches.delete(name=jobs[1].name)
    with pytest.raises(errors.ClientError) as gone:
        gemini.batches.get(name=jobs[1].name)
    assert gone.value.code == 404 and gone.value.status == "NOT_FOUND"
    assert raw(emulator, "POST", f"/v1beta/{jobs[2].name}:delete").status_code == 200
    done = wait_job(gemini, gemini.batches.create(model=MODEL, src=[prompt(0)]).name)
    assert raw(emulator, "GET", f"/v1beta/{done.name}:delete").status_code == 200
    assert raw(emulator, "GET", f"/v1beta/{done.name}").status_code == 404


def test_expiry_leaves_no_results(emulator):
    emulator.set_faults(expire_next=1, expire_after_fraction=0.5)
    gemini = client(emulator)
    job = wait_job(
        gemini, gemini.batches.create(model=MODEL, src=[prompt(i) for i in range(4)]).name
    )
    assert job.state.name == "JOB_STATE_EXPIRED" and job.dest is None
    stats = raw(emulator, "GET", f"/v1beta/{job.name}").json()["metadata"]["batchStats"]
    assert stats == {"requestCount": "4", "pendingRequestCount": "4"}


def test_partial_failures_are_status_lines(emulator):
    emulator.set_faults(request_error_fraction=0.5, request_error_status=503)
    gemini = client(emulator)
    src = [{**prompt(i), "metadata": {"key": f"k{i}"}} for i in range(40)]
    job = wait_job(gemini, gemini.batches.create(model=MODEL, src=src).name)
    assert job.state.name == "JOB_STATE_SUCCEEDED"
    failed = [r for r in job.dest.inlined_responses if r.error is not None]
    assert 0 < len(failed) < 40
    assert {(r.error.code, r.error.message) for r in failed} == {
        (503, "The model is overloaded. Please try again later.")
    }
    stats = raw(emulator, "GET", f"/v1beta/{job.name}").json()["metadata"]["batchStats"]
    assert stats["failedRequestCount"] == str(len(failed))


def test_embeddings_batch(emulator):
    body = {
        "batch": {
            "displayName": "emb",
            "inputConfig": {
                "requests": {
                    "requests": [
                        {
                            "request": {"content": {"parts": [{"text": "a"}]}},
                            "metadata": {"key": "e0"},
                        }
                    ]
                }
            },
        }
    }
    made = raw(
        emulator, "POST", "/v1beta/models/gemini-embedding-001:asyncBatchEmbedContent", json=body
    )
    assert made.status_code == 200, made.text
    assert made.json()["metadata"]["@type"].endswith(".EmbedContentBatch")
    job = wait_job(client(emulator), made.json()["name"])
    op = raw(emulator, "GET", f"/v1beta/{job.name}").json()
    [entry] = op["metadata"]["output"]["inlinedResponses"]["inlinedResponses"]
    assert len(entry["response"]["embedding"]["values"]) == 8 and entry["metadata"] == {"key": "e0"}


def test_keys_faults_and_limits(emulator, emulator_factory):
    assert httpx.get(emulator.base_url + "/v1beta/batches").status_code == 403
    bad = httpx.get(emulator.base_url + "/v1beta/batches", headers={"x-goog-api-key": "nope"})
    assert bad.status_code == 400 and bad.json()["error"]["message"].startswith("API key not")
    by_query = httpx.get(emulator.base_url + "/v1/batches", params={"key": emulator.api_key})
    assert by_query.json() == {"operations": []}
    # A /v1/ call without a Google key is OpenAI's.
    assert (
        "data"
        in httpx.get(
            emulator.base_url + "/v1/batches",
            headers={"authorization": f"Bearer {emulator.api_key}"},
        ).json()
    )
    emulator.set_faults(http_error_next=1, http_error_statuses=[429], http_error_match="POST *")
    gemini = client(emulator)
    with pytest.raises(errors.ClientError) as limited:
        gemini.batches.create(model=MODEL, src=[prompt(0)])
    assert limited.value.code == 429 and limited.value.status == "RESOURCE_EXHAUSTED"
    with pytest.raises(errors.ClientError) as unknown:
        gemini.batches.create(model="nope-1", src=[prompt(0)])
    assert unknown.value.code == 404
    small_emu = emulator_factory(max_gemini_body_bytes=2000, max_gemini_file_bytes=100)
    small = client(small_emu)
    with pytest.raises(errors.ClientError, match="payload size exceeds the limit"):
        small.batches.create(model=MODEL, src=[prompt(i) for i in range(100)])
    headers = {
        "x-goog-upload-protocol": "resumable",
        "x-goog-upload-command": "start",
        "x-goog-upload-header-content-length": "101",
    }
    too_big = raw(small_emu, "POST", "/upload/v1beta/files", json={}, headers=headers)
    assert too_big.status_code == 400 and "exceeds the limit" in too_big.text
