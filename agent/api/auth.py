"""Bearer-token check for every route but health. The token is accepted only in the header."""

from __future__ import annotations

import hmac

from fastapi import Request

from posedge.agent.errors import AgentError


class Unauthorized(AgentError):
    code = "unauthorized"
    status = 401
    message = "missing bearer token: send 'Authorization: Bearer <token>' (the token is in [api] token_file)"


class BadToken(Unauthorized):
    code = "bad_token"
    message = "the bearer token is wrong"


class TokenInUrl(AgentError):
    code = "token_in_url"
    status = 400
    message = "never put the token in the URL (it ends up in logs and history); send it in the Authorization header"

URL_TOKEN_NAMES = ("token", "access_token", "api_token", "auth")


async def require_token(request: Request) -> None:
    if any(name in request.query_params for name in URL_TOKEN_NAMES):
        raise TokenInUrl()
    header = request.headers.get("authorization")
    if not header:
        raise Unauthorized()
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("the Authorization header must be 'Bearer <token>'")
    expected = request.app.state.agent.token
    if not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise BadToken()
