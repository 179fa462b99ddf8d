"""The emulator's Mistral batch API, driven by Mistral's own SDK (`mistralai`, whose pydantic
models check every answer): files upload/list/retrieve/download/delete, jobs from input files
and inline, list filters, statuses through SUCCESS, TIMEOUT_EXCEEDED and CANCELLED, error
files, and faults in Mistral's envelope."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import orjson
import pytest
from mistralai.client import Mistral
from mistralai.client.errors import SDKError
from mistralai.client.models import BatchJob

from batchrelay.emulator import EmulatorHandle

CHAT = "/v1/chat/completions"
MODEL = "mistral-small-latest"
ENDED = {"SUCCESS", "FAILED", "TIMEOUT_EXCEEDED", "CANCELLED"}


def line(i: int, **body: object) -> dict:
    return {
        "custom_id": f"req-{i}",
        "body": {"max_tokens": 16, "messages": [{"role": "user", "content": f"say {i}"}], **body},
    }


def jsonl(lines: list[dict]) -> bytes:
    return b"".join(orjson.dumps(x) + b"\n" for x in lines)


@pytest.fixture
def client(emulator: EmulatorHandle) -> Iterator[Mistral]:
    with Mistral(api_key=emulator.api_key, server_url=emulator.mistral_base_url) as c:
        yield c


def upload(client: Mistral, lines: list[dict], name: str = "in.jsonl") -> str:
    made = client.files.upload(file={"file_name": name, "content": jsonl(lines)}, purpose="batch")
    assert (made.purpose, made.sample_type, made.source) == ("batch", "batch_request", "upload")
    return made.id


def wait(client: Mistral, job_id: str, *, inline: bool = False, timeout: float = 10) -> BatchJob:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.batch.jobs.get(job_id=job_id, inline=inline)
        if job.status in ENDED:
            return job
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} did not end")


def download(client: Mistral, file_id: str) -> dict[str, dict]:
    response = client.files.download(file_id=file_id)
    lines = [orjson.loads(x) for x in response.read().splitlines() if x.strip()]
    return {x["custom_id"]: x for x in lines}


def test_a_job_from_an_input_file_runs_to_success_and_its_results_download(client):
    file_id = upload(client, [line(i) for i in range(5)])
    listed = client.files.list(purpose="batch")
    assert file_id in {f.id for f in listed.data}
    assert client.files.retrieve(file_id=file_id).size_bytes > 0

    job = client.batch.jobs.create(
        input_files=[file_id],
        endpoint=CHAT,
        model=MODEL,
        metadata={"batchrelay_batch": "b-1"},
        timeout_hours=48,
    )
    assert job.status in {"QUEUED", "RUNNING", "SUCCESS"} and job.input_files == [file_id]
    assert job.metadata == {"batchrelay_batch": "b-1"}
    done = wait(client, job.id)
    assert done.status == "SUCCESS"
    assert (done.total_requests, done.succeeded_requests, done.failed_requests) == (5, 5, 0)
    assert done.completed_requests == 5 and done.error_file is None and done.output_file
    assert done.outputs is None  # only an inline job answers with outputs

    results = download(client, done.output_file)
    assert set(results) == {f"req-{i}" for i in range(5)}
    reply = results["req-3"]["response"]
    assert reply["status_code"] == 200
    assert reply["body"]["choices"][0]["message"]["content"] == "echo: say 3"
    assert reply["body"]["model"] == MODEL  # the job's model fills in the bodies
    out = client.files.retrieve(file_id=done.output_file)
    assert (out.purpose, out.sample_type) == ("batch", "batch_result")
    assert client.files.delete(file_id=file_id).deleted
    with pytest.raises(SDKError) as ended:
        client.batch.jobs.cancel(job_id=job.id)
    assert ended.value.status_code == 400
    assert "has already ended (SUCCESS)" in orjson.loads(ended.value.body)["message"]


def test_inline_requests_answer_with_outputs_and_the_list_filters(client):
    embed = client.batch.jobs.create(
        requests=[{"custom_id": "e", "body": {"input": "hello"}}],
        endpoint="/v1/embeddings",
        model="mistral-embed",
        metadata={"batchrelay_batch": "b-2"},
    )
    fim = client.batch.jobs.create(
        requests=[{"body": {"prompt": "def f(", "suffix": "):"}}],
        endpoint="/v1/fim/completions",
        model="codestral-latest",
    )
    assert embed.input_files == [] and embed.status != "FAILED"
    done = wait(client, embed.id, inline=True)
    assert done.status == "SUCCESS" and done.output_file
    [output] = done.outputs
    assert output["custom_id"] == "e"
    assert len(output["response"]["body"]["data"][0]["embedding"]) == 8
    [fim_out] = wait(client, fim.id, inline=True).outputs
    assert fim_out["custom_id"] == "0"  # no custom_id: the request's index
    assert fim_out["response"]["body"]["choices"][0]["message"]["content"] == "echo: def f("

    everything = client.batch.jobs.list()
    assert everything.total == 2 and [j.id for j in everything.data] == [fim.id, embed.id]
    mine = client.batch.jobs.list(metadata={"batchrelay_batch": "b-2"})
    assert [j.id for j in mine.data] == [embed.id]
    assert client.batch.jobs.list(status=["RUNNING"]).total == 0
    assert client.batch.jobs.list(status=["SUCCESS"], page_size=1, page=1).data[0].id == embed.id
    oldest_first = client.batch.jobs.list(order_by="created")
    assert [j.id for j in oldest_first.data] == [embed.id, fim.id]


def test_failed_requests_land_in_the_error_file(client, emulator):
    emulator.set_faults(request_error_fraction=0.5, request_error_status=500)
    file_id = upload(client, [line(i) for i in range(20)])
    job = wait(
        client, client.batch.jobs.create(input_files=[file_id], endpoint=CHAT, model=MODEL).id
    )
    assert job.status == "SUCCESS" and 0 < job.failed_requests < 20
    assert job.succeeded_requests + job.failed_requests == 20
    errors = download(client, job.error_file)
    assert len(errors) == job.failed_requests
    failed = next(iter(errors.values()))
    assert failed["response"]["status_code"] == 500
    assert failed["response"]["body"]["object"] == "error"  # Mistral's envelope
    assert client.files.retrieve(file_id=job.error_file).sample_type == "batch_error"


def test_a_timeout_reports_only_what_ran(client, emulator):
    emulator.set_faults(expire_next=1, expire_after_fraction=0.5)
    file_id = upload(client, [line(i) for i in range(10)])
    job = wait(
        client, client.batch.jobs.create(input_files=[file_id], endpoint=CHAT, model=MODEL).id
    )
    assert job.status == "TIMEOUT_EXCEEDED"
    assert (job.total_requests, job.succeeded_requests) == (10, 5)
    assert len(download(client, job.output_file)) == 5
    assert job.error_file is None  # requests that never ran get no line at all


def test_cancel_moves_through_cancellation_requested_to_cancelled(client, emulator):
    emulator.set_timings(processing_rate_rps=20)
    file_id = upload(client, [line(i) for i in range(200)])
    job = client.batch.jobs.create(input_files=[file_id], endpoint=CHAT, model=MODEL)
    time.sleep(0.3)
    emulator.set_timings(finalizing_delay_s=0.3)
    cancelling = client.batch.jobs.cancel(job_id=job.id)
    assert cancelling.status == "CANCELLATION_REQUESTED"
    done = wait(client, job.id)
    assert done.status == "CANCELLED" and 0 < done.succeeded_requests < 200
    assert len(download(client, done.output_file)) == done.succeeded_requests
    assert client.batch.jobs.cancel(job_id=job.id).status == "CANCELLED"  # idempotent


def test_bad_input_fails_the_job_or_the_call(client, emulator):
    bad = upload(client, [line(0), {"custom_id": "x"}])
    job = wait(client, client.batch.jobs.create(input_files=[bad], endpoint=CHAT, model=MODEL).id)
    assert job.status == "FAILED"
    assert job.errors[0].message == "line 2: Missing required parameter: 'body'."

    calls = [
        ({"endpoint": "/v1/nope", "requests": [line(0)]}, "endpoint must be one of"),
        ({"endpoint": CHAT}, "exactly one of input_files and requests"),
        ({"endpoint": CHAT, "requests": [line(0)], "input_files": [bad]}, "exactly one of"),
        ({"endpoint": CHAT, "input_files": ["no-such-file"]}, "File no-such-file not found"),
        ({"endpoint": CHAT, "requests": [{"custom_id": "a"}]}, "requests[0]: body is required"),
        ({"endpoint": CHAT, "requests": [line(0)], "metadata": {"a": 1}}, "string values"),
    ]
    # Raw calls: the SDK itself refuses some of these bodies before sending them.
    auth = {"authorization": f"Bearer {emulator.api_key}"}
    for body, message in calls:
        url = emulator.mistral_base_url + "/v1/batch/jobs"
        refused = httpx.post(url, json={"model": MODEL, **body}, headers=auth)
        assert refused.status_code in (400, 404), body
        assert message in refused.json()["message"], body
    assert client.batch.jobs.list().total == 1  # nothing half-created


def test_faults_and_auth_come_in_mistrals_envelope(client, emulator):
    emulator.set_faults(
        http_error_next=1, http_error_statuses=[503], http_error_match="GET */batch/jobs"
    )
    with pytest.raises(SDKError) as injected:
        client.batch.jobs.list()
    assert injected.value.status_code == 503
    assert orjson.loads(injected.value.body)["object"] == "error"
    assert client.batch.jobs.list().total == 0

    emulator.set_faults(lost_reply_next=1, lost_reply_match="POST */batch/jobs")
    with pytest.raises(SDKError) as lost:
        client.batch.jobs.create(requests=[line(0)], endpoint=CHAT, model=MODEL)
    assert lost.value.status_code == 500
    assert client.batch.jobs.list().total == 1  # the job was created all the same

    emulator.set_faults(download_cut_next=1, download_cut_fraction=0.5)
    [job] = client.batch.jobs.list().data
    done = wait(client, job.id)
    with pytest.raises(Exception, match="peer closed connection"):
        client.files.download(file_id=done.output_file).read()

    stranger = Mistral(api_key="wrong", server_url=emulator.mistral_base_url)
    with stranger, pytest.raises(SDKError) as denied:
        stranger.batch.jobs.list()
    assert denied.value.status_code == 401
    big = "x" * (emulator.config.max_mistral_body_bytes + 1)
    response = httpx.post(
        emulator.mistral_base_url + "/v1/batch/jobs",
        content=big,
        headers={"authorization": f"Bearer {emulator.api_key}"},
    )
    assert response.status_code == 413 and response.json()["object"] == "error"
