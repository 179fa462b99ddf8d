"""Each provider kind's facts, in one place: what its Batch API accepts and how a profile of
that kind is filled in.

A kind is a wire protocol (`openai` for OpenAI and its resellers, `azure`, `anthropic` for
Anthropic-style message batches, `mistral` for Mistral batch jobs, `gemini` for the Gemini
Developer API's Batch Mode). The profile settings (defaults and checks), intake and
`batchrelay run` all read these facts, so a provider changing a limit is a change here only.
Adding a kind is one `ProviderKind` here, its name in `settings.Kind` and an adapter in
`worker.providers.ADAPTERS` (a test checks the three agree).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

MB = 1024 * 1024
DAY_S = 86_400

OPENAI_ENDPOINTS = (
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/completions",
    "/v1/moderations",
)
MESSAGES_ENDPOINT = "/v1/messages"
# The endpoints of Mistral's batch API that batchrelay sends (docs/providers.md lists the rest).
MISTRAL_ENDPOINTS = (
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/fim/completions",
    "/v1/moderations",
)
# Gemini's endpoints are methods of a model: a request's path names the model
# (`/v1beta/models/{model}:generateContent`), intake takes the model from it and groups by
# the method alone.
GEMINI_ENDPOINTS = ("generateContent", "embedContent")
# OpenAI and Anthropic finish a batch within 24 hours or expire it.
COMPLETION_WINDOWS: Mapping[str, int] = MappingProxyType({"24h": DAY_S})
# Longer windows some providers accept: whole days up to a week.
DAY_WINDOWS: Mapping[str, int] = MappingProxyType(
    {"24h": DAY_S, **{f"{d}d": d * DAY_S for d in range(1, 8)}}
)
# A Mistral batch whose JSONL is at most this large travels inline in the create call.
MISTRAL_INLINE_MAX_BYTES = 1 * MB
# Settings a kind without input files (requests inline in the create call) does not have.
FILE_SETTINGS = frozenset({"file_expires_after_s", "file_lifetime_cap_s", "extra_upload_fields"})


@dataclass(frozen=True)
class ProviderKind:
    """What one wire protocol's Batch API accepts, and the profile defaults that follow."""

    name: str
    endpoints: tuple[str, ...]
    max_requests_per_batch: int
    #: The input file's size; for inline requests, the whole create body.
    max_bytes_per_batch: int
    max_line_bytes: int
    #: The header the API key travels in unless a profile says otherwise.
    auth_style: str
    #: Input files are uploaded first (False: the requests travel in the create call; an
    #: adapter may also send a small batch inline, see `BatchAdapter.uploads`).
    uploads_files: bool
    #: The input-file expiry (seconds) an upload may ask for; None without input files.
    file_expiry_s: tuple[int, int] | None
    #: Profile settings only this kind has, beyond the file settings.
    own_settings: frozenset[str] = frozenset()
    #: Profile defaults only this kind has.
    defaults: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))
    completion_windows: Mapping[str, int] = field(default_factory=lambda: COMPLETION_WINDOWS)
    #: The file settings a kind that uploads files honours.
    file_settings: frozenset[str] = FILE_SETTINGS

    @property
    def settings(self) -> frozenset[str]:
        """Every kind-specific profile setting that applies to this kind."""
        return self.own_settings | (self.file_settings if self.uploads_files else frozenset())


OPENAI = ProviderKind(
    name="openai",
    endpoints=OPENAI_ENDPOINTS,
    max_requests_per_batch=50_000,
    max_bytes_per_batch=200 * MB,
    max_line_bytes=10 * MB,
    auth_style="bearer",
    uploads_files=True,
    file_expiry_s=(3_600, 30 * DAY_S),
    own_settings=frozenset({"vendor"}),
)


@dataclass(frozen=True)
class Vendor:
    """An OpenAI-style vendor (`kind = "openai"`, `vendor = ...`) whose Batch API differs from
    OpenAI's only in these facts; its limits and windows replace the kind's defaults."""

    name: str
    endpoints: tuple[str, ...]
    max_requests_per_batch: int
    max_bytes_per_batch: int
    completion_windows: Mapping[str, int] = field(default_factory=lambda: COMPLETION_WINDOWS)
    #: Where input files are uploaded, and the purpose they are uploaded with.
    upload_path: str = "/files"
    upload_purpose: str = "batch"
    #: A form field that must name the uploaded file as well (Together: `file_name`).
    upload_name_field: str | None = None
    #: Input lines name `method` and `url` (False: only `custom_id` and `body`).
    lines_name_method_url: bool = True
    #: Batches take `metadata`; without it, reconciling matches the claim's input file.
    metadata: bool = True


