"""Request bodies: parsed and validated here, so every route gets the same strict rules.

JSON only (Content-Type application/json), no NaN/Infinity, an object at the top, then the
pydantic model (unknown fields refused, integer fen strict).
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

import orjson
from fastapi import Request
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import models_json_schema

from posedge.agent.errors import AgentError, InvalidInput

M = TypeVar("M", bound=BaseModel)


class InvalidJson(AgentError):
    code = "invalid_json"
    status = 400
    message = "the body is not valid JSON"


class UnsupportedMediaType(AgentError):
    code = "unsupported_media_type"
    status = 415
    message = "send the body as JSON with 'Content-Type: application/json'"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


async def json_body(request: Request, model: type[M]) -> M:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise UnsupportedMediaType()
    raw = await request.body()
    try:
        data = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidJson(f"the body is not valid JSON: {exc}") from None
    if _has_lone_surrogate(data):
        raise InvalidJson("the body is not valid JSON text: a \\u escape leaves an unpaired UTF-16 surrogate"
                          " (strings must be Unicode characters)")
    if not isinstance(data, dict):
        raise InvalidInput("the body must be a JSON object", errors=[{"field": "", "problem": "expected an object"}])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid_input(exc.errors()) from None


def _has_lone_surrogate(data: Any) -> bool:
    # json.loads lets "\\ud800" through as a str no UTF-8 writer can store or answer; orjson refuses it.
    try:
        orjson.dumps(data)
    except TypeError as exc:
        return "surrogates" in str(exc)
    return False


def invalid_input(errors: list[Any]) -> InvalidInput:
    fields = [field_error(e) for e in errors]
    summary = "; ".join(f"{f['field'] or 'body'}: {f['problem']}" for f in fields[:5])
    return InvalidInput(summary, errors=fields)


def field_error(error: Any) -> dict[str, Any]:
    loc = [p for p in error["loc"] if p != "body"]
    name = ""
    for part in loc:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    item: dict[str, Any] = {"field": name, "problem": error["msg"].removeprefix("Value error, "), "type": error["type"]}
    if error["type"] == "extra_forbidden":
        item["problem"] = "unknown field"
    value = error.get("input")
    if isinstance(value, (str, int, float, bool)) and not (isinstance(value, str) and len(value) > 80):
        item["found"] = value
    return item


BODY_MODELS: set[type[BaseModel]] = set()
REF = "#/components/schemas/{model}"


def body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI `requestBody` for routes that parse their body with json_body()."""
    BODY_MODELS.add(model)
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": REF.format(model=model.__name__)}}}}}


def add_body_schemas(openapi: dict[str, Any]) -> dict[str, Any]:
    """Put the body models (and the models they use) into components.schemas."""
    if BODY_MODELS:
        _, defs = models_json_schema([(m, "validation") for m in sorted(BODY_MODELS, key=lambda m: m.__name__)], ref_template=REF)
        openapi.setdefault("components", {}).setdefault("schemas", {}).update(defs.get("$defs", {}))
    return openapi
