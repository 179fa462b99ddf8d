"""A single-file Django app that hands chat requests to batchrelay and takes results by webhook.

Run it against `batchrelay dev` (which prints the BATCHRELAY_* exports this app reads):

    python examples/django_app.py runserver 8000
    curl -s localhost:8000/ask -H 'content-type: application/json' -d '{"prompt": "Hi"}'
    curl -s localhost:8000/results/<id>

POST /ask submits through the producer with a `Webhook` callback to this app's own
/webhooks/batchrelay, which verifies the Standard Webhooks signature, dedupes on `webhook-id`
(deliveries are at-least-once) and keeps the result in memory for GET /results/<id>.
In a real project the views go in views.py and the settings in settings.py; nothing else
changes. Set APP_PUBLIC_URL when the app is reached through a proxy.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import threading
from typing import Any

import standardwebhooks
from django.conf import settings as django_settings
from django.core.handlers.wsgi import WSGIHandler
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from batchrelay import BatchRelay, BatchRelayError, RelayUnavailableError, Webhook
from batchrelay.config import Settings, load_settings

WEBHOOK_PATH = "/webhooks/batchrelay"


class ResultStore:
    """Results by request id; a webhook-id seen before is acknowledged but not stored again."""

    def __init__(self) -> None:
        self.results: dict[str, dict[str, Any]] = {}
        self.duplicates = 0
        self._lock = threading.Lock()  # the server answers requests in threads

    def add(self, msg_id: str, payload: dict[str, Any]) -> bool:
        with self._lock:
            if msg_id in self.results:
                self.duplicates += 1
                return False
            self.results[msg_id] = payload
            return True


class AppState:
    """What the views share; `configure()` fills it in."""

    relay: BatchRelay
    verifier: standardwebhooks.Webhook

    def __init__(self) -> None:
        self.public_url: str | None = None
        self.store = ResultStore()


STATE = AppState()


@csrf_exempt  # an API called by other programs, not a form
@require_POST
def ask(request: HttpRequest) -> HttpResponse:
    try:
        data = json.loads(request.body or b"{}")
    except ValueError:
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("prompt"), str):
        return JsonResponse({"error": "JSON body needs a 'prompt' string"}, status=422)
    base = (STATE.public_url or request.build_absolute_uri("/")).rstrip("/")
    try:
        rid = STATE.relay.submit(
            "/v1/chat/completions",
            {
                "model": data.get("model", "gpt-4o-mini"),
                "messages": [{"role": "user", "content": data["prompt"]}],
            },
            callback=Webhook(base + WEBHOOK_PATH),
        )
    except RelayUnavailableError as exc:  # Redis down: the client may retry later
        return JsonResponse({"error": str(exc)}, status=503)
    except BatchRelayError as exc:  # rejected at the door: say why
        return JsonResponse({"error": str(exc)}, status=422)
    return JsonResponse({"id": rid, "result_url": f"{base}/results/{rid}"}, status=202)


@csrf_exempt  # authenticated by its signature instead
@require_POST
def webhook(request: HttpRequest) -> HttpResponse:
    try:
        payload = STATE.verifier.verify(request.body, dict(request.headers))
    except (standardwebhooks.WebhookVerificationError, ValueError):  # ValueError: malformed
        return HttpResponse("bad signature", status=400)
    STATE.store.add(request.headers["webhook-id"], payload)
    return HttpResponse(status=204)  # 2xx, also for a duplicate: no redelivery


@require_GET
def result(request: HttpRequest, request_id: str) -> HttpResponse:
    payload = STATE.store.results.get(request_id)
    if payload is None:
        return JsonResponse({"id": request_id, "status": "waiting"}, status=202)
    answer = None
    if payload["status"] == "succeeded":
        answer = payload["response"]["body"]["choices"][0]["message"]["content"]
    return JsonResponse(
        {"id": request_id, "status": payload["status"], "answer": answer, "raw": payload}
    )


urlpatterns = [
    path("ask", ask),
    path(WEBHOOK_PATH.lstrip("/"), webhook),
    path("results/<str:request_id>", result),
]


def configure(settings: Settings | None = None, public_url: str | None = None) -> AppState:
    """Set Django up (once per process) and connect to batchrelay; `settings` defaults to the
    BATCHRELAY_* environment, whose first webhook secret verifies deliveries."""
    settings = settings or load_settings()
    if not settings.webhook_secrets:
        raise RuntimeError("set BATCHRELAY_WEBHOOK_SECRETS (batchrelay dev prints it)")
    if not django_settings.configured:
        django_settings.configure(
            DEBUG=os.environ.get("DJANGO_DEBUG") == "1",
            SECRET_KEY=os.environ.get("DJANGO_SECRET_KEY") or secrets.token_urlsafe(32),
            ALLOWED_HOSTS=os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost").split(","),
            ROOT_URLCONF=__name__,
            INSTALLED_APPS=[],
            MIDDLEWARE=["django.middleware.common.CommonMiddleware"],
            APPEND_SLASH=False,
        )
        import django

        django.setup()
    STATE.relay = BatchRelay(settings)
    STATE.verifier = standardwebhooks.Webhook(settings.webhook_secrets[0].get_secret_value())
    STATE.public_url = public_url or os.environ.get("APP_PUBLIC_URL")
    return STATE


def create_app(settings: Settings | None = None, public_url: str | None = None) -> WSGIHandler:
    """The WSGI application (what `wsgi.py` exposes in a regular project)."""
    configure(settings, public_url)
    return WSGIHandler()


if __name__ == "__main__":
    from django.core.management import execute_from_command_line

    configure()
    execute_from_command_line(sys.argv)
