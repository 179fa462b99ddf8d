"""The bad-input matrix, one table per surface, each row refused with a specific error and
nothing stored:

- MATRIX: requests, through `submit()`, `submit_many()` and, where a batch line can say it,
  `batchrelay run` (exit 2 naming the line);
- RUN_MATRIX: what only a batch file can get wrong (`batchrelay run`, exit 2 naming the line);
- CONFIG_MATRIX: settings, through `BatchRelay()`, `batchrelay run` and a real
  `celery -A batchrelay.worker worker` (both exit 78 naming the setting).

README.md carries the same tables (checked below)."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from typer.testing import CliRunner, Result

from batchrelay import (
    BatchRelay,
    CeleryTask,
    IdempotencyConflictError,
    InvalidCallbackError,
    InvalidMetadataError,
    InvalidRequestError,
    MissingModelError,
    RelayUnavailableError,
    RequestTooLargeError,
    StreamingNotSupportedError,
    SubmitTooLargeError,
    UnknownEndpointError,
    UnknownModelError,
    Webhook,
)
from batchrelay.cli import app
from batchrelay.config import ConfigurationError, Settings
from batchrelay.config.urls import RedisUrl
from tests._redis import free_port
from tests._stack import ROOT, settings_env
from tests.relay.harness import CHAT, chat, relay_settings

OK = chat("fine")
MESSAGES = "/v1/messages"
README = ROOT / "README.md"

# The `batchrelay run` column: "yes" = a batch line can say it, and `run` refuses the file
# (exit 2, naming the line); otherwise why a batch line cannot say it.
YES = "yes"
NOT_JSON = "n/a (not expressible in JSON)"
NO_METADATA = "n/a (`run` keeps only the custom_id as metadata)"
NO_CALLBACK = "n/a (a batch line has no callback)"
NO_KEY = "n/a (`run` derives the key from the file)"
NOT_UTF8 = "n/a (a file is UTF-8: `not valid JSON`)"
NAN = float("nan")

# (README wording, endpoint, body, keyword arguments, exception, words the message contains, run)
MATRIX = [
    ("unknown endpoint", "/v1/images/nope", OK, {}, UnknownEndpointError, "not served", YES),
    ("missing model", CHAT, {"messages": []}, {}, MissingModelError, "no 'model'", YES),
    ("model not a string", CHAT, {"model": 4}, {}, MissingModelError, "must be a string", YES),
    ("unknown model", CHAT, chat("x", "llama-3"), {}, UnknownModelError, "matches no provider", YES),
    ("body not a JSON object", CHAT, ["x"], {}, InvalidRequestError, "JSON object", YES),
    ("body not JSON-serialisable", CHAT, {**OK, "x": {1, 2}}, {}, InvalidRequestError, "JSON", NOT_JSON),
    ("body over the line limit", CHAT, chat("x" * 3000), {}, RequestTooLargeError, "max_line_bytes", YES),
    ("`stream: true`", CHAT, {**OK, "stream": True}, {}, StreamingNotSupportedError, "stream", YES),
    ("Messages request without `max_tokens`", MESSAGES, chat("x", "claude-sonnet-4-5"), {}, InvalidRequestError, "max_tokens", YES),
    ("non-JSON metadata", CHAT, OK, {"metadata": {"k": b"\x00"}}, InvalidMetadataError, "JSON", NO_METADATA),
    ("metadata not an object", CHAT, OK, {"metadata": "tag"}, InvalidMetadataError, "object", NO_METADATA),
    ("oversized metadata", CHAT, OK, {"metadata": {"k": "v" * 17_000}}, InvalidMetadataError, "limit", NO_METADATA),
    ("callback that is a bare string", CHAT, OK, {"callback": "http://a.example/"}, InvalidCallbackError, "Webhook(url)", NO_CALLBACK),
    ("callback with a non-HTTP scheme", CHAT, OK, {"callback": Webhook("ftp://a.example/x")}, InvalidCallbackError, "scheme", NO_CALLBACK),
    ("callback with credentials in the URL", CHAT, OK, {"callback": Webhook("https://u:p@a.example/")}, InvalidCallbackError, "credentials", NO_CALLBACK),
    ("callback with a port outside 1-65535", CHAT, OK, {"callback": Webhook("http://93.184.216.34:120539/x")}, InvalidCallbackError, "outside 1-65535", NO_CALLBACK),
    ("callback to a loopback address", CHAT, OK, {"callback": Webhook("http://127.0.0.2/x")}, InvalidCallbackError, "loopback", NO_CALLBACK),
    ("callback to a name that resolves to loopback", CHAT, OK, {"callback": Webhook("http://localhost/x")}, InvalidCallbackError, "loopback", NO_CALLBACK),
    ("callback to a private address", CHAT, OK, {"callback": Webhook("http://192.168.1.5/x")}, InvalidCallbackError, "private", NO_CALLBACK),
    ("callback to a link-local address", CHAT, OK, {"callback": Webhook("http://169.254.169.254/")}, InvalidCallbackError, "link-local", NO_CALLBACK),
    ("callback host that does not resolve", CHAT, OK, {"callback": Webhook("https://nowhere.invalid/")}, InvalidCallbackError, "resolve", NO_CALLBACK),
    ("idempotency key that is empty", CHAT, OK, {"idempotency_key": ""}, InvalidRequestError, "idempotency_key", NO_KEY),
    ("idempotency key that is not valid Unicode", CHAT, OK, {"idempotency_key": "bad\ud800"}, InvalidRequestError, "idempotency_key is not valid Unicode", NO_KEY),
    ("model that is not valid Unicode", CHAT, chat("x", "gpt-\ud800"), {}, InvalidRequestError, "body 'model' is not valid Unicode", NOT_UTF8),
    ("NaN or Infinity in the body", CHAT, {**OK, "temperature": NAN}, {}, InvalidRequestError, "body.temperature is nan", NOT_JSON),
    ("NaN or Infinity in the metadata", CHAT, OK, {"metadata": {"score": -float("inf")}}, InvalidMetadataError, "metadata.score is -inf", NO_METADATA),
]  # fmt: skip
# Rows with their own tests below: (README wording, the `batchrelay run` column).
REUSED_KEY = ("idempotency key reused with another endpoint, body, callback or metadata", NO_KEY)
UNREACHABLE = ("Redis that cannot be reached", "exit 1, the same message")
TOO_MUCH = ("`submit_many()` call over the total size limit", "n/a (`run` does not call `submit_many`: it streams the file into parts on disk)")  # fmt: skip


def rows(table: list[tuple]) -> list[Any]:
    """A table's rows for parametrize, each named by its README wording."""
    return [pytest.param(*row, id=row[0]) for row in table]


