"""The published OpenAPI, completed with what FastAPI cannot see: the answers of the guards,
the token check and the body parser, so every status a route really returns is listed.

Which statuses come from where (docs/api.md, "Errors"):
- every route: 403 (Host/Origin guard), 413 (a declared Content-Length over the limit),
  503 (more than [api] max_connections at once: text/plain from the HTTP server; or storage);
- every route but health: 400 token_in_url, 401 (the bearer token);
- routes with a body: 400 (the JSON codes), 408 body_timeout, 415, 422;
- routes with parameters: 422; with a path parameter naming a record: 404.
"""

from __future__ import annotations

from typing import Any

# GET /v1/openapi.json is public too, but FastAPI does not list it. The status page, its numbers and the
# metrics show nothing personal (docs/operations.md, "Seeing what is going on").
PUBLIC_PATHS = frozenset({"/v1/health", "/", "/v1/overview", "/metrics"})
ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}
ERROR_BODY = {
    "type": "object",
    "required": ["code", "message"],
    "properties": {"code": {"type": "string", "description": "stable, for programs"},
                   "message": {"type": "string", "description": "for people"}},
    "additionalProperties": True,
    "description": "every error: a code, a message, and details per code (docs/api.md)",
}
JSON_ERROR = {"application/json": {"schema": ERROR_REF}}

EVERY_ROUTE = {
    "403": "Host or Origin not allowed (host_not_allowed, origin_not_allowed)",
    "413": "body over [api] max_body_bytes (body_too_large)",
    "503": "busy (over [api] max_connections: text/plain) or storage unavailable",
}
TOKEN_ROUTE = {
    "400": "token_in_url",
    "401": "missing or wrong bearer token (unauthorized, bad_token)",
}
BODY_ROUTE = {
    "400": "the body is not strict JSON: invalid_json, json_not_utf8, json_too_deep, json_duplicate_key, "
           "json_number_out_of_range, json_lone_surrogate (or token_in_url)",
    "408": "the body did not arrive within [api] body_timeout_s (body_timeout)",
    "415": "not Content-Type: application/json (unsupported_media_type)",
    "422": "field errors (invalid_input) or a rule of the route",
}
PARAM_ROUTE = {"422": "a parameter is not valid (invalid_input)"}
RECORD_ROUTE = {"404": "no such record (not_found, or the route's own code)"}
WRITE_ROUTE = {"507": "the disk is full; nothing was recorded (storage_full)"}


def complete_openapi(spec: dict[str, Any]) -> dict[str, Any]:
    components = spec.setdefault("components", {})
    components.setdefault("schemas", {})["ErrorBody"] = ERROR_BODY
    for name in ("HTTPValidationError", "ValidationError"):  # our 422 is ErrorBody, not FastAPI's shape
        components["schemas"].pop(name, None)
    components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer",
                                                "description": "the token from [api] token_file"}}
    for path, operations in spec.get("paths", {}).items():
        for method, operation in operations.items():
            _complete_operation(path, method, operation)
    return spec


def _complete_operation(path: str, method: str, operation: dict[str, Any]) -> None:
    statuses = dict(EVERY_ROUTE)
    if path not in PUBLIC_PATHS:
        operation["security"] = [{"bearer": []}]
        statuses.update(TOKEN_ROUTE)
    parameters = operation.get("parameters", [])
    if parameters:
        statuses.update(PARAM_ROUTE)
    if any(p.get("in") == "path" for p in parameters):
        statuses.update(RECORD_ROUTE)
    if "requestBody" in operation:
        statuses.update(BODY_ROUTE)
    if method == "post":
        statuses.update(WRITE_ROUTE)
    responses = operation.setdefault("responses", {})
    for status, description in statuses.items():
        answer = responses.setdefault(status, {"description": description})
        answer["content"] = dict(JSON_ERROR)
        if status == "503":
            answer["content"]["text/plain"] = {"schema": {"type": "string"}}
