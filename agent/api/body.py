"""Request bodies: parsed and validated here, so every route gets the same strict rules.

JSON only (Content-Type application/json, UTF-8), then strict JSON for us: no NaN/Infinity, no
number a 64-bit reader could not hold, no lone UTF-16 surrogate in a string or key, no key twice
in one object, at most MAX_DEPTH levels of nesting, an object at the top; then the pydantic model
(unknown fields refused, integer fen strict). Each refusal is a 400 with its own code (docs/api.md).

Answers never echo a value they could not render, nor a value from a field that may carry a
payment code (see `found_is_safe`).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Sequence, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import models_json_schema

from posedge.agent.errors import AgentError, InvalidInput

M = TypeVar("M", bound=BaseModel)

MAX_DEPTH = 32  # our deepest body (a sale's lines/coupon override) is 3 levels; 32 leaves room, not a stack
INT_MIN, INT_MAX = -(2**63), 2**64 - 1  # what a 64-bit reader (signed or unsigned) can hold
MAX_NUMBER_CHARS = 400  # longer numerals are refused before Python converts them
SURROGATE = re.compile("[\ud800-\udfff]")


class InvalidJson(AgentError):
    """The body is not strict JSON. Subclasses say how; each answer also has `category: invalid_json`,
    so a client that knew only invalid_json (before the specific codes) can still match on it."""

    code = "invalid_json"
    status = 400
    message = "the body is not valid JSON"

    def body(self) -> dict[str, Any]:
        return {**super().body(), "category": "invalid_json"}


class JsonNotUtf8(InvalidJson):
    code = "json_not_utf8"
    message = "the body is not UTF-8 text (JSON must be UTF-8, without a byte order mark)"


class JsonTooDeep(InvalidJson):
    code = "json_too_deep"
    message = f"the body nests arrays/objects deeper than {MAX_DEPTH} levels"


class JsonDuplicateKey(InvalidJson):
    code = "json_duplicate_key"
    message = "an object in the body has the same key twice"


class JsonNumberOutOfRange(InvalidJson):
    code = "json_number_out_of_range"
    message = "a number in the body is not finite or not within 64 bits (NaN, Infinity, 1e400, 2**64 are refused)"


class JsonLoneSurrogate(InvalidJson):
    code = "json_lone_surrogate"
    message = ("a string or key in the body has a \\u escape that leaves an unpaired UTF-16 surrogate"
               " (strings must be Unicode characters)")


class UnsupportedMediaType(AgentError):
    code = "unsupported_media_type"
    status = 415
    message = "send the body as JSON with 'Content-Type: application/json' (charset, if given, utf-8)"


def _media_type_is_json(header: str) -> bool:
    media_type, *params = [part.strip().lower() for part in header.split(";")]
    json_suffixed = media_type.startswith("application/") and media_type.endswith("+json")  # RFC 6839
    if media_type != "application/json" and not json_suffixed:
        return False
    for param in params:
        name, _, value = param.partition("=")
        if name.strip() == "charset" and value.strip().strip('"') not in ("utf-8", "utf8"):
            return False
    return True


async def json_body(request: Request, model: type[M]) -> M:
    """The body as `model`, or an AgentError (400/415/422) that says what is wrong and where."""
    if not _media_type_is_json(request.headers.get("content-type", "")):
        raise UnsupportedMediaType()
    data = parse_json(await request.body())
    if not isinstance(data, dict):
        raise InvalidInput("the body must be a JSON object", errors=[{"field": "", "problem": "expected an object"}])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid_input(exc.errors()) from None


def parse_json(raw: bytes) -> Any:
    """Strict JSON for us (see the module doc); raises an InvalidJson subclass, never anything else."""
    text = _utf8_text(raw)
    try:
        data = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float, parse_int=_int64,
                          object_pairs_hook=_object_without_duplicates)
    except InvalidJson:
        raise
    except RecursionError:
        raise JsonTooDeep() from None
    except json.JSONDecodeError as exc:
        raise InvalidJson(f"the body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
                          line=exc.lineno, column=exc.colno) from None
    _check_depth_and_strings(data)
    return data


NO_BODY = {"requestBody": {"required": False, "content": {"application/json": {
    "schema": {"type": "object", "maxProperties": 0, "description": "this route takes no body; {} or nothing"}}}}}


async def no_body(request: Request) -> None:
    """For routes that take no body: nothing, or `{}` under the same strict rules as every body."""
    raw = await request.body()
    if not raw:
        return
    if not _media_type_is_json(request.headers.get("content-type", "")):
        raise UnsupportedMediaType()
    if parse_json(raw) != {}:
        raise InvalidInput("this route takes no body: send nothing or {}",
                           errors=[{"field": "", "problem": "expected no body"}])


def _utf8_text(raw: bytes) -> str:
    if not raw.strip():
        raise InvalidJson("the body is empty; send a JSON object")
    if raw.startswith(b"\xef\xbb\xbf"):
        raise JsonNotUtf8("the body starts with a byte order mark; send UTF-8 without one")
    if b"\x00" in raw:  # never in UTF-8 JSON (a NUL must be escaped); UTF-16/32 text is full of them
        raise JsonNotUtf8("the body has NUL bytes, like UTF-16 or UTF-32 text; send UTF-8", offset=raw.index(b"\x00"))
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JsonNotUtf8(f"the body is not UTF-8: invalid byte at offset {exc.start}", offset=exc.start) from None


def _refuse_constant(name: str) -> Any:
    raise JsonNumberOutOfRange(f"{name} is not a JSON number; send a finite number")


def _finite_float(numeral: str) -> float:
    value = float(numeral) if len(numeral) <= MAX_NUMBER_CHARS else math.inf
    if not math.isfinite(value):
        raise JsonNumberOutOfRange("a number in the body is too large to be a finite 64-bit float (like 1e400)")
    return value


def _int64(numeral: str) -> int:
    value = int(numeral) if len(numeral) <= 21 else None  # 2**64 has 20 digits; the sign makes 21
    if value is None or not INT_MIN <= value <= INT_MAX:
        raise JsonNumberOutOfRange("an integer in the body does not fit in 64 bits")
    return value


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        repeated = next(key for key, _ in pairs if key in seen or seen.add(key))  # type: ignore[func-returns-value]
        named = f" {repeated!r}" if SAFE_KEY.fullmatch(repeated) else ""
        raise JsonDuplicateKey(f"an object in the body has the key{named} twice; send each key once")
    return obj


SAFE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")  # keys we name back: field names, never data


def _check_depth_and_strings(data: Any) -> None:
    """Walks without recursion: a body that json could parse is never too deep for this check."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, str):
            if SURROGATE.search(node):
                raise JsonLoneSurrogate()
        elif isinstance(node, (dict, list)):
            if depth > MAX_DEPTH:
                raise JsonTooDeep()
            items = node.items() if isinstance(node, dict) else enumerate(node)
            for key, value in items:
                if isinstance(key, str) and SURROGATE.search(key):
                    raise JsonLoneSurrogate()
                stack.append((value, depth + 1))


