"""The mini-program backend's API (`posedge-hq serve --http HOST:PORT`, docs/hq-api.md).

FastAPI on uvicorn, beside the MQTT consumer in the same process (its own database connection) or alone.
Every request needs `Authorization: Bearer <token>` (`--http-token-file` or env POSEDGE_HQ_HTTP_TOKEN).
Handlers are `async` and call the database directly: the event loop's one thread is the only user of the
API's connection, and each request is one transaction. Bodies are strict (unknown fields refused), money
is integer fen, times are RFC 3339 with an offset.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Callable

import uvicorn
from fastapi import FastAPI, Header, Path as PathParam, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictInt, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from posedge.hq import chain, keys
from posedge.hq.db import Database
from posedge.hq.settings import HqConfig

log = logging.getLogger("posedge.hq.http")

ID = r"^[A-Za-z0-9._:-]{1,64}$"
SKU = r"^[\x21-\x7e]{1,64}$"
MASKED_PHONE = r"^[0-9]{3}\*{4}[0-9]{4}$"
TOKEN_ENV = "POSEDGE_HQ_HTTP_TOKEN"
Fen = Annotated[StrictInt, Field(ge=0, le=2**53)]
MemberId = Annotated[str, PathParam(pattern=ID, description="the member's id (the same online and in stores)")]


class ErrorOut(BaseModel):
    """Every error's shape (docs/hq-api.md "Errors"): details beside code and message, by code."""
    model_config = ConfigDict(extra="allow")

    code: str = Field(description="for machines: unauthorized, invalid_input, unknown_member, already_claimed...")
    message: str = Field(description="for people")


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI responses of a route's errors (401 and 422 on every route)."""
    what = {401: "no or wrong bearer token", 404: "unknown (member, pickup, erasure)",
            409: "conflict (same id, other body; claimed already; coupon id issued)",
            422: "invalid input, or refused by a rule (its code says which)", 503: "HQ has no [signing] key"}
    return {status: {"model": ErrorOut, "description": what[status]} for status in sorted({401, 422, *statuses})}


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CouponIn(Body):
    coupon_id: str | None = Field(None, pattern=ID, description="default: a new UUID")
    campaign: str = Field(pattern=ID)
    amount_off_fen: StrictInt | None = Field(None, ge=1, le=2**53)
    percent_off: StrictInt | None = Field(None, ge=1, le=100)
    cap_fen: StrictInt | None = Field(None, ge=1, le=2**53, description="with percent_off: the most it takes off")
    gift_sku: str | None = Field(None, pattern=SKU)
    min_spend_fen: Fen = 0
    stores: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]] | None = Field(
        None, min_length=1, max_length=256, description="where it is valid; absent: every store")
    valid_from: AwareDatetime | None = None
    valid_until: AwareDatetime

    @model_validator(mode="after")
    def _one_benefit(self) -> "CouponIn":
        given = [n for n in ("amount_off_fen", "percent_off", "gift_sku") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of amount_off_fen, percent_off or gift_sku")
        if self.cap_fen is not None and self.percent_off is None:
            raise ValueError("cap_fen goes only with percent_off")
        start = max(self.valid_from or datetime.now(timezone.utc), datetime.now(timezone.utc))
        if self.valid_until <= start:
            raise ValueError("valid_until must be later than now and than valid_from")
        return self

    def claims(self) -> dict[str, Any]:
        return {**self.model_dump(exclude={"valid_from", "valid_until"}),
                "valid_from": None if self.valid_from is None else int(self.valid_from.timestamp()),
                "valid_until": int(self.valid_until.timestamp())}


class OrderIn(Body):
    order_id: str = Field(pattern=ID)
    member_id: str = Field(pattern=ID)
    amount_fen: Fen
    points_earned: Fen = 0
    points_spent: Fen = 0


class ClaimIn(Body):
    claim_code: str = Field(min_length=1, max_length=4096, description="the receipt QR's text, or its token alone")
    member_id: str = Field(pattern=ID)


class PickupItem(Body):
    sku: str = Field(pattern=SKU)
    name: str | None = Field(None, max_length=128)
    qty: StrictInt = Field(gt=0, le=100_000_000)


class PickupIn(Body):
    order_id: str = Field(pattern=ID)
    store_id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    items: list[PickupItem] = Field(min_length=1, max_length=500)
    phone_masked: str | None = Field(None, pattern=MASKED_PHONE,
                                     description="the masked phone (138****5678); never the number")
    member_id: str | None = Field(None, pattern=ID)


class Api:
    def __init__(self, database: Database, config: HqConfig, token: str) -> None:
        self.database, self.config, self.token = database, config, token
        signing = config.signing
        self.minter = keys.load_minter(signing.key_file, signing.kid) if signing is not None else None

    def run(self, work: Callable[[], Any]) -> Any:
        with self.database.transaction():
            return work()

    def signing_minter(self) -> Any:
        if self.minter is None:
            raise chain.ChainError(503, "signing_unconfigured", "HQ has no [signing] key: it cannot sign codes")
        return self.minter


def create_app(api: Api) -> FastAPI:
    app = FastAPI(title="posedge HQ: mini-program API", version="1", openapi_url="/v1/openapi.json",
                  docs_url=None, redoc_url=None)
    _errors(app)
    tenant = api.config.tenant

    @app.middleware("http")
    async def bearer(request: Request, call_next: Any) -> Any:
        if request.url.path != "/v1/openapi.json":
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {api.token}".encode()):
                return JSONResponse({"code": "unauthorized", "message": "missing or wrong bearer token"},
                                    status_code=401, headers={"WWW-Authenticate": "Bearer"})
        return await call_next(request)

    @app.get("/v1/members/{member_id}", responses=errors(404),
             summary="tier, points balance, spend over the tier window, consent")
    async def get_member(member_id: MemberId) -> dict[str, Any]:
        return dict(api.run(lambda: chain.member(api.database, api.config, member_id).as_dict()))

    @app.post("/v1/members/{member_id}/code", responses=errors(503),
              status_code=201, summary="a fresh signed member code (k=m)")
    async def member_code(member_id: MemberId) -> dict[str, Any]:
        minter = api.signing_minter()
        return dict(api.run(lambda: chain.member_code(api.database, api.config, minter, member_id)))

    @app.post("/v1/members/{member_id}/coupons", responses=errors(409, 503),
              status_code=201, summary="issue a coupon; returns its signed code")
    async def issue_coupon(member_id: MemberId, body: CouponIn) -> dict[str, Any]:
        minter = api.signing_minter()
        return dict(api.run(lambda: chain.issue_coupon(api.database, api.config, minter, member_id, body.claims())))

    @app.delete("/v1/members/{member_id}", responses=errors(404),
                status_code=202, summary="erase the member (PIPL), at HQ and in stores")
    async def erase_member(member_id: MemberId, x_requested_by: Annotated[str, Header(
            pattern=ID, description="who asks (operator id), kept in the audit row")]) -> dict[str, Any]:
        return dict(api.run(lambda: chain.erase(api.database, tenant, member_id, x_requested_by)))

    @app.get("/v1/erasures/{erasure_id}", responses=errors(404),
             summary="an erasure's audit row and each store's acknowledgement")
    async def get_erasure(erasure_id: Annotated[str, PathParam(pattern=ID)]) -> dict[str, Any]:
        return dict(api.run(lambda: chain.erasure(api.database, tenant, erasure_id)))

    @app.post("/v1/orders", responses=errors(409),
              status_code=201, summary="an online order: spend and points, so tier counts both channels")
    async def order(body: OrderIn) -> JSONResponse:
        created, answer = api.run(lambda: chain.online_order(api.database, api.config, body.model_dump()))
        return JSONResponse(answer, status_code=201 if created else 200)

    @app.post("/v1/claims", responses=errors(409),
              status_code=201, summary="claim a receipt's points for a member, once")
    async def claim(body: ClaimIn) -> dict[str, Any]:
        return dict(api.run(lambda: chain.claim(api.database, api.config, body.claim_code, body.member_id)))

    @app.get("/v1/stock/{sku}", responses=errors(),
             summary="on hand per store from the stores' stock events; ?near=LAT,LNG sorts")
    async def stock(sku: Annotated[str, PathParam(pattern=SKU)],
                    near: Annotated[str | None, Query(description="LAT,LNG in degrees")] = None) -> dict[str, Any]:
        point = _near(near)
        return dict(api.run(lambda: chain.stock(api.database, tenant, sku, point)))

    @app.post("/v1/pickups", responses=errors(409), status_code=201, summary="book a pickup order at a store")
    async def book_pickup(body: PickupIn) -> JSONResponse:
        order = body.model_dump()
        created, answer = api.run(lambda: chain.book_pickup(api.database, tenant, order, api.minter))
        return JSONResponse(answer, status_code=201 if created else 200)

    @app.get("/v1/pickups/{order_id}", responses=errors(404),
             summary="a pickup order; collected once the store reports it")
    async def get_pickup(order_id: Annotated[str, PathParam(pattern=ID)]) -> dict[str, Any]:
        return dict(api.run(lambda: chain.pickup(api.database, tenant, order_id)))

    return app


def _near(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    parts = text.split(",")
    try:
        lat, lng = (float(p) for p in parts) if len(parts) == 2 else (999.0, 999.0)
    except ValueError:
        lat, lng = 999.0, 999.0
    if not (-90 <= lat <= 90 and -180 <= lng <= 180):
        raise chain.ChainError(422, "invalid_input", "near must be LAT,LNG in degrees (31.23,121.47)", field="near")
    return lat, lng


def _errors(app: FastAPI) -> None:
    @app.exception_handler(chain.ChainError)
    async def chain_error(request: Request, exc: chain.ChainError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e["type"] == "json_invalid" for e in errors):
            return JSONResponse({"code": "invalid_json", "message": "the body is not valid JSON"}, status_code=400)
        fields = [{"field": ".".join(str(p) for p in e["loc"][1:]) or str(e["loc"][0]), "problem": e["msg"]}
                  for e in errors]
        first = fields[0]
        return JSONResponse({"code": "invalid_input", "message": f"{first['field']}: {first['problem']}",
                             "errors": fields}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, f"http_{exc.status_code}")
        return JSONResponse({"code": code, "message": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("event=hq_http_error path=%s", request.url.path)
        return JSONResponse({"code": "internal_error", "message": "internal error (logged)"}, status_code=500)


def read_token(path: Path | None) -> str:
    """The bearer token from the file, else env POSEDGE_HQ_HTTP_TOKEN; ValueError when neither (or too short)."""
    token = path.read_text(encoding="utf-8").strip() if path is not None else os.environ.get(TOKEN_ENV, "").strip()
    if len(token) < 16:
        raise ValueError(f"--http needs a bearer token of at least 16 characters: --http-token-file or env {TOKEN_ENV}")
    return token


def parse_listen(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--http {text!r}: expected HOST:PORT")
    return host, int(port)


def start_in_thread(api: Api, listen: tuple[str, int]) -> Callable[[], None]:
    """uvicorn on its own thread (beside paho's loop on the main one; uvicorn leaves signals to the main thread
    when it runs on another); returns what stops it."""
    server = uvicorn.Server(uvicorn.Config(create_app(api), host=listen[0], port=listen[1], log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, name="hq-http", daemon=True)
    thread.start()

    def stop() -> None:
        server.should_exit = True
        thread.join(10)

    return stop


def run_forever(api: Api, listen: tuple[str, int]) -> None:
    uvicorn.run(create_app(api), host=listen[0], port=listen[1], log_level="warning", lifespan="off")
