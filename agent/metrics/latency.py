"""What must be counted as it happens: each API request's latency by route, and the errors it answered.

An ASGI middleware outside every guard, so refusals (wrong Host, body too large) are counted too.
The route label is the matched route's template (`/v1/sales/{sale_id}`), never the path a client sent,
so the number of series stays bounded whatever clients request; unmatched paths share "(no route)".
Latency is measured to the start of the answer (its status line): an event stream's answer starts at
once and then lasts as long as the client stays, which says nothing about how fast the agent is.
"""

from __future__ import annotations

import json
import time

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from posedge.agent.api.errors import route_of

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
ERROR_BODY_MAX = 4096  # our error bodies are small; a larger one is not read for its code


class ApiMetrics:
    """The API's own metrics in one agent's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.latency = Histogram("posedge_api_request_duration_seconds",
                                 "Time from a request's arrival to the start of its answer, by route template",
                                 ["method", "route"], registry=registry, buckets=LATENCY_BUCKETS)
        self.responses = Counter("posedge_api_responses", "Answers by route template and HTTP status",
                                 ["route", "status"], registry=registry)
        self.errors = Counter("posedge_api_errors", "Error answers by their code (docs/api.md)", ["code"],
                              registry=registry)

    def middleware(self, app: ASGIApp) -> ASGIApp:
        return LatencyMiddleware(app, self)


class LatencyMiddleware:
    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        error_body: bytearray | None = None
        status = 0

        async def timed_send(message: Message) -> None:
            nonlocal error_body, status
            if message["type"] == "http.response.start":
                status = message["status"]
                method = scope.get("method", "")
                self.metrics.latency.labels(method if method in METHODS else "other",
                                            route_of(scope)).observe(time.perf_counter() - started)
                self.metrics.responses.labels(route_of(scope), str(status)).inc()
                if status >= 400 and _is_json(message):
                    error_body = bytearray()
            elif message["type"] == "http.response.body" and error_body is not None:
                error_body += message.get("body", b"")[:ERROR_BODY_MAX - len(error_body) + 1]
                if not message.get("more_body", False) or len(error_body) > ERROR_BODY_MAX:
                    self.metrics.errors.labels(_error_code(bytes(error_body), status)).inc()
                    error_body = None
            await send(message)

        await self.app(scope, receive, timed_send)


def _is_json(message: Message) -> bool:
    for key, value in message.get("headers", []):
        if key.lower() == b"content-type":
            return value.split(b";")[0].strip().lower() == b"application/json"
    return False


def _error_code(body: bytes, status: int) -> str:
    """The `code` of our error shape; `http_<status>` for an answer without one (never the body itself)."""
    try:
        code = json.loads(body).get("code") if len(body) <= ERROR_BODY_MAX else None
    except (ValueError, AttributeError):
        code = None
    if isinstance(code, str) and code.isidentifier() and len(code) <= 64:
        return code
    return f"http_{status}"