VENDORS: Mapping[str, Vendor] = MappingProxyType(
    {
        v.name: v
        for v in (
            Vendor("openai", OPENAI_ENDPOINTS, 50_000, 200 * MB),
            # Groq: https://api.groq.com/openai/v1, chat completions, windows up to 7 days.
            Vendor(
                "groq",
                ("/v1/chat/completions",),
                50_000,
                100 * MB,
                completion_windows=DAY_WINDOWS,
            ),
            # Together: https://api.together.ai/v1, uploads at /files/upload, no metadata.
            Vendor(
                "together",
                ("/v1/chat/completions",),
                50_000,
                100 * MB,
                upload_path="/files/upload",
                upload_purpose="batch-api",
                upload_name_field="file_name",
                lines_name_method_url=False,
                metadata=False,
            ),
        )
    }
)
AZURE = ProviderKind(
    name="azure",
    endpoints=OPENAI_ENDPOINTS,
    max_requests_per_batch=100_000,
    max_bytes_per_batch=200 * MB,
    max_line_bytes=10 * MB,
    auth_style="api-key",
    uploads_files=True,
    file_expiry_s=(14 * DAY_S, 30 * DAY_S),
    own_settings=frozenset({"api_version"}),
)
ANTHROPIC = ProviderKind(
    name="anthropic",
    endpoints=(MESSAGES_ENDPOINT,),
    max_requests_per_batch=100_000,
    max_bytes_per_batch=256 * MB,
    max_line_bytes=10 * MB,
    auth_style="x-api-key",
    uploads_files=False,
    file_expiry_s=None,
    own_settings=frozenset({"anthropic_version", "batches_path"}),
    defaults=MappingProxyType(
        {"anthropic_version": "2023-06-01", "batches_path": "/v1/messages/batches"}
    ),
)

# Mistral: input files, or inline `requests` up to `inline_max_bytes`; `completion_window`
# becomes the job's `timeout_hours`. The file `expiry` form field is not sent (its unit is
# undocumented), so the file lifetime settings do not apply.
MISTRAL = ProviderKind(
    name="mistral",
    endpoints=MISTRAL_ENDPOINTS,
    max_requests_per_batch=1_000_000,
    max_bytes_per_batch=512 * MB,
    max_line_bytes=10 * MB,
    auth_style="bearer",
    uploads_files=True,
    file_expiry_s=None,
    own_settings=frozenset({"inline_max_bytes"}),
    defaults=MappingProxyType({"inline_max_bytes": MISTRAL_INLINE_MAX_BYTES}),
    completion_windows=DAY_WINDOWS,
    file_settings=frozenset({"extra_upload_fields"}),
)

GEMINI = ProviderKind(
    name="gemini",
    endpoints=GEMINI_ENDPOINTS,
    # Google states no request count per batch; this is our default, not a provider limit.
    max_requests_per_batch=100_000,
    # The JSONL input file; batches under the 20 MB create limit travel inline instead.
    max_bytes_per_batch=2 * 1024 * MB,
    max_line_bytes=20 * MB,
    auth_style="x-goog-api-key",
    # The adapter uploads an input file itself, inside `create`, only for batches too large to
    # send inline; Google keeps files 48 h whatever the upload asks, so no file settings.
    uploads_files=False,
    file_expiry_s=None,
    own_settings=frozenset({"api_version"}),
    defaults=MappingProxyType({"api_version": "v1beta", "completion_window": "48h"}),
    # A batch still pending or running after 48 hours is EXPIRED.
    completion_windows=MappingProxyType({"48h": 2 * DAY_S}),
)

KINDS: Mapping[str, ProviderKind] = MappingProxyType(
    {k.name: k for k in (OPENAI, AZURE, ANTHROPIC, MISTRAL, GEMINI)}
)
# Every kind-specific profile setting, whichever kind has it.
KIND_SETTINGS = frozenset().union(*(k.settings for k in KINDS.values()))


def kinds_with(setting: str) -> tuple[str, ...]:
    """The kinds a kind-specific profile setting applies to, in declaration order."""
    return tuple(k.name for k in KINDS.values() if setting in k.settings)