def invalid_input(errors: Sequence[Any]) -> InvalidInput:
    fields = [field_error(e) for e in errors]
    summary = "; ".join(f"{f['field'] or 'body'}: {f['problem']}" for f in fields[:5])
    return InvalidInput(summary, errors=fields)


def field_error(error: Any) -> dict[str, Any]:
    loc = [p for p in error["loc"] if p != "body"]
    name = ""
    for part in loc:
        if isinstance(part, int):
            name += f"[{part}]"
        else:
            part = str(part) if SAFE_KEY.fullmatch(str(part)) else "?"  # an unknown key is data: not named back
            name += f".{part}" if name else part
    item: dict[str, Any] = {"field": name, "problem": error["msg"].removeprefix("Value error, "), "type": error["type"]}
    if error["type"] == "extra_forbidden":
        item["problem"] = "unknown field"
    value = error.get("input")
    if found_is_safe(loc, value):
        item["found"] = value
    return item


# Fields that may hold a payment code (or a code that identifies a person): their values are never echoed.
PAYMENT_FIELDS = frozenset({"text", "reference", "code", "member_code", "coupons", "card_no", "phone"})
LONG_DIGITS = re.compile(r"\d{12,}")  # payment codes are 16-24 digits; member cards and phones come close


def found_is_safe(loc: list[Any], value: Any) -> bool:
    """Echo a refused value only when it renders as JSON and cannot be a payment code."""
    if any(isinstance(p, str) and p in PAYMENT_FIELDS for p in loc):
        return False
    if isinstance(value, bool):
        return True
    if isinstance(value, int):
        return INT_MIN <= value <= INT_MAX and not LONG_DIGITS.search(str(value))
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, str):
        return len(value) <= 80 and value.isprintable() and not LONG_DIGITS.search(value)
    return False


BODY_MODELS: set[type[BaseModel]] = set()
REF = "#/components/schemas/{model}"


def body_schema(model: type[BaseModel], required: bool = True) -> dict[str, Any]:
    """OpenAPI `requestBody` for routes that parse their body with json_body()."""
    BODY_MODELS.add(model)
    schema = {"$ref": REF.format(model=model.__name__)}
    return {"requestBody": {"required": required, "content": {"application/json": {"schema": schema}}}}


def add_body_schemas(openapi: dict[str, Any]) -> dict[str, Any]:
    """Put the body models (and the models they use) into components.schemas."""
    if BODY_MODELS:
        models = sorted(BODY_MODELS, key=lambda m: m.__name__)
        _, defs = models_json_schema([(m, "validation") for m in models], ref_template=REF)
        openapi.setdefault("components", {}).setdefault("schemas", {}).update(defs.get("$defs", {}))
    return openapi