def line(custom_id: str = "bad", endpoint: str = CHAT, body: Any = OK, **extra: Any) -> bytes:
    entry = {"custom_id": custom_id, "method": "POST", "url": endpoint, "body": body, **extra}
    return orjson.dumps({k: v for k, v in entry.items() if v is not None})


# Batch-file lines only: (README wording, the file's third line, words the message contains).
# None as the line: a file of blank lines (no line to name).
RUN_MATRIX = [
    ("line that is not JSON", b'{"custom_id": "bad",', "not valid JSON"),
    ("line that is not a JSON object", b"[1, 2]", "must be a JSON object, got list"),
    ("line without a `custom_id`", line(custom_id=None), "needs 'custom_id'"),
    ("`custom_id` used twice", line("q0"), "custom_id 'q0' repeats line 1"),
    ("`custom_id` too long to keep with the request", line("c" * 17_000), "custom_id is 17,000 characters, too long"),
    ("`method` other than POST", line(method="GET"), "'method' must be \"POST\""),
    ("`url` that is not an endpoint path", line(endpoint="https://api.openai.com/v1/chat/completions"), "'url' must be an endpoint path"),
    ("unknown field in a line", line(metadata={"k": "v"}), "unknown field(s) ['metadata']"),
    ("neither an OpenAI nor an Anthropic line", b'{"custom_id": "bad", "prompt": "hi"}', "neither an OpenAI batch line"),
    ("file without requests", None, "holds no requests"),
]  # fmt: skip

PROVIDER = {"name": "oa", "base_url": "https://api.openai.com/v1", "api_key": "sk-secret-1"}
CONF = "`ConfigurationError`"
EXIT = "exit 78"
NO_PROVIDER_NEEDED = "n/a (a producer may run without providers)"
PRICES_ONLY_RUN = "n/a (only `run` prices)"


