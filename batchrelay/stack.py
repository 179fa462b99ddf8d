"""The embedded stack: Redis, the emulator, one Celery worker and one beat, on this machine.

`batchrelay dev` runs it in the foreground for a web app under development; `batchrelay demo`
and tests use it as a context manager:

    with EmbeddedStack() as stack:
        relay = BatchRelay(stack.settings)   # or export stack.app_env() to another process

Worker and beat are the production commands (`celery -A batchrelay.worker worker|beat`) as
subprocesses, configured only through `BATCHRELAY_*` variables, so what works here works
deployed. Each subprocess leads its own process group, which `stop()` signals as a whole: no
prefork child outlives the stack. The machine's shared Redis on 6379 is never used unless
named explicitly.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import redis
import typer

from batchrelay.config import ConfigurationError, Settings, load_settings
from batchrelay.config.urls import redacted

if TYPE_CHECKING:  # the emulator (FastAPI, uvicorn) is imported only when a stack starts
    from batchrelay.emulator import EmulatorConfig, EmulatorHandle

PROFILE = "emulator"  # the emulator's OpenAI routes
ANTHROPIC_PROFILE = "emulator-anthropic"  # its Anthropic message batches, at its root URL
MISTRAL_PROFILE = "emulator-mistral"  # its Mistral batch jobs, under /mistral
MISTRAL_MODEL_PREFIXES = ("mistral-", "open-mistral-", "ministral-", "codestral-")
GEMINI_PROFILE = "emulator-gemini"  # its Gemini Batch Mode, at its root URL (/v1beta/...)
GEMINI_MODEL_PREFIXES = ("gemini-",)
READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 20.0
LOG_TAIL_CHARS = 3000

# A few seconds per phase: slow enough to watch a batch move, fast enough for a demo.
DEV_EMULATOR = {
    "validating_delay_s": 2.0,
    "processing_rate_rps": 100.0,
    "finalizing_delay_s": 1.0,
    "embedding_dim": 256,
}
# The worker reacts within a second; a receiver that is down is retried soon, then less often.
DEV_SETTINGS: dict[str, Any] = {
    "flush_max_wait_s": 2.0,
    "tick_s": 0.5,
    "poll_interval_s": 1.0,
    "poll_max_interval_s": 2.0,
    "delivery_retry_schedule_s": [1, 5, 15, 60, 300, 900],
    "webhook_allow_hosts": ["127.0.0.1", "localhost", "::1"],
}
# What a web app (the producer side) needs to reach this stack and verify its webhooks.
APP_SETTINGS = (
    "redis_url",
    "redis_cluster",
    "key_prefix",
    "providers",
    "webhook_secrets",
    "webhook_allow_hosts",
)

NO_REDIS = (
    "redis-server is not on PATH. Install it (Debian/Ubuntu: `sudo apt-get install "
    "redis-server`, macOS: `brew install redis`; the server need not run as a service), or "
    "point BATCHRELAY_REDIS_URL (or --redis-url) at a Redis you own."
)


class StackError(RuntimeError):
    """A part of the stack could not start, or died while running."""


class Stopped(Exception):
    """Raised in the main thread by SIGTERM/SIGHUP, so `with` blocks unwind and clean up."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def new_webhook_secret() -> str:
    """A fresh Standard Webhooks secret (32 random bytes)."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def settings_env(settings: Settings, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment that makes another process load exactly `settings` (secrets revealed).

    Every field is set and inherited `BATCHRELAY_*` variables are dropped, so neither a stray
    BATCHRELAY_CONFIG_FILE nor a `.env` file can override what this stack decided.
    """
    env = {k: v for k, v in (base or os.environ).items() if not k.startswith("BATCHRELAY_")}
    env.update(app_env(settings, tuple(type(settings).model_fields), only_changed=False))
    return env


def app_env(
    settings: Settings, names: tuple[str, ...] = APP_SETTINGS, *, only_changed: bool = True
) -> dict[str, str]:
    """`BATCHRELAY_*` variables for `names` (lists and dicts as JSON, as Settings reads them);
    `only_changed` leaves out values equal to their defaults, for short `export` lines."""
    data = settings.model_dump(mode="json")
    out: dict[str, str] = {}
    for name in names:
        value = data.get(name)
        default = type(settings).model_fields[name].get_default(call_default_factory=True)
        if value is None or (only_changed and value == default and name != "redis_url"):
            continue
        if name == "providers":
            value = [
                {
                    **p.model_dump(mode="json", exclude_defaults=only_changed),
                    "api_key": p.api_key.get_secret_value(),
                }
                for p in settings.providers
            ]
        elif name in ("redis_url", "broker_url"):
            value = getattr(settings, name).get_secret_value()
        elif name == "webhook_secrets":
            value = [s.get_secret_value() for s in settings.webhook_secrets]
        out[f"BATCHRELAY_{name.upper()}"] = (
            value if isinstance(value, str) else orjson.dumps(value).decode()
        )
    return out


