"""Running the emulator: in a background thread (tests, demos) or in the foreground (CLI)."""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType

import httpx
import uvicorn

from batchrelay.emulator.app import create_app
from batchrelay.emulator.config import EmulatorConfig
from batchrelay.emulator.engine import Engine

START_TIMEOUT_S = 10.0


def _uvicorn_config(app, **kwargs) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        http="h11",
        ws="none",
        lifespan="off",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=1,
        **kwargs,
    )


class EmulatorHandle:
    """A running emulator. Use as a context manager, or call `stop()`."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.engine = Engine(config)
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted sockets only when the
        # protocol is TCP, and without it every keep-alive response waits ~40 ms (Nagle).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((config.host, config.port))
        sock.listen(512)
        self.port: int = sock.getsockname()[1]
        host = "127.0.0.1" if config.host in ("0.0.0.0", "") else config.host
        self.base_url = f"http://{host}:{self.port}"
        self._server = uvicorn.Server(_uvicorn_config(create_app(self.engine)))
        self.engine.start()
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="emulator-http", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.engine.close()
                raise RuntimeError(f"emulator did not start on {self.base_url}")
            time.sleep(0.002)
        self._admin = httpx.Client(
            base_url=self.base_url + "/_emulator",
            headers={"Authorization": f"Bearer {self.api_key}"},
            timeout=30,
        )
        self._stopped = False

    @property
    def openai_base_url(self) -> str:
        return self.base_url + "/v1"

    @property
    def azure_base_url(self) -> str:
        return self.base_url + "/openai/v1"

    @property
    def groq_base_url(self) -> str:
        return self.base_url + "/groq/openai/v1"

    @property
    def together_base_url(self) -> str:
        return self.base_url + "/together/v1"

    @property
    def mistral_base_url(self) -> str:
        """The `server_url` of a Mistral client (its paths start with /v1)."""
        return self.base_url + "/mistral"

    @property
    def anthropic_base_url(self) -> str:
        return self.base_url

    @property
    def gemini_base_url(self) -> str:
        """The host a Gemini profile or `google.genai` client names (paths start /v1beta)."""
        return self.base_url

    @property
    def api_key(self) -> str:
        return self.config.api_keys[0]

    def _call(self, method: str, path: str, json: dict | None = None) -> dict:
        response = self._admin.request(method, path, json=json)
        response.raise_for_status()
        return response.json()

    def set_faults(self, **changes: object) -> dict:
        return self._call("PATCH", "/faults", changes)

    def reset_faults(self) -> dict:
        return self._call("POST", "/faults/reset")

    def faults(self) -> dict:
        return self._call("GET", "/faults")

    def set_timings(self, **changes: object) -> dict:
        return self._call("PATCH", "/timings", changes)

    def set_webhook(self, url: str | None, secret: str | None = None) -> dict:
        """Where OpenAI-style batch events go (None: nowhere), signed with `secret`."""
        return self._call("PUT", "/webhook", {"url": url, "secret": secret})

    def stats(self) -> dict:
        return self._call("GET", "/stats")

    def reset(self, *, data: bool = True) -> dict:
        """Faults, timings and counters back to their start values; data wiped unless told."""
        return self._call("POST", f"/reset?data={str(data).lower()}")

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._admin.close()
        self._server.should_exit = True
        self._thread.join(10)
        self.engine.close()

    def __enter__(self) -> EmulatorHandle:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_emulator(config: EmulatorConfig | None = None, **overrides: object) -> EmulatorHandle:
    """Start an emulator in a background thread (port 0: a free port) and return its handle.

    The handle is a context manager: `with start_emulator(cfg) as emu: ...` stops it at exit.
    """
    if config is None:
        config = EmulatorConfig(**{"port": 0, **overrides})  # type: ignore[arg-type]
    elif overrides:
        config = EmulatorConfig(**{**config.model_dump(), **overrides})  # type: ignore[arg-type]
    return EmulatorHandle(config)


def serve(config: EmulatorConfig) -> None:
    """Run in the foreground until interrupted (the `batchrelay emulator` command)."""
    engine = Engine(config)
    engine.start()
    try:
        server = uvicorn.Server(
            _uvicorn_config(create_app(engine), host=config.host, port=config.port)
        )
        server.run()
    finally:
        engine.close()