def providers(**change: Any) -> str:
    return orjson.dumps(
        [{k: v for k, v in {**PROVIDER, **change}.items() if v is not None}]
    ).decode()


def secret(raw: bytes) -> str:
    return '["whsec_' + base64.b64encode(raw).decode() + '"]'


# (README wording, environment changes (None unsets), the setting the error names, words it
#  contains, BatchRelay(), `batchrelay run`, the worker). {tmp} is a folder holding bad.toml.
CONFIG_MATRIX = [
    ("no provider profile", {"BATCHRELAY_PROVIDERS": None}, "BATCHRELAY_PROVIDERS", "no provider profile", NO_PROVIDER_NEEDED, EXIT, EXIT),
    ("provider without an API key", {"BATCHRELAY_PROVIDERS": providers(api_key=None)}, "BATCHRELAY_PROVIDERS (providers.0.api_key)", "Field required", CONF, EXIT, EXIT),
    ("provider `base_url` that is not http(s)", {"BATCHRELAY_PROVIDERS": providers(base_url="ftp://api.example/v1")}, "BATCHRELAY_PROVIDERS (providers.0.base_url)", "http(s) URL", CONF, EXIT, EXIT),
    ("any URL with credentials in a bad setting", {"BATCHRELAY_PROVIDERS": providers(base_url="ftp://u:url-pw-1@x/v1")}, "ftp://u:***@x/v1", "http(s) URL", CONF, EXIT, EXIT),
    ("provider `base_url` without a host", {"BATCHRELAY_PROVIDERS": providers(base_url="https:///v1")}, "BATCHRELAY_PROVIDERS (providers.0.base_url)", "http(s) URL", CONF, EXIT, EXIT),
    ("misspelt field in a provider profile", {"BATCHRELAY_PROVIDERS": providers(model="gpt-4o")}, "BATCHRELAY_PROVIDERS (providers.0.model)", "Extra inputs are not permitted", CONF, EXIT, EXIT),
    ("provider fallback naming no profile", {"BATCHRELAY_PROVIDERS": providers(fallbacks=["spare"])}, "BATCHRELAY_PROVIDERS (providers.0.fallbacks)", "no profile named 'spare'", CONF, EXIT, EXIT),
    ("`BATCHRELAY_PROVIDERS` that is not JSON", {"BATCHRELAY_PROVIDERS": "[{name: oa}]"}, "BATCHRELAY_PROVIDERS in the environment", "not valid JSON", CONF, EXIT, EXIT),
    ("`lease_s` not above `http_timeout_s`", {"BATCHRELAY_LEASE_S": "30", "BATCHRELAY_HTTP_TIMEOUT_S": "60"}, "lease_s", "must exceed http_timeout_s", CONF, EXIT, EXIT),
    ("`task_time_limit_s` not below `visibility_timeout_s`", {"BATCHRELAY_TASK_TIME_LIMIT_S": "9999"}, "task_time_limit_s", "below visibility_timeout_s", CONF, EXIT, EXIT),
    ("`result_retention_s` within the delivery retries", {"BATCHRELAY_RESULT_RETENTION_S": "600", "BATCHRELAY_DELIVERY_RETRY_SCHEDULE_S": "[300, 600]"}, "result_retention_s", "delivery retry schedule", CONF, EXIT, EXIT),
    ("webhook secret without `whsec_`", {"BATCHRELAY_WEBHOOK_SECRETS": '["not-a-secret"]'}, "BATCHRELAY_WEBHOOK_SECRETS", "must start with 'whsec_'", CONF, EXIT, EXIT),
    ("webhook secret that is not base64", {"BATCHRELAY_WEBHOOK_SECRETS": '["whsec_!!not base64!!"]'}, "BATCHRELAY_WEBHOOK_SECRETS", "must be base64", CONF, EXIT, EXIT),
    ("webhook secret too short", {"BATCHRELAY_WEBHOOK_SECRETS": secret(b"short")}, "BATCHRELAY_WEBHOOK_SECRETS", "24-64 bytes", CONF, EXIT, EXIT),
    ("number out of range", {"BATCHRELAY_POLL_INTERVAL_S": "-1"}, "BATCHRELAY_POLL_INTERVAL_S", "greater than 0", CONF, EXIT, EXIT),
    ("number that is not a number", {"BATCHRELAY_MAX_ATTEMPTS": "many"}, "BATCHRELAY_MAX_ATTEMPTS", "valid integer", CONF, EXIT, EXIT),
    ("Redis URL of another scheme", {"BATCHRELAY_REDIS_URL": "http://127.0.0.1:1/0"}, "BATCHRELAY_REDIS_URL", "redis://", CONF, EXIT, EXIT),
    ("`BATCHRELAY_CONFIG_FILE` that does not exist", {"BATCHRELAY_CONFIG_FILE": "{tmp}/missing.toml"}, "BATCHRELAY_CONFIG_FILE", "does not exist", CONF, EXIT, EXIT),
    ("`BATCHRELAY_CONFIG_FILE` that is not TOML", {"BATCHRELAY_CONFIG_FILE": "{tmp}/bad.toml"}, "BATCHRELAY_CONFIG_FILE", "not valid TOML", CONF, EXIT, EXIT),
    ("price for a new model without `input`", {"BATCHRELAY_PRICES": '{"my-model": {"output": 2}}'}, "BATCHRELAY_PRICES (my-model)", "needs at least 'input'", PRICES_ONLY_RUN, EXIT, PRICES_ONLY_RUN),
    ("webhook allow-list entry that is not a host", {"BATCHRELAY_WEBHOOK_ALLOW_HOSTS": '["not a host!"]'}, "BATCHRELAY_WEBHOOK_ALLOW_HOSTS", "not a host name", CONF, EXIT, EXIT),
]  # fmt: skip


