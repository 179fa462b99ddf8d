"""OpenAI Files through the official SDK (strict), plus the reseller upload options."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests._emulator import openai_client
from tests.emulator.helpers import jsonl, request_line, upload

CONTENT = jsonl([request_line(0), request_line(1)])


def test_upload_retrieve_content_delete(emulator_openai):
    created = emulator_openai.files.create(
        file=("input.jsonl", CONTENT, "application/jsonl"), purpose="batch"
    )
    assert created.id.startswith("file-")
    assert (created.object, created.purpose, created.status) == ("file", "batch", "processed")
    assert created.bytes == len(CONTENT)
    assert created.filename == "input.jsonl"
    assert created.expires_at == created.created_at + 30 * 86400
    assert created.status_details is None
    assert emulator_openai.files.retrieve(created.id) == created
    assert emulator_openai.files.content(created.id).content == CONTENT
    deleted = emulator_openai.files.delete(created.id)
    assert (deleted.id, deleted.deleted, deleted.object) == (created.id, True, "file")
    with pytest.raises(openai.NotFoundError):
        emulator_openai.files.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        emulator_openai.files.content(created.id)
    with pytest.raises(openai.NotFoundError):
        emulator_openai.files.delete(created.id)


def test_upload_from_open_file(emulator_openai, tmp_path):
    path = tmp_path / "from_disk.jsonl"
    path.write_bytes(CONTENT)
    with path.open("rb") as fh:
        created = emulator_openai.files.create(file=fh, purpose="batch")
    assert created.filename == "from_disk.jsonl" and created.bytes == len(CONTENT)


def test_non_batch_purpose_has_no_default_expiry(emulator_openai):
    created = emulator_openai.files.create(
        file=("notes.txt", b"hi", "text/plain"), purpose="user_data"
    )
    assert created.expires_at is None and created.purpose == "user_data"


def test_expires_after(emulator_openai):
    created = upload(
        emulator_openai, [request_line(0)], expires_after={"anchor": "created_at", "seconds": 3600}
    )
    assert created.expires_at == created.created_at + 3600
    for seconds in (3599, 2592001):
        with pytest.raises(openai.BadRequestError) as info:
            upload(
                emulator_openai,
                [request_line(0)],
                expires_after={"anchor": "created_at", "seconds": seconds},
            )
        assert info.value.body["param"] == "expires_after.seconds"


def test_list_pagination_order_and_purpose(emulator_openai):
    ids = [upload(emulator_openai, [request_line(i)], name=f"f{i}.jsonl").id for i in range(5)]
    other = emulator_openai.files.create(file=("x.txt", b"x", "text/plain"), purpose="user_data")
    everything = [f.id for f in emulator_openai.files.list(limit=2)]
    assert everything == [other.id, *reversed(ids)]
    ascending = [f.id for f in emulator_openai.files.list(limit=2, order="asc", purpose="batch")]
    assert ascending == ids
    page = emulator_openai.files.list(limit=2, order="asc", purpose="batch")
    assert page.has_more is True and len(page.data) == 2
    tail = emulator_openai.files.list(limit=10, order="asc", after=ids[3], purpose="batch")
    assert [f.id for f in tail.data] == [ids[4]] and tail.has_more is False
    raw = httpx.get(
        str(emulator_openai.base_url) + "files",
        params={"limit": 2, "order": "asc"},
        headers={"Authorization": f"Bearer {emulator_openai.api_key}"},
    ).json()
    assert (raw["object"], raw["first_id"], raw["last_id"]) == ("list", ids[0], ids[1])


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("input.csv", CONTENT, "Invalid file format for Batch API. Must be .jsonl"),
        (
            "input.jsonl",
            b'{"a": "\xff\xfe"}\n',
            "Invalid file for Batch API. Must be utf-8 encoded",
        ),
    ],
)
def test_batch_upload_checks(emulator_openai, name, content, message):
    with pytest.raises(openai.BadRequestError) as info:
        emulator_openai.files.create(file=(name, content, "application/jsonl"), purpose="batch")
    assert info.value.body == {
        "message": message,
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }


def test_file_too_large(emulator_factory):
    emu = emulator_factory(max_batch_file_bytes=len(CONTENT) - 1)
    client = openai_client(emu)
    with pytest.raises(openai.BadRequestError) as info:
        client.files.create(file=("input.jsonl", CONTENT, "application/jsonl"), purpose="batch")
    assert info.value.body["message"] == "File is too large."
    ok = client.files.create(
        file=("small.jsonl", CONTENT[:10], "application/jsonl"), purpose="batch"
    )
    assert ok.bytes == 10


def test_bad_purpose_and_missing_parts(emulator, emulator_openai):
    with pytest.raises(openai.BadRequestError) as info:
        emulator_openai.files.create(file=("a.jsonl", CONTENT, "application/jsonl"), purpose="nope")  # type: ignore[arg-type]
    assert info.value.body["param"] == "purpose"
    headers = {"Authorization": f"Bearer {emulator.api_key}"}
    url = emulator.openai_base_url + "/files"
    no_file = httpx.post(url, data={"purpose": "batch"}, files={"x": ("x", b"")}, headers=headers)
    assert no_file.status_code == 400 and no_file.json()["error"]["param"] == "file"
    no_purpose = httpx.post(url, files={"file": ("a.jsonl", CONTENT)}, headers=headers)
    assert no_purpose.status_code == 400 and no_purpose.json()["error"]["param"] == "purpose"
    not_multipart = httpx.post(url, json={"purpose": "batch"}, headers=headers)
    assert not_multipart.status_code == 400
    bad_anchor = httpx.post(
        url,
        data={"purpose": "batch", "expires_after[anchor]": "now", "expires_after[seconds]": "3600"},
        files={"file": ("a.jsonl", CONTENT)},
        headers=headers,
    )
    assert bad_anchor.json()["error"]["param"] == "expires_after.anchor"


def test_extra_upload_fields_are_kept(emulator, emulator_openai):
    created = upload(
        emulator_openai, [request_line(0)], extra_body={"target_model_names": "gpt-4o-batch"}
    )
    details = httpx.get(
        f"{emulator.base_url}/_emulator/files/{created.id}",
        headers={"Authorization": f"Bearer {emulator.api_key}"},
    ).json()
    assert details["extra_fields"] == {"target_model_names": "gpt-4o-batch"}
    assert details["id"] == created.id


def test_required_upload_field(emulator_factory):
    emu = emulator_factory(required_upload_fields=["target_model_names"])
    client = openai_client(emu)
    with pytest.raises(openai.BadRequestError) as info:
        upload(client, [request_line(0)])
    assert info.value.body["param"] == "target_model_names"
    assert "target_model_names" in info.value.body["message"]
    created = upload(client, [request_line(0)], extra_body={"target_model_names": "gpt-4o-batch"})
    assert created.purpose == "batch"


def test_maximum_file_lifetime(emulator_factory):
    emu = emulator_factory(max_file_expires_after_s=172800)
    client = openai_client(emu)
    capped = upload(client, [request_line(0)])
    assert capped.expires_at == capped.created_at + 172800
    short = upload(
        client, [request_line(0)], expires_after={"anchor": "created_at", "seconds": 7200}
    )
    assert short.expires_at == short.created_at + 7200
    with pytest.raises(openai.BadRequestError) as info:
        upload(client, [request_line(0)], expires_after={"anchor": "created_at", "seconds": 172801})
    assert info.value.body["param"] == "expires_after.seconds"
    assert "at most 172800 seconds" in info.value.body["message"]


def test_dot_style_expiry_fields(emulator):
    response = httpx.post(
        emulator.openai_base_url + "/files",
        data={
            "purpose": "batch",
            "expires_after.anchor": "created_at",
            "expires_after.seconds": "1209600",
        },
        files={"file": ("a.jsonl", CONTENT)},
        headers={"Authorization": f"Bearer {emulator.api_key}"},
    )
    body = response.json()
    assert body["expires_at"] == body["created_at"] + 1209600
