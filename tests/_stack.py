"""Real Celery worker and beat processes for end-to-end and crash tests.

Each process runs `celery -A batchrelay.worker ...` exactly as in production, configured only
through `BATCHRELAY_*` environment variables, so a test may SIGKILL any of them at any moment.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent


def settings_env(settings: Any) -> dict[str, str]:
    """The environment that makes a worker process load exactly `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHRELAY_")}
    data = settings.model_dump(mode="json")
    for name, value in data.items():
        if value is None:
            continue
        if name == "providers":
            value = [{**p, **_secret_fields(settings.profile(p["name"]))} for p in value]
        if name in ("redis_url", "broker_url"):
            value = getattr(settings, name).get_secret_value()
        if name == "webhook_secrets":
            value = [s.get_secret_value() for s in settings.webhook_secrets]
        text = value if isinstance(value, str) else orjson.dumps(value).decode()
        env[f"BATCHRELAY_{name.upper()}"] = text
    env["PYTHONPATH"] = str(ROOT)
    return env


def _secret_fields(profile: Any) -> dict[str, str]:
    """A profile's secret values in clear (`model_dump` masks them)."""
    secrets = {"api_key": profile.api_key.get_secret_value()}
    if profile.webhook_secret is not None:
        secrets["webhook_secret"] = profile.webhook_secret.get_secret_value()
    return secrets


class Stack:
    """Worker and beat subprocesses sharing one environment; logs go to files in `logdir`."""

    def __init__(self, settings: Any, logdir: Path):
        self.env = settings_env(settings)
        self.logdir = logdir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.log_level = "INFO"
        # With `supervised`, a process that exits is restarted (as compose's `restart:` policy
        # does) and counted in `unplanned_exits`, instead of failing the wait.
        self.supervised = False
        self.unplanned_exits: list[str] = []
        self._args: dict[str, list[str]] = {}
        self._lock = threading.RLock()
        self._n = 0

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        self._args[name] = args
        self._n += 1
        log = (self.logdir / f"{name}-{self._n}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "batchrelay.worker", *args],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs[name] = proc
        return proc

    def start_worker(self, name: str = "w1", concurrency: int = 2) -> subprocess.Popen[bytes]:
        return self._spawn(
            name,
            [
                "worker",
                "-n",
                f"{name}@%h",
                "-c",
                str(concurrency),
                "-l",
                self.log_level,
                "--without-mingle",
                "--without-gossip",
            ],
        )

    def start_beat(self, name: str = "beat") -> subprocess.Popen[bytes]:
        schedule = self.logdir / f"{name}-schedule"
        return self._spawn(
            name,
            ["beat", "-l", self.log_level, "-s", str(schedule)],
        )

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Kill a process and all its children (the prefork pool) at once."""
        with self._lock:
            proc = self.procs.pop(name, None)
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        proc.wait(30)

    def restart(self, name: str) -> None:
        """SIGKILL a process group and start the same command again under the same name."""
        with self._lock:
            self.kill(name)
            self._spawn(name, self._args[name])

    def restart_exited(self) -> list[str]:
        """The supervisor's round: start again whatever exited on its own."""
        with self._lock:
            exited = [n for n, p in self.procs.items() if p.poll() is not None]
            for name in exited:
                self.procs.pop(name)
                self.unplanned_exits.append(name)
                self._spawn(name, self._args[name])
        return exited

    def kill_children(self, name: str) -> int:
        """SIGKILL the pool processes of a worker, not its parent (which restarts them)."""
        import psutil

        with self._lock:
            proc = self.procs.get(name)
        if proc is None:
            return 0
        try:
            children = psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return 0
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        return len(children)

    def stop(self) -> None:
        for name in list(self.procs):
            proc = self.procs[name]
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(15)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                self.kill(name)
            self.procs.pop(name, None)

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}"
            for p in sorted(self.logdir.glob("*.log"))
        )

    def wait_until(self, condition: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            if self.supervised:
                self.restart_exited()
            else:
                for name, proc in list(self.procs.items()):
                    if proc.poll() is not None:
                        raise AssertionError(f"{name} exited with {proc.returncode}\n{self.logs()}")
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}\n{self.logs()}")