def _parent_death_guard() -> Callable[[], None] | None:
    """Linux: a `preexec_fn` that makes the kernel SIGTERM the child when this process dies,
    even by SIGKILL, so no worker is orphaned. The libc lookup happens here, before the fork:
    between fork and exec the child only calls prctl and getppid.

    The kernel ties the signal to the thread that forked, hence only from the main thread.
    """
    if sys.platform != "linux" or threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def guard() -> None:
        prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return guard


def _tail(path: Path, chars: int = LOG_TAIL_CHARS) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return text[-chars:]


class EmbeddedStack:
    """Private Redis (unless `redis_url`), emulator thread, worker and beat subprocesses.

    `settings` overrides the dev defaults (`DEV_SETTINGS`); `emulator` is an EmulatorConfig
    (default: `DEV_EMULATOR` timings on a free port, any `BATCHRELAY_EMULATOR_*` variable
    winning). Logs and Redis data live in a temporary directory removed by `stop()`, unless
    `workdir` is given or a process of the stack died (its log is evidence: it is kept).
    """

    def __init__(
        self,
        *,
        redis_url: str | None = None,
        emulator: EmulatorConfig | None = None,
        settings: Mapping[str, Any] | None = None,
        concurrency: int = 2,
        workdir: Path | None = None,
        ready_timeout_s: float = READY_TIMEOUT_S,
    ):
        self.external_redis = redis_url
        self.emulator_config = emulator
        self.overrides = dict(settings or {})
        self.concurrency = concurrency
        self.ready_timeout_s = ready_timeout_s
        self._given_workdir = workdir
        self.workdir: Path | None = None
        self.secret = ""
        self.emulator: EmulatorHandle | None = None
        self._settings: Settings | None = None
        self.redis_proc: subprocess.Popen[bytes] | None = None
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: dict[str, Path] = {}
        self._started = False
        self._keep_workdir = False

    # -- what a caller uses ---------------------------------------------------------------

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            raise StackError("the stack is not started")
        return self._settings

    @property
    def redis_url(self) -> str:
        """The clear URL, to connect with; show it with `redacted()`."""
        return self.settings.redis_url.get_secret_value()

    @property
    def provider_url(self) -> str:
        """The emulator's OpenAI base URL, which the stack's provider profile points at."""
        if self.emulator is None:
            raise StackError("the stack is not started")
        return self.emulator.openai_base_url

    @property
    def logdir(self) -> Path:
        if self.workdir is None:
            raise StackError("the stack is not started")
        return self.workdir / "logs"

    def app_env(self) -> dict[str, str]:
        """What a web app exports to submit to this stack and verify its webhooks."""
        return app_env(self.settings)

    def exports(self) -> str:
        """`app_env()` as shell `export` lines."""
        return "\n".join(f"export {k}={shlex.quote(v)}" for k, v in self.app_env().items())

    def logs(self, chars: int = LOG_TAIL_CHARS) -> str:
        return "\n".join(f"--- {name} ({p})\n{_tail(p, chars)}" for name, p in self._logs.items())

    # -- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> EmbeddedStack:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start every part and wait until the worker is ready; on any failure (or a signal
        meanwhile) stop what was started and re-raise."""
        if self._started:
            return
        self._started = True
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        workdir = self._given_workdir or Path(tempfile.mkdtemp(prefix="batchrelay-dev-"))
        self.workdir = workdir
        self.logdir.mkdir(parents=True, exist_ok=True)
        if self.external_redis:
            url = self.external_redis
            _check_redis(url)
        else:
            url = self._start_redis(workdir)
        emulator = self.emulator = self._start_emulator()
        self.secret = new_webhook_secret()
        values: dict[str, Any] = {
            **DEV_SETTINGS,
            "redis_url": url,
            "providers": emulator_profiles(emulator),
            "webhook_secrets": [self.secret],
            **self.overrides,
        }
        try:
            self._settings = load_settings(**values)
        except ConfigurationError as exc:
            raise StackError(str(exc)) from None
        env = settings_env(self.settings)
        worker = self._spawn(
            "worker",
            [
                "worker",
                "-n",
                f"dev-{os.getpid()}@%h",
                "-c",
                str(self.concurrency),
                "-l",
                "INFO",
                "--without-mingle",
                "--without-gossip",
            ],
            env,
        )
        self._spawn(
            "beat",
            ["beat", "-l", "INFO", "-s", str(workdir / "beat-schedule")],
            env,
        )
        self._wait_ready(worker)

    def _start_redis(self, workdir: Path) -> str:
        binary = shutil.which("redis-server")
        if binary is None:
            raise StackError(NO_REDIS)
        data = workdir / "redis"
        data.mkdir(exist_ok=True)
        log = self.logdir / "redis.log"
        self._logs["redis"] = log
        for _ in range(3):  # the free port may be taken between the probe and the bind
            port = free_port()
            args = [
                binary,
                "--port", str(port),
                "--bind", "127.0.0.1",
                "--dir", str(data),
                "--save", "",
                "--appendonly", "no",
                "--maxmemory-policy", "noeviction",
                "--logfile", str(log),
            ]  # fmt: skip
            self.redis_proc = self._popen(args, None, subprocess.DEVNULL)
            url = f"redis://127.0.0.1:{port}/0"
            if self._redis_up(url, self.redis_proc):
                return url
            _stop_group(self.redis_proc, 5)
            self.redis_proc = None
        raise StackError(f"redis-server did not start\n{_tail(log)}")

    @staticmethod
    def _redis_up(url: str, proc: subprocess.Popen[bytes]) -> bool:
        client = redis.Redis.from_url(url)
        deadline = time.monotonic() + 10
        try:
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    client.ping()
                    return True
                except redis.ConnectionError:
                    time.sleep(0.02)
            return False
        finally:
            client.close()

    def _start_emulator(self) -> EmulatorHandle:
        from batchrelay.emulator import EmulatorConfig, start_emulator

        config = self.emulator_config
        if config is None:
            from_env = EmulatorConfig()  # BATCHRELAY_EMULATOR_* variables win over dev timings
            given = from_env.model_fields_set
            defaults = {k: v for k, v in DEV_EMULATOR.items() if k not in given}
            port = from_env.port if "port" in given else 0
            config = EmulatorConfig(**{**from_env.model_dump(), "port": port, **defaults})
        return start_emulator(config)

    def _popen(
        self, args: list[str], env: Mapping[str, str] | None, out: Any
    ) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            args,
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: Ctrl-C reaches us, we stop it
            preexec_fn=_parent_death_guard(),
        )

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        path = self.logdir / f"{name}.log"
        self._logs[name] = path
        with path.open("wb") as log:
            proc = self._popen(
                [sys.executable, "-m", "celery", "-A", "batchrelay.worker", *args], env, log
            )
        self.procs[name] = proc
        return proc

    def _wait_ready(self, worker: subprocess.Popen[bytes]) -> None:
        log = self._logs["worker"]
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            self.check()
            if " ready." in _tail(log, 100_000):
                return
            time.sleep(0.1)
        waited = f"{self.ready_timeout_s:.0f} s"
        raise StackError(f"the worker was not ready after {waited}\n{self.logs()}")

    def check(self) -> None:
        """Raise StackError if a process of the stack has exited: which one, how, and where its
        log is (with its tail). The logs are then kept when the stack stops."""
        procs = dict(self.procs)
        if self.redis_proc is not None:
            procs["redis"] = self.redis_proc
        for name, proc in procs.items():
            if proc.poll() is not None:
                self._keep_workdir = True
                log = self._logs[name]
                raise StackError(
                    f"{name} {_how_it_ended(proc.returncode)}; its log: {log}\n{_tail(log)}\n"
                    f"the stack is stopped; its logs are kept in {self.logdir}"
                )

    def wait(self, interval: float = 0.5) -> None:
        """Block until a process dies (StackError) or the caller is interrupted."""
        while True:
            self.check()
            time.sleep(interval)

    def stop(self) -> None:
        """Stop everything this stack started (beat, worker, emulator, Redis) and clean up.

        Safe to call twice and from a partly started stack. A second Ctrl-C or SIGTERM
        meanwhile is ignored, so impatience cannot leave a worker behind.
        """
        with _signals_ignored():
            self._stop()

    def _stop(self) -> None:
        for name in ("beat", "worker"):
            proc = self.procs.pop(name, None)
            if proc is not None:
                _stop_group(proc, STOP_TIMEOUT_S)
        if self.emulator is not None:
            emu, self.emulator = self.emulator, None
            emu.stop()
        if self.redis_proc is not None:
            proc, self.redis_proc = self.redis_proc, None
            _stop_group(proc, 10)
        if self.workdir is not None and self._given_workdir is None and not self._keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        self._started = False


def emulator_profiles(emulator: EmulatorHandle) -> list[dict[str, Any]]:
    """Provider profiles for everything the emulator serves, with its own model globs: its
    OpenAI models at its OpenAI routes, its `claude-*` models at its Anthropic routes, its
    Mistral models at its Mistral routes, its `gemini-*` models at its Gemini routes. So a
    model it does not know is refused at submit(), as in production."""
    models = emulator.config.models
    anthropic = [glob for glob in models if glob.startswith("claude")]
    mistral = [glob for glob in models if glob.startswith(MISTRAL_MODEL_PREFIXES)]
    gemini = [glob for glob in models if glob.startswith(GEMINI_MODEL_PREFIXES)]
    others = {*anthropic, *mistral, *gemini}
    openai = [glob for glob in models if glob not in others]
    shared = {"api_key": emulator.api_key}
    profiles = [
        {"name": PROFILE, "base_url": emulator.openai_base_url, "models": openai, **shared},
        {
            "name": ANTHROPIC_PROFILE,
            "kind": "anthropic",
            "base_url": emulator.anthropic_base_url,
            "models": anthropic,
            **shared,
        },
        {
            "name": MISTRAL_PROFILE,
            "kind": "mistral",
            "base_url": emulator.mistral_base_url,
            "models": mistral,
            **shared,
        },
        {
            "name": GEMINI_PROFILE,
            "kind": "gemini",
            "base_url": emulator.gemini_base_url,
            "models": gemini,
            **shared,
        },
    ]
    return [p for p in profiles if p["models"]]


def profile_lines(settings: Settings) -> str:
    """The banner's provider lines: each profile's name, base URL and model globs."""
    width = max(len(p.name) for p in settings.providers)
    return "\n".join(
        f"  {'providers' if i == 0 else '':<10} {p.name:<{width}}  {p.base_url}  "
        + ", ".join(p.models)
        for i, p in enumerate(settings.providers)
    )


def _how_it_ended(returncode: int) -> str:
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-returncode).name}"
    return f"exited with code {returncode}"


def _check_redis(url: str) -> None:
    """Fail fast on a Redis that is not there (the worker would retry it forever)."""
    client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise StackError(
            f"cannot use Redis at {redacted(url)} ({exc}); it comes from --redis-url or "
            "BATCHRELAY_REDIS_URL: unset it to start a private redis-server instead"
        ) from None
    finally:
        client.close()


def _stop_group(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM the process group (a warm shutdown), then SIGKILL whatever is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout)
    # The leader may be gone while a straggler of its group is not: sweep the group anyway.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in sigs}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into `Stopped` and SIGINT into KeyboardInterrupt, so a
    `with EmbeddedStack()` in the main thread unwinds and stops what it started."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise Stopped(signal.Signals(signum).name)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    # A shell starts background jobs with SIGINT ignored; `kill -INT` should still stop us.
    previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


# -- the `batchrelay dev` command ------------------------------------------------------------


def dev(
    redis_url: Annotated[
        str | None,
        typer.Option(
            envvar="BATCHRELAY_REDIS_URL",
            help="Use this Redis instead of a private redis-server (never 6379 by default).",
        ),
    ] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Worker pool processes.")] = 2,
    env_file: Annotated[
        Path | None, typer.Option(help="Also write the web app's `export` lines to this file.")
    ] = None,
) -> None:
    """Run Redis, the emulator, a worker and beat in the foreground until Ctrl-C."""
    from rich.console import Console

    console = Console(highlight=False)
    try:
        with stop_on_signals():
            console.print("[bold]batchrelay dev[/bold]: starting Redis, emulator, worker, beat…")
            started = time.monotonic()
            with EmbeddedStack(redis_url=redis_url, concurrency=concurrency) as stack:
                exports = stack.exports()
                if env_file is not None:
                    env_file.write_text(exports + "\n")
                redis_note = "" if redis_url else " (private redis-server)"
                console.print(
                    f"ready in {time.monotonic() - started:.1f} s\n"
                    f"  Redis      {redacted(stack.redis_url)}{redis_note}\n"
                    f"{profile_lines(stack.settings)}\n"
                    f"  logs       {stack.logdir}\n\n"
                    "In your web app's shell:\n"
                )
                print(exports, flush=True)
                if env_file is not None:
                    console.print(f"\n(also written to {env_file}: `source {env_file}`)")
                console.print(
                    "\nVerify webhooks with standardwebhooks.Webhook(<the whsec_ secret above>); "
                    "callbacks to 127.0.0.1/localhost are allowed. With those exports, try "
                    "`batchrelay run examples/requests.jsonl` or `batchrelay status --watch`."
                    "\nCtrl-C stops everything."
                )
                stack.wait()
    except (KeyboardInterrupt, Stopped):
        console.print("\nstopped; every process this command started has exited")
    except StackError as exc:
        console.print(f"batchrelay dev: {exc}", style="red", markup=False)
        raise typer.Exit(1) from None


def register(app: typer.Typer) -> None:
    app.command()(dev)
