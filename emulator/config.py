"""Settings of the emulator: what it serves, how fast time runs, and which faults it injects.

Everything here can come from `BATCHRELAY_EMULATOR_*` environment variables (nested fields
with `__`, e.g. `BATCHRELAY_EMULATOR_FAULTS__HTTP_ERROR_RATE=0.1`). Timings and faults can
also be changed while the server runs, through the admin API (`/_emulator/...`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

MB = 1024 * 1024

ValidationFaultCode = Literal[
    "token_limit_exceeded",
    "invalid_json_line",
    "missing_required_parameter",
    "invalid_url",
    "streaming_unsupported",
    "model_not_found",
    "duplicate_custom_id",
    "mismatched_model",
    "empty_file",
    "too_many_tasks",
    "invalid_request",
]

MalformedOutputKind = Literal["unparseable_line", "unknown_custom_id", "truncated", "html"]

DEFAULT_MODELS = [
    "gpt-*",
    "chatgpt-*",
    "o[0-9]*",
    "text-embedding-*",
    "omni-moderation-*",
    "text-moderation-*",
    "babbage-*",
    "davinci-*",
    "claude-*",
    "mistral-*",
    "open-mistral-*",
    "ministral-*",
    "codestral-*",
    "gemini-*",
]


class Timings(BaseModel):
    """How fast emulated time runs. Read when a batch is created (its plan is fixed then)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    validating_delay_s: float = Field(2.0, ge=0)
    processing_rate_rps: float = Field(50.0, gt=0)
    finalizing_delay_s: float = Field(2.0, ge=0)
    completion_window_s: float = Field(86400.0, gt=0)


class Faults(BaseModel):
    """Faults to inject. Per-batch faults are drawn when a batch is created."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # Per-request failures: request i of batch b fails iff hash(b, custom_id) < fraction.
    request_error_fraction: float = Field(0.0, ge=0, le=1)
    request_error_status: Literal[400, 429, 500, 503, 529] = 500
    # The next N OpenAI batches fail validation with this code.
    fail_validation_next: int = Field(0, ge=0)
    fail_validation_code: ValidationFaultCode = "token_limit_exceeded"
    # The next N batches (either shape) expire once this fraction of their lines has run.
    expire_next: int = Field(0, ge=0)
    expire_after_fraction: float = Field(0.5, ge=0, le=1)
    # The next N batches stay in `finalizing` (Anthropic: `in_progress`) this much longer.
    stuck_finalizing_next: int = Field(0, ge=0)
    stuck_finalizing_s: float = Field(0.0, ge=0)
    # The next N batches (either shape) get a malformed output file (Anthropic: results) of
    # this kind; request_counts still describe what the provider meant to write.
    malformed_output_next: int = Field(0, ge=0)
    malformed_output_kind: MalformedOutputKind = "unparseable_line"
    # HTTP errors on API calls (never on /_emulator/): a random rate, and/or the next N calls,
    # restricted to calls whose "METHOD /path" matches the glob `http_error_match`.
    http_error_rate: float = Field(0.0, ge=0, le=1)
    http_error_next: int = Field(0, ge=0)
    http_error_statuses: list[Literal[429, 500, 502, 503, 529]] = Field(
        default_factory=lambda: [429, 500, 503], min_length=1
    )
    http_error_match: str = "*"
    retry_after_s: float | None = Field(1.0, ge=0)
    # The next N API calls matching the glob `lost_reply_match` are carried out, but their
    # answer is replaced by a 500: a gateway that timed out after the provider committed the
    # work, so the caller cannot tell whether e.g. its batch was created.
    lost_reply_next: int = Field(0, ge=0)
    lost_reply_match: str = "POST */batches"
    # Downloads (file content, Anthropic results): throttle, and/or close the connection
    # after this fraction of the body; `download_cut_next` limits the cut to N downloads.
    download_bytes_per_s: int | None = Field(None, gt=0)
    download_cut_fraction: float | None = Field(None, ge=0, lt=1)
    download_cut_next: int | None = Field(None, ge=0)
    # Enqueued-token budget per model (OpenAI shape); see README for the token estimate.
    token_budget_per_model: dict[str, int] = Field(default_factory=dict)


class EmulatorConfig(BaseSettings):
    """Start-up configuration of one emulator server."""

    model_config = SettingsConfigDict(
        env_prefix="BATCHRELAY_EMULATOR_", env_nested_delimiter="__", extra="forbid"
    )

    host: str = "127.0.0.1"
    port: int = Field(8089, ge=0, le=65535)
    api_keys: list[str] = Field(default_factory=lambda: ["sk-emulator"], min_length=1)
    # None: state lives in a temporary directory removed at stop (nothing survives a restart).
    data_dir: Path | None = None

    validating_delay_s: float = Field(2.0, ge=0)
    processing_rate_rps: float = Field(50.0, gt=0)
    finalizing_delay_s: float = Field(2.0, ge=0)
    completion_window_s: float = Field(86400.0, gt=0)

    embedding_dim: int = Field(1536, ge=1, le=16384)
    models: list[str] = Field(default_factory=lambda: list(DEFAULT_MODELS))
    # Extra path serving the Anthropic message-batches API, as an Anthropic-style reseller does.
    anthropic_batches_path: str | None = None

    # Stricter checks a real provider makes (off by default): accept the API key only in these
    # header styles; require `anthropic-version` to be one of these on Anthropic routes;
    # require `api-version` to be one of these on Azure's legacy /openai/... paths.
    auth_headers: list[Literal["bearer", "x-api-key", "api-key"]] | None = None
    anthropic_versions: list[str] | None = None
    azure_api_versions: list[str] | None = None

    # Reseller emulation on uploads.
    max_file_expires_after_s: int | None = Field(None, ge=1)
    required_upload_fields: list[str] = Field(default_factory=list)

    # Provider limits (lower them in tests).
    max_batch_file_bytes: int = Field(200 * MB, ge=1)
    max_batch_requests: int = Field(50_000, ge=1)
    max_anthropic_requests: int = Field(100_000, ge=1)
    max_anthropic_body_bytes: int = Field(256 * MB, ge=1)
    max_mistral_requests: int = Field(1_000_000, ge=1)
    # A Mistral create body (inline `requests`) larger than this is refused with 413; Mistral
    # publishes no such limit, so this is the emulator's own bound on what it reads.
    max_mistral_body_bytes: int = Field(64 * MB, ge=1)
    # Gemini: the create call (inline requests) must stay under 20 MB; files hold up to 2 GB.
    max_gemini_body_bytes: int = Field(20 * MB, ge=1)
    max_gemini_file_bytes: int = Field(2048 * MB, ge=1)

    faults: Faults = Field(default_factory=Faults)

    # OpenAI-style batch event webhooks (emulator/webhooks.py); also set at run time.
    webhook_url: str | None = None
    webhook_secret: SecretStr | None = None

    def timings(self) -> Timings:
        return Timings(
            validating_delay_s=self.validating_delay_s,
            processing_rate_rps=self.processing_rate_rps,
            finalizing_delay_s=self.finalizing_delay_s,
            completion_window_s=self.completion_window_s,
        )
