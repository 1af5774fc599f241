"""One place that turns errors into HTTP answers: `{"code", "message", ...details}`.

Nothing a client sent reaches the log from here: an unexpected error is logged as the route
template, the error's class, the code locations it passed and an id the client gets too; never
its message or arguments (they may quote the input: a payment code, a member's phone).
"""

from __future__ import annotations

import logging
import secrets
import traceback
from pathlib import Path
from typing import Any, Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from posedge.agent.api.body import invalid_input
from posedge.agent.errors import AgentError

log = logging.getLogger("posedge.api")

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 415: "unsupported_media_type"}
ERROR_ID_ATTR = "posedge_error_id"  # set on an exception once it has been logged with its id


def exception_summary(exc: BaseException) -> str:
    """`error=<class> at=<file:line:function;...>`: where it failed, without the message."""
    frames = traceback.extract_tb(exc.__traceback__)[-8:]
    where = ";".join(f"{Path(f.filename).name}:{f.lineno}:{f.name}" for f in frames)
    return f"error={exc.__class__.__module__}.{exc.__class__.__qualname__} at={where or '-'}"


def route_of(scope: Mapping[str, Any]) -> str:
    """The matched route's template (`/v1/sales/{sale_id}`), never the path the client sent."""
    route = scope.get("route")
    return getattr(route, "path", None) or "(no route)"


def log_unexpected(scope: Mapping[str, Any], exc: BaseException) -> str:
    """Log an unexpected error once, safely; returns its id (also given to the client)."""
    error_id = getattr(exc, ERROR_ID_ATTR, None)
    if error_id is None:
        error_id = secrets.token_hex(6)
        log.error("event=api_unexpected_error error_id=%s method=%s route=%s %s",
                  error_id, scope.get("method", "-"), route_of(scope), exception_summary(exc))
        try:
            setattr(exc, ERROR_ID_ATTR, error_id)
        except AttributeError:  # exceptions with __slots__: it may be logged twice, still safely
            pass
    return error_id


def unexpected_answer(error_id: str) -> dict[str, Any]:
    return {"code": "internal_error", "message": "unexpected error; the agent's log has it under this error_id",
            "error_id": error_id}


class RedactExceptions(logging.Filter):
    """For loggers we do not write (uvicorn.error, asyncio): a traceback becomes its class and
    code locations, and the message loses its arguments when it came with one."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            record.msg = f"{record.getMessage()} {exception_summary(record.exc_info[1])}"
            record.args = ()
            record.exc_info = None
            record.exc_text = None
        return True


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AgentError)
    async def agent_error(request: Request, exc: AgentError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, exc: ClientDisconnect) -> JSONResponse:
        # The client left mid-body: nothing to answer and nothing to log; counted in /v1/status (api).
        request.app.state.api_counters.client_disconnects += 1
        return JSONResponse({"code": "client_disconnected", "message": "the client went away"}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e["type"] == "json_invalid" for e in errors):
            return JSONResponse({"code": "invalid_json", "message": "the body is not valid JSON"}, status_code=400)
        problem = invalid_input(errors)
        return JSONResponse(problem.body(), status_code=problem.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
        message = exc.detail if isinstance(exc.detail, str) else code
        return JSONResponse({"code": code, "message": message}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        request.app.state.api_counters.unexpected_errors += 1
        return JSONResponse(unexpected_answer(log_unexpected(request.scope, exc)), status_code=500)