def bad_input_settings(redis_url: str) -> Settings:
    """A relay that takes chat (up to 2,048-byte lines) and Anthropic Messages; nothing
    listens at its providers, as nothing here is ever sent."""
    dead = {"base_url": "http://127.0.0.1:9", "api_key": "sk-x", "max_line_bytes": 2048}
    profiles = [
        {**dead, "name": "emu", "base_url": "http://127.0.0.1:9/v1", "models": ["gpt-*"]},
        {**dead, "name": "claude", "kind": "anthropic", "models": ["claude-*"]},
    ]
    emu = type("Emu", (), {"openai_base_url": "", "api_key": ""})
    return relay_settings(redis_url, emu, providers=profiles, webhook_allow_hosts=["127.0.0.9"])


@pytest.fixture
def relay(redis_url):
    with BatchRelay(bad_input_settings(redis_url)) as r:
        yield r


ROW = ("what", "endpoint", "body", "kw", "exc", "words", "run")


@pytest.mark.parametrize(ROW, rows(MATRIX))
def test_submit_refuses(relay, what, endpoint, body, kw, exc, words, run):
    with pytest.raises(exc) as info:
        relay.submit(endpoint, body, **kw)
    assert words in str(info.value), f"{what}: {info.value}"
    assert relay.redis.dbsize() == 0


@pytest.mark.parametrize(ROW, rows(MATRIX))
def test_submit_many_refuses_the_whole_call(relay, what, endpoint, body, kw, exc, words, run):
    good = {"endpoint": CHAT, "body": chat("ok")}
    with pytest.raises(exc) as info:
        relay.submit_many([good, good, {"endpoint": endpoint, "body": body, **kw}])
    assert str(info.value).startswith("item 2: ") and words in str(info.value)
    assert relay.redis.dbsize() == 0


def test_idempotency_key_reused_with_another_field(relay):
    rid = relay.submit(CHAT, chat("a"), idempotency_key="k")
    before = relay.redis.dbsize()
    with pytest.raises(IdempotencyConflictError, match=rid):
        relay.submit(CHAT, chat("b"), idempotency_key="k")
    with pytest.raises(IdempotencyConflictError, match=rid):
        relay.submit(CHAT, chat("a"), idempotency_key="k", metadata={"user": 1})
    with pytest.raises(IdempotencyConflictError, match=rid):
        relay.submit(CHAT, chat("a"), idempotency_key="k", callback=CeleryTask("app.got"))
    with pytest.raises(IdempotencyConflictError):
        relay.submit_many(
            [
                {"endpoint": CHAT, "body": chat("c"), "idempotency_key": "fresh"},
                {"endpoint": CHAT, "body": chat("b"), "idempotency_key": "k"},
            ]
        )
    assert relay.redis.dbsize() == before  # "fresh" was taken, then given back
    other = relay.submit(CHAT, chat("d"), idempotency_key="fresh")
    assert relay.status(other).state == "pending"


