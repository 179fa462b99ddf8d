"""docker-compose.yml, run without Docker: each service's own command as a local process.

The services get the environment compose would give them (their `env_file`, which is
`.env.example` here, then `environment`, with `${...}` substituted), except that container
host names and ports (`redis:6379`, `emulator:8089`) become 127.0.0.1 and free ports, and
listeners bind to loopback. Redis is a private `redis-server` from PATH started with the
flags of the compose redis command, never the machine's shared Redis on 6379.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import redis
import yaml
from dotenv import dotenv_values

from tests._redis import RedisServer, free_port

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"

# Container ports of the services other services reach by host name.
CONTAINER_PORTS = {"redis": 6379, "emulator": 8089, "flower": 5555, "metrics": 9108}

_VAR = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}|\$(?P<bare>\w+)")


def load_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def read_env_file(path: Path) -> dict[str, str]:
    """A dotenv file as compose reads it (quotes removed, single-quoted values literal)."""
    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def interpolate(text: str, variables: Mapping[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?error}`, `$$`."""

    def one(match: re.Match[str]) -> str:
        name = match.group("name") or match.group("bare")
        op, arg = match.group("op"), match.group("arg") or ""
        value = variables.get(name)
        missing = value is None or (op is not None and op.startswith(":") and value == "")
        if op in (":-", "-") and missing:
            return arg
        if op in (":?", "?") and missing:
            raise ValueError(f"compose would refuse this file: {name}: {arg}")
        return value or ""

    parts = text.split("$$")
    return "$".join(_VAR.sub(one, part) for part in parts)


def _interpolate_tree(node: Any, variables: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, variables)
    if isinstance(node, list):
        return [_interpolate_tree(n, variables) for n in node]
    if isinstance(node, dict):
        return {k: _interpolate_tree(v, variables) for k, v in node.items()}
    return node


def compose_variables() -> dict[str, str]:
    """What compose substitutes from: `.env.example` as the project's .env, and ENV_FILE
    pointed at it (as scripts/check-compose.sh does) so no .env has to exist."""
    return {**read_env_file(ENV_EXAMPLE), "ENV_FILE": ENV_EXAMPLE.name}


def resolved_compose(variables: Mapping[str, str] | None = None) -> dict[str, Any]:
    return _interpolate_tree(
        load_compose(), compose_variables() if variables is None else variables
    )


def service_command(service: Mapping[str, Any]) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else list(command)


def service_env(service: Mapping[str, Any]) -> dict[str, str]:
    """`env_file` then `environment`, as compose merges them."""
    env: dict[str, str] = {}
    files = service.get("env_file") or []
    for entry in [files] if isinstance(files, str | dict) else files:
        path = entry["path"] if isinstance(entry, dict) else entry
        env.update(read_env_file(ROOT / path))
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    env.update({k: "" if v is None else str(v) for k, v in environment.items()})
    return env


def localize(value: str, ports: Mapping[str, int]) -> str:
    """`redis://redis:6379/0` -> `redis://127.0.0.1:<port>/0`, and so on."""
    for host, local_port in ports.items():
        value = re.sub(
            rf"(?<=[/@]){host}:{CONTAINER_PORTS[host]}\b", f"127.0.0.1:{local_port}", value
        )
    return value


def with_option(command: list[str], option: str, value: str) -> list[str]:
    """Replace the value of `--option=x` or `--option x` in a command."""
    out, i, found = [], 0, False
    while i < len(command):
        arg = command[i]
        if arg == option:
            out += [arg, value]
            i, found = i + 2, True
            continue
        if arg.startswith(option + "="):
            arg, found = f"{option}={value}", True
        out.append(arg)
        i += 1
    if not found:
        raise AssertionError(f"{option} not in {command}")
    return out


def executable(name: str) -> str:
    """Console scripts of this venv first (as the image's are on its PATH), then PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is not installed (make venv / scripts/ensure-redis.sh)")
    return found


class ComposeRedis(RedisServer):
    """tests._redis.RedisServer, started with the compose redis command's own flags."""

    def __init__(self, workdir: Path, command: list[str]):
        super().__init__(workdir, appendonly="--appendonly" in command)
        self.command = command

    def start(self) -> None:
        args = [executable(self.command[0]), *self.command[1:]]
        args += ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 20
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.exceptions.BusyLoadingError:
                    pass
                except redis.ConnectionError:
                    if time.monotonic() > deadline or self.proc.poll() is not None:
                        raise RuntimeError(f"redis-server did not start: {args}") from None
                time.sleep(0.05)
        finally:
            client.close()


