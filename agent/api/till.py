"""The till's routes: quote, refunds, member look-up, coupon validation, pickups, inventory.

`POST /v1/sales` itself stays in agent/api/sales.py; the till takes part in it through
SaleService.pricing and SaleService.participants (agent/till/feature.py).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse

from posedge.agent.api.auth import require_token
from posedge.agent.api.body import body_schema, json_body
from posedge.agent.domain.sales import SALE_ID, SKU
from posedge.agent.till.feature import CollectIn, QuoteIn
from posedge.agent.till.refunds import RefundIn

router = APIRouter(prefix="/v1", tags=["till"], dependencies=[Depends(require_token)])

CODE = Query(min_length=1, max_length=2048, description="as scanned")


def _till(request: Request) -> Any:
    return request.app.state.agent.till


@router.post("/quote", summary="Price a basket with member, coupons and points; changes nothing",
             openapi_extra=body_schema(QuoteIn))
async def post_quote(request: Request) -> dict[str, Any]:
    return await _till(request).quote(await json_body(request, QuoteIn))


@router.post("/sales/{sale_id}/refunds", status_code=201, openapi_extra=body_schema(RefundIn),
             summary="Refund a sale in full or in part (idempotent on refund_id); reverses points and stock",
             responses={200: {"description": "identical retry: the original answer"},
                        409: {"description": "refund_id reused with another body"},
                        422: {"description": "more than was sold, or an unknown line"}})
async def post_refund(request: Request, sale_id: str = Path(pattern=SALE_ID)) -> JSONResponse:
    body = await json_body(request, RefundIn)
    created, answer = await request.app.state.agent.refunds.refund(sale_id, body)
    return JSONResponse(answer, status_code=201 if created else 200)


@router.get("/members/lookup", summary="A member by member code, card number or phone (hashed, never stored)",
            responses={404: {"description": "no such member (member_not_found)"}})
async def member_lookup(request: Request, code: str = CODE) -> dict[str, Any]:
    return await _till(request).lookup_member(code)


@router.get("/coupons/validate", summary="Is this coupon valid here and now? 200 with valid, reason, claims")
async def coupon_validate(request: Request, code: str = CODE,
                          member_code: str | None = Query(None, max_length=2048),
                          member_id: str | None = Query(None, pattern=SALE_ID)) -> dict[str, Any]:
    return await _till(request).validate_coupon(code, member_code, member_id)


@router.get("/pickups/{order_id}", summary="A pickup order HQ sent to this store")
async def pickup(request: Request, order_id: str = Path(pattern=SALE_ID)) -> dict[str, Any]:
    return await _till(request).pickup(order_id)


@router.post("/pickups/{order_id}/collect", summary="Record that the customer collected the order (once; again: 409)",
             responses={409: {"description": "already collected, or not ready"}},
             openapi_extra=body_schema(CollectIn, required=False))
async def collect(request: Request, order_id: str = Path(pattern=SALE_ID)) -> dict[str, Any]:
    body = await json_body(request, CollectIn) if await request.body() else CollectIn()
    return await _till(request).collect(order_id, body)


@router.get("/inventory/{sku}", summary="Stock of a SKU: HQ's snapshot plus local movements; negative is flagged")
async def inventory(request: Request, sku: str = Path(pattern=SKU)) -> dict[str, Any]:
    return await _till(request).inventory(sku)