def unreachable(redis_url: str) -> tuple[Settings, str]:
    """The bad-input settings with a password, pointing at a port where no Redis listens."""
    port = free_port()
    url = f"redis://:pw-never-shown@127.0.0.1:{port}/0"
    settings = bad_input_settings(redis_url).model_copy(update={"redis_url": RedisUrl(url)})
    return settings, f"redis://:***@127.0.0.1:{port}/0"


def test_unreachable_redis_is_named_with_its_password_masked(redis_url):
    settings, masked = unreachable(redis_url)
    with BatchRelay(settings) as relay:
        for call in (
            lambda: relay.submit(CHAT, OK),
            lambda: relay.submit_many([{"endpoint": CHAT, "body": OK}]),
        ):
            with pytest.raises(RelayUnavailableError) as info:
                call()
            assert masked in str(info.value) and "pw-never-shown" not in str(info.value)


def test_submit_many_over_the_total_size_limit_stores_nothing(redis_url):
    """The limit is checked while the items are encoded: the call stops at the item that
    crosses it, without reading (or holding) the rest."""
    settings = bad_input_settings(redis_url).model_copy(update={"submit_max_bytes": 1000})
    taken = 0

    def items():
        nonlocal taken
        for i in range(100):
            taken += 1
            yield {"endpoint": CHAT, "body": chat(f"request {i}")}

    with BatchRelay(settings) as relay:
        with pytest.raises(SubmitTooLargeError) as info:
            relay.submit_many(items())
        assert "over the 1,000 one submit_many call may hold (submit_max_bytes)" in str(info.value)
        assert str(info.value).startswith(f"items 0-{taken - 1} come to ")
        assert taken < 100 and relay.redis.dbsize() == 0
        few = [{"endpoint": CHAT, "body": chat("a")}] * 3
        assert relay.submit_many(few).new == 3  # a call under the limit is stored


def test_allow_list_permits_what_it_names(relay):
    assert relay.submit(CHAT, OK, callback=Webhook("http://127.0.0.9:9/hook"))


# --- `batchrelay run`: the same rows as batch lines, and what only a file can get wrong ---


class Cli:
    def __init__(self, redis_url: str, tmp_path: Path):
        self.redis = redis.Redis.from_url(redis_url)
        self.tmp_path = tmp_path

    def run(self, third: bytes | None) -> tuple[Result, str]:
        """`batchrelay run` on two good lines then `third` (None: only blank lines); the
        output with Rich's line wrapping undone."""
        content = b"\n\n" if third is None else line("q0") + b"\n" + line("q1") + b"\n" + third
        src = self.tmp_path / "input.jsonl"
        src.write_bytes(content + b"\n")
        result = CliRunner().invoke(app, ["run", str(src), "--no-wait"])
        return result, " ".join(result.output.split())

    def stored(self) -> list[bytes]:
        return self.redis.keys("*")


@pytest.fixture
def cli(redis_url, tmp_path, monkeypatch):
    """The `relay` fixture's settings in the environment, as `batchrelay run` reads them."""
    use_environment(monkeypatch, tmp_path, settings_env(bad_input_settings(redis_url)))
    monkeypatch.setenv("COLUMNS", "200")
    c = Cli(redis_url, tmp_path)
    yield c
    c.redis.close()