class ComposeRun:
    """The compose services as local processes in their own process groups; logs in `logdir`."""

    def __init__(self, workdir: Path, overrides: Mapping[str, str] | None = None):
        self.workdir = workdir
        self.logdir = workdir / "logs"
        self.home = workdir / "home"  # the image's WORKDIR: no .env, nothing of the repo
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.home.mkdir(exist_ok=True)
        self.compose = resolved_compose()
        self.ports = {name: free_port() for name in CONTAINER_PORTS}
        self.overrides = dict(overrides or {})
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.cold: set[str] = set()  # processes whose SIGTERM starts a 30 s soft shutdown
        self.redis: ComposeRedis | None = None

    def service(self, name: str) -> dict[str, Any]:
        return self.compose["services"][name]

    def env(self, name: str) -> dict[str, str]:
        """The process environment of service `name`: compose's, localized, plus overrides."""
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("BATCHRELAY_", "FLOWER_", "CELERY_"))
        }
        own = {k: localize(v, self.ports) for k, v in service_env(self.service(name)).items()}
        for key, value in own.items():
            for host in CONTAINER_PORTS:
                if f"//{host}:" in value or f"@{host}:" in value:
                    raise AssertionError(f"{name}: {key} still names container host {host!r}")
        return {**base, **own, **self.overrides, "PYTHONPATH": str(ROOT)}

    def url(self, name: str, path: str = "") -> str:
        return f"http://127.0.0.1:{self.ports[name]}{path}"

    def start_redis(self) -> ComposeRedis:
        server = ComposeRedis(self.workdir / "redis", service_command(self.service("redis")))
        server.workdir.mkdir(exist_ok=True)
        server.port = self.ports["redis"]
        server.start()
        self.redis = server
        return server

    def command(self, name: str) -> list[str]:
        """The service's command, made local: its program from this venv, loopback ports."""
        command = service_command(self.service(name))
        if name in ("emulator", "metrics"):
            command = with_option(command, "--host", "127.0.0.1")
        if name in ("emulator", "flower", "metrics"):
            command = with_option(command, "--port", str(self.ports[name]))
        return [executable(command[0]), *command[1:]]

    def start(self, name: str, service: str | None = None) -> subprocess.Popen[bytes]:
        """Start service `service` (default: `name`) as process `name` (e.g. a second beat)."""
        service = service or name
        env = self.env(service)
        if service == "flower":
            env["FLOWER_ADDRESS"] = "127.0.0.1"  # the container listens on all interfaces
        log = (self.logdir / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            self.command(service),
            cwd=self.home,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.procs[name] = proc
        if env.get("REMAP_SIGTERM") == "SIGQUIT":
            self.cold.add(name)
        return proc

    def stop(self) -> None:
        """SIGTERM each process group, SIGKILL what is left; a worker whose SIGTERM means a
        cold shutdown would wait out its soft-shutdown window first, so it is killed."""
        for name in list(self.procs):
            proc = self.procs.pop(name)
            sig = signal.SIGKILL if name in self.cold else signal.SIGTERM
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
            # Reap any prefork child that outlived its parent.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        if self.redis is not None:
            self.redis.stop()
            self.redis = None

    def log(self, name: str) -> str:
        path = self.logdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.stem}\n{p.read_text(errors='replace')[-4000:]}"
            for p in sorted(self.logdir.glob("*.log"))
        )

    def wait_until(self, condition: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = condition()
            if result:
                return result
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise AssertionError(f"{name} exited with {proc.returncode}\n{self.logs()}")
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}\n{self.logs()}")

    def http_ok(self, url: str, **kwargs: Any) -> bool:
        try:
            return httpx.get(url, timeout=2, **kwargs).status_code < 500
        except httpx.HTTPError:
            return False
