"""Files and batches: metadata records in memory, written through to disk; contents on disk.

File contents are always blobs on disk, so memory does not grow with file size. Without a
data directory the store lives in a temporary directory deleted at close, which is what
"in memory" means here: nothing survives a restart.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
import shutil
import string
import tempfile
import threading
from pathlib import Path
from typing import Literal

import orjson
from pydantic import BaseModel, Field

_ALPHABET = string.ascii_letters + string.digits


def random_id(prefix: str, length: int = 24) -> str:
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(length))


class FileRecord(BaseModel):
    id: str
    filename: str
    purpose: str
    bytes: int
    created_at: int
    expires_at: int | None = None
    seq: int = 0
    extra_fields: dict[str, str] = Field(default_factory=dict)
    # Internal blobs (Anthropic request spools and results) are not listed under /v1/files.
    internal: bool = False
    # Fault: downloads answer an HTML error page instead of the content.
    serves_html: bool = False


class BatchRecord(BaseModel):
    """One batch of either shape: what was asked, the plan drawn at creation, and outcomes."""

    id: str
    shape: Literal["openai", "anthropic", "gemini"]
    flavor: Literal["openai", "azure", "anthropic", "mistral", "groq", "together", "gemini"]
    endpoint: str
    input_file_id: str
    completion_window: str = "24h"
    metadata: dict[str, str] | None = None
    # Mistral: the files the job was created from. Mistral and Gemini: whether the requests
    # came inline (Gemini: so do the results).
    input_files: list[str] = Field(default_factory=list)
    inline: bool = False
    output_expires_after_s: int | None = None
    # Gemini: the batch's displayName.
    display_name: str = ""
    created_at: float
    seq: int = 0
    # Plan, fixed at creation.
    validating_delay_s: float = 0.0
    rate_rps: float = 1.0
    finalizing_delay_s: float = 0.0
    window_s: float | None = 86400.0
    fault_validation_code: str | None = None
    fault_expire_fraction: float | None = None
    fault_stuck_s: float = 0.0
    fault_malformed_output: str | None = None
    fault_error_fraction: float = 0.0
    fault_error_status: int = 500
    # Known after validation (Anthropic: at creation).
    model: str | None = None
    total: int = 0
    planned_failures: int = 0
    enqueued_tokens: int = 0
    in_progress_at: float | None = None
    failed_at: float | None = None
    errors: list[dict] | None = None
    # When processing stops, how, and how many lines ran by then.
    run_end_at: float | None = None
    run_end_kind: Literal["done", "expired", "cancelled"] | None = None
    processed: int = 0
    finalizing_at: float | None = None
    cancelling_at: float | None = None
    terminal_at: float | None = None
    # Outcomes, once the result files are written.
    files_written_at: float | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    counts: dict[str, int] = Field(default_factory=dict)
    usage: dict[str, int] = Field(default_factory=dict)


class Store:
    """Thread-safe registry of file and batch records; callers hold `lock` for compound steps."""

    def __init__(self, data_dir: Path | None) -> None:
        self.persistent = data_dir is not None
        if data_dir is None:
            self.root = Path(tempfile.mkdtemp(prefix="batchrelay-emulator-"))
        else:
            self.root = Path(data_dir)
        self.blobs = self.root / "blobs"
        self.tmp = self.root / "tmp"
        self._file_meta = self.root / "files"
        self._batch_meta = self.root / "batches"
        for path in (self.blobs, self.tmp, self._file_meta, self._batch_meta):
            path.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        self.files: dict[str, FileRecord] = {}
        self.batches: dict[str, BatchRecord] = {}
        self._seq = itertools.count(1)
        self._load()

    def _load(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(exist_ok=True)
        highest = 0
        for path in self._file_meta.glob("*.json"):
            record = FileRecord.model_validate_json(path.read_bytes())
            self.files[record.id] = record
            highest = max(highest, record.seq)
        for path in self._batch_meta.glob("*.json"):
            batch = BatchRecord.model_validate_json(path.read_bytes())
            self.batches[batch.id] = batch
            highest = max(highest, batch.seq)
        self._seq = itertools.count(highest + 1)

    def close(self) -> None:
        if not self.persistent:
            shutil.rmtree(self.root, ignore_errors=True)

    def next_seq(self) -> int:
        return next(self._seq)

    def tmp_path(self, suffix: str = "") -> Path:
        return self.tmp / (secrets.token_hex(8) + suffix)

    def blob_path(self, file_id: str) -> Path:
        return self.blobs / file_id

    def _write_meta(self, directory: Path, record: BaseModel, record_id: str) -> None:
        target = directory / f"{record_id}.json"
        tmp = directory / f".{record_id}.{secrets.token_hex(4)}.tmp"
        tmp.write_bytes(orjson.dumps(record.model_dump(mode="json")))
        os.replace(tmp, target)

    # Files.

    def put_file(self, record: FileRecord) -> None:
        with self.lock:
            if not record.seq:
                record.seq = self.next_seq()
            self.files[record.id] = record
            self._write_meta(self._file_meta, record, record.id)

    def get_file(self, file_id: str) -> FileRecord | None:
        return self.files.get(file_id)

    def delete_file(self, file_id: str) -> bool:
        with self.lock:
            record = self.files.pop(file_id, None)
            if record is None:
                return False
            (self._file_meta / f"{file_id}.json").unlink(missing_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.blob_path(file_id).unlink()
        return True

    def list_files(self) -> list[FileRecord]:
        with self.lock:
            return sorted((f for f in self.files.values() if not f.internal), key=lambda f: f.seq)

    # Batches.

    def save_batch(self, batch: BatchRecord) -> None:
        with self.lock:
            if not batch.seq:
                batch.seq = self.next_seq()
            self.batches[batch.id] = batch
            self._write_meta(self._batch_meta, batch, batch.id)

    def get_batch(self, batch_id: str) -> BatchRecord | None:
        return self.batches.get(batch_id)

    def delete_batch(self, batch_id: str) -> None:
        with self.lock:
            self.batches.pop(batch_id, None)
            (self._batch_meta / f"{batch_id}.json").unlink(missing_ok=True)

    def list_batches(self, shape: str) -> list[BatchRecord]:
        """Newest first."""
        with self.lock:
            return sorted(
                (b for b in self.batches.values() if b.shape == shape), key=lambda b: -b.seq
            )

    def wipe(self) -> None:
        with self.lock:
            for file_id in list(self.files):
                self.delete_file(file_id)
            for batch_id in list(self.batches):
                self.delete_batch(batch_id)