def use_environment(monkeypatch, folder: Path, env: dict[str, str | None]) -> None:
    """Exactly these BATCHRELAY_* settings, and a working directory with no `.env`."""
    for name in list(os.environ):
        if name.startswith("BATCHRELAY_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith("BATCHRELAY_") and value is not None:
            monkeypatch.setenv(name, value)
    monkeypatch.chdir(folder)


@pytest.mark.parametrize(ROW, rows([r for r in MATRIX if r[-1] == YES]))
def test_run_refuses_the_file_naming_the_line(cli, what, endpoint, body, kw, exc, words, run):
    result, output = cli.run(line("bad", endpoint, body))
    assert result.exit_code == 2, f"{what}: {result.output}"
    assert "cannot be run" in output and words in output.partition("line 3: ")[2], output
    assert cli.stored() == []


def test_run_says_redis_cannot_be_reached(redis_url, tmp_path, monkeypatch):
    settings, masked = unreachable(redis_url)
    use_environment(monkeypatch, tmp_path, settings_env(settings))
    monkeypatch.setenv("COLUMNS", "200")
    result, output = Cli(redis_url, tmp_path).run(line("q2"))
    assert result.exit_code == 1, result.output
    assert (
        f"cannot use Redis at {masked}: ConnectionError" in output
        and "pw-never-shown" not in output
    )


@pytest.mark.parametrize(("what", "third", "words"), rows(RUN_MATRIX))
def test_run_refuses_a_bad_batch_file(cli, what, third, words):
    result, output = cli.run(third)
    assert result.exit_code == 2, f"{what}: {result.output}"
    named = output if third is None else output.partition("line 3: ")[2]
    assert words in named, output
    assert cli.stored() == []


# --- configuration: BatchRelay(), `batchrelay run` and the worker ---

CONFIG_ROW = ("what", "change", "named", "words", "producer", "run", "worker")


def config_env(redis_url: str, folder: Path, change: dict[str, str | None]) -> dict[str, str]:
    """A good configuration (that of `bad_input_settings`) with `change` applied, as the
    environment of a process."""
    env = settings_env(bad_input_settings(redis_url))
    for name, value in change.items():
        env.pop(name, None)
        if value is not None:
            env[name] = value.replace("{tmp}", str(folder))
    (folder / "bad.toml").write_text("providers = [ {name = \n")
    return env


@pytest.mark.parametrize(CONFIG_ROW, rows(CONFIG_MATRIX))
def test_producer_refuses_bad_settings(
    redis_url, tmp_path, monkeypatch, what, change, named, words, producer, run, worker
):
    use_environment(monkeypatch, tmp_path, config_env(redis_url, tmp_path, change))
    if producer.startswith("n/a"):
        BatchRelay.from_env().close()
        return
    with pytest.raises(ConfigurationError) as info:
        BatchRelay.from_env()
    named = producer.partition(" naming ")[2].strip("`") or named
    assert named in str(info.value) and words in str(info.value), str(info.value)
    assert "sk-secret-1" not in str(info.value) and "url-pw-1" not in str(info.value)


@pytest.mark.parametrize(CONFIG_ROW, rows(CONFIG_MATRIX))
def test_run_refuses_bad_settings(
    redis_url, tmp_path, monkeypatch, what, change, named, words, producer, run, worker
):
    use_environment(monkeypatch, tmp_path, config_env(redis_url, tmp_path, change))
    monkeypatch.setenv("COLUMNS", "200")
    src = tmp_path / "input.jsonl"
    src.write_bytes(line("q0") + b"\n")
    result = CliRunner().invoke(app, ["run", str(src), "--no-wait"])
    output = " ".join(result.output.split())
    assert result.exit_code == 78, f"{what}: {result.output}"
    assert named in output and words in output, output
    assert "sk-secret-1" not in output and "url-pw-1" not in output
    client = redis.Redis.from_url(redis_url)
    assert client.keys("*") == []
    client.close()


# A bad configuration stops a worker in about a second; a loaded machine (two test workers
# on two cores) can make it several. Only a worker that keeps running waits this long.
WORKER_WAIT_S = 30.0


def start_worker(env: dict[str, str], cwd: Path) -> tuple[int | None, str]:
    """`celery -A batchrelay.worker worker` as deployed: (exit code or None if it kept running, stderr)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "batchrelay.worker", "worker", "--pool", "solo"],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        _, err = proc.communicate(timeout=WORKER_WAIT_S)
        return proc.returncode, err.decode()
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        return None, err.decode()


@pytest.fixture(scope="module")
def workers(redis_server, tmp_path_factory) -> tuple[dict[str, tuple[int | None, str]], list]:
    """Every row's worker, started side by side (one at a time would take half a minute):
    each row's exit code and stderr, and the keys in Redis once all have stopped."""
    client = redis_server.client()
    client.flushall()
    runs = {}
    for what, change, *_rest, worker in CONFIG_MATRIX:
        if not worker.startswith("n/a"):
            folder = tmp_path_factory.mktemp("worker")
            runs[what] = (config_env(redis_server.url, folder, change), folder)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = list(pool.map(lambda args: start_worker(*args), runs.values()))
    outcomes = dict(zip(runs, results, strict=True))
    relay_keys = client.keys("br:*")
    client.close()
    return outcomes, relay_keys


@pytest.mark.parametrize(
    CONFIG_ROW, rows([r for r in CONFIG_MATRIX if not r[-1].startswith("n/a")])
)
def test_worker_stops_on_bad_settings(workers, what, change, named, words, producer, run, worker):
    outcomes, relay_keys = workers
    code, stderr = outcomes[what]
    assert code == 78, f"{what}: exit {code}\n{stderr[-2000:]}"
    message = " ".join(stderr.split())
    assert named in message and words in message, message
    assert "sk-secret-1" not in stderr and "url-pw-1" not in stderr
    assert relay_keys == []


# --- README.md carries the same tables ---


def readme_rows() -> dict[str, list[str]]:
    """First cell -> cells, for every table row of README.md's "Bad input" section."""
    text = README.read_text()
    section = text[text.index("### Bad input") :]
    section = section[: section.index("\n## ")]
    rows: dict[str, list[str]] = {}
    for raw in section.splitlines():
        if raw.startswith("| ") and not raw.startswith("|---"):
            cells = [c.strip() for c in raw.strip().strip("|").split(" | ")]
            assert cells[0] not in rows, f"README row twice: {cells[0]}"
            rows[cells[0]] = cells
    return rows


def test_readme_carries_the_same_tables():
    rows = readme_rows()
    for what, *_, exc, _words, run in MATRIX:
        assert what in rows, what
        assert f"`{exc.__name__}`" in rows[what][1] and rows[what][2] == run, rows[what]
    assert rows[REUSED_KEY[0]][2] == REUSED_KEY[1]
    assert "`IdempotencyConflictError`" in rows[REUSED_KEY[0]][1]
    assert rows[UNREACHABLE[0]][2] == UNREACHABLE[1]
    assert "`RelayUnavailableError`" in rows[UNREACHABLE[0]][1]
    assert rows[TOO_MUCH[0]][2] == TOO_MUCH[1]
    assert "`SubmitTooLargeError`" in rows[TOO_MUCH[0]][1]
    assert "`RelayUnavailableError`" in rows[UNREACHABLE[0]][1]
    for what, _third, words in RUN_MATRIX:
        assert what in rows, what
        assert f"`{words}`" in rows[what][1], rows[what]
    for what, _change, named, _words, producer, run, worker in CONFIG_MATRIX:
        assert what in rows, what
        assert rows[what][1:] == [f"`{named}`", producer, run, worker], rows[what]
    expected = {r[0] for r in MATRIX} | {r[0] for r in RUN_MATRIX} | {r[0] for r in CONFIG_MATRIX}
    headers = {"bad input", "bad line", "bad setting"}
    own = {REUSED_KEY[0], UNREACHABLE[0], TOO_MUCH[0]}
    assert set(rows) == expected | own | headers, set(rows) ^ expected


def test_callback_is_checked_again_at_delivery(redis_url):
    """Allowed when submitted, refused when delivered (the allow-list changed): never sent."""
    from batchrelay.emulator import start_emulator
    from batchrelay.worker.context import Relay
    from tests._receiver import WebhookReceiver
    from tests.relay.harness import drive, fast_emulator_config

    with start_emulator(fast_emulator_config()) as emu, WebhookReceiver() as receiver:
        allowed = relay_settings(redis_url, emu)
        producer = BatchRelay(allowed)
        rid = producer.submit(CHAT, chat("x"), callback=Webhook(receiver.url))
        strict = allowed.model_copy(update={"webhook_allow_hosts": []})
        worker = Relay(strict)
        drive(worker, lambda: producer.status(rid).delivery == "dead")
        status = producer.status(rid)
        assert status.state == "succeeded" and "blocked" in (status.last_delivery_error or "")
        assert receiver.received == []
        producer.close()
        worker.close()
