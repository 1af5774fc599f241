"""ASGI guards in front of every route: request size, Host (DNS rebinding) and Origin checks.

They answer with the same JSON error shape as the routes, before any parsing happens.
"""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable

from posedge.agent.errors import AgentError

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


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


class RequestGuard:
    """Refuse requests for another Host, from an unlisted Origin, or with bodies over the limit."""

    def __init__(self, app: ASGIApp, *, allowed_hosts: set[str], allowed_origins: set[str], max_body_bytes: int) -> None:
        self.app = app
        self.allowed_hosts = {h.lower() for h in allowed_hosts}
        self.allowed_origins = allowed_origins
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
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

        async def limited_receive() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise BodyTooLarge(f"request body is over the limit of {self.max_body_bytes} bytes "
                                       "([api] max_body_bytes)", limit_bytes=self.max_body_bytes)
            return message

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await send_error(send, 413, "body_too_large",
                                 f"request body is over the limit of {self.max_body_bytes} bytes ([api] max_body_bytes)",
                                 limit_bytes=self.max_body_bytes)


def allowed_hosts_for(host: str, port: int, extra: list[str]) -> set[str]:
    names = {host}
    if host in ("127.0.0.1", "localhost", "::1"):
        names |= {"127.0.0.1", "localhost", "[::1]"}
    elif ":" in host:
        names = {f"[{host}]"}
    hosts = {f"{name}:{port}" for name in names}
    hosts |= {h if ":" in h.strip("[]") or h.endswith("]") else f"{h}:{port}" for h in extra}
    return hosts
