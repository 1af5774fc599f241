"""ASGI guards in front of every route: request size, body-read deadline, Host (DNS rebinding)
and Origin checks, and the last catch for errors (so uvicorn never logs a request's traceback).

They answer with the same JSON error shape as the routes, before any parsing happens.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from posedge.agent.activity import TillActivity
from posedge.agent.api.errors import log_unexpected, unexpected_answer
from posedge.agent.errors import AgentError


async def send_error(send: Send, status: int, code: str, message: str, **details: Any) -> None:
    body = json.dumps({"code": code, "message": message, **details}, ensure_ascii=False).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


class BodyTooLarge(AgentError):
    """Raised from receive() when a streamed body passes the limit; the app's error mapping answers it."""

    code = "body_too_large"
    status = 413
    message = "request body is over the limit ([api] max_body_bytes)"


class BodyTimeout(AgentError):
    """Raised from receive() when the body has not fully arrived within [api] body_timeout_s."""

    code = "body_timeout"
    status = 408
    message = "the request body did not arrive in time ([api] body_timeout_s); the connection is closed"


@dataclass
class ApiCounters:
    """Quiet events of the API, counted since start (GET /v1/status, section api)."""

    client_disconnects: int = 0  # clients that left mid-body
    body_timeouts: int = 0  # 408: the body came too slowly
    header_timeouts: int = 0  # connections closed because headers came too slowly (runner.py)
    unexpected_errors: int = 0  # 500s (each logged with its error_id)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class RequestGuard:
    """Refuse requests for another Host, from an unlisted Origin, with bodies over the limit or
    arriving too slowly; answer 500 (logged without input) for anything that escapes the app."""

    def __init__(self, app: ASGIApp, *, allowed_hosts: set[str], allowed_origins: set[str], max_body_bytes: int,
                 body_timeout_s: float = 10.0, counters: ApiCounters | None = None,
                 activity: TillActivity | None = None,
                 observe: Callable[[ASGIApp], ASGIApp] | None = None) -> None:
        self.app = app
        self.activity = activity or TillActivity()
        self.allowed_hosts = {h.lower() for h in allowed_hosts}
        self.allowed_origins = allowed_origins
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s
        self.counters = counters or ApiCounters()
        # `observe` wraps the guard itself (GET /metrics' latency and error counts), so its refusals count too.
        self._entry: ASGIApp = observe(self._guard) if observe is not None else self._guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._entry(scope, receive, send)

    async def _guard(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope.get("method") != "POST":  # reads (and GET /v1/events, which streams for hours) are not the till
            await self._guarded(scope, receive, send)
            return
        self.activity.begin()
        try:
            await self._guarded(scope, receive, send)
        finally:
            self.activity.end()

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        host = (_header(scope, b"host") or "").lower()
        if host not in self.allowed_hosts:
            await send_error(send, 403, "host_not_allowed",
                             f"Host {host or '(none)'!r} is not this agent's address; use one of: "
                             f"{', '.join(sorted(self.allowed_hosts))}")
            return
        origin = _header(scope, b"origin")
        if origin is not None and origin.rstrip("/") not in self.allowed_origins:
            await send_error(send, 403, "origin_not_allowed",
                             f"Origin {origin!r} is not listed in [api] cors_origins")
            return
        length = _header(scope, b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            await send_error(send, 413, "body_too_large",
                             f"request body is over the limit of {self.max_body_bytes} bytes ([api] max_body_bytes)",
                             limit_bytes=self.max_body_bytes)
            return
        await self._call_limited(scope, receive, send)

    async def _call_limited(self, scope: Scope, receive: Receive, send: Send) -> None:
        received = 0
        started = False
        body_done = False
        timed_out = False
        deadline = time.monotonic() + self.body_timeout_s

        async def limited_receive() -> Message:
            nonlocal received, body_done, timed_out
            if body_done:  # after the body only a disconnect comes: waiting for it is not slow
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0.0))
            except asyncio.TimeoutError:
                timed_out = True
                self.counters.body_timeouts += 1
                raise BodyTimeout() from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if received > self.max_body_bytes:
                    raise BodyTooLarge(f"request body is over the limit of {self.max_body_bytes} bytes "
                                       "([api] max_body_bytes)", limit_bytes=self.max_body_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if timed_out:  # the rest of a slow body must not be read as the next request
                    message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                limit = self.max_body_bytes
                await send_error(send, 413, "body_too_large",
                                 f"request body is over the limit of {limit} bytes ([api] max_body_bytes)",
                                 limit_bytes=limit)
        except Exception as exc:  # already answered and logged by the app's handler; never re-raised to uvicorn
            error_id = log_unexpected(scope, exc)
            if not started:
                await send_error(send, 500, **unexpected_answer(error_id))


def allowed_hosts_for(host: str, port: int, extra: list[str]) -> set[str]:
    names = {host}
    if host in ("127.0.0.1", "localhost", "::1"):
        names |= {"127.0.0.1", "localhost", "[::1]"}
    elif ":" in host:
        names = {f"[{host}]"}
    hosts = {f"{name}:{port}" for name in names}
    hosts |= {h if ":" in h.strip("[]") or h.endswith("]") else f"{h}:{port}" for h in extra}
    return hosts
