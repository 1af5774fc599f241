"""One place that turns errors into HTTP answers: `{"code", "message", ...details}`."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from posedge.agent.api.body import invalid_input
from posedge.agent.errors import AgentError

log = logging.getLogger("posedge.api")

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 415: "unsupported_media_type"}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AgentError)
    async def agent_error(request: Request, exc: AgentError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e["type"] == "json_invalid" for e in errors):
            detail = next(e for e in errors if e["type"] == "json_invalid")
            return JSONResponse({"code": "invalid_json", "message": f"the body is not valid JSON: {detail['ctx'].get('error', '')}"},
                                status_code=400)
        problem = invalid_input(errors)
        return JSONResponse(problem.body(), status_code=problem.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
        message = exc.detail if isinstance(exc.detail, str) else code
        return JSONResponse({"code": code, "message": message}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("event=api_unexpected_error method=%s path=%s", request.method, request.url.path)
        return JSONResponse({"code": "internal_error", "message": "unexpected error; see the agent's log"}, status_code=500)
