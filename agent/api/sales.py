"""POST /v1/sales and GET /v1/sales/{sale_id}."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import JSONResponse

from posedge.agent.api.auth import require_token
from posedge.agent.api.body import body_schema, json_body
from posedge.agent.domain.sales import SALE_ID, SaleIn

router = APIRouter(prefix="/v1", tags=["sales"], dependencies=[Depends(require_token)])


@router.post(
    "/sales",
    status_code=201,
    summary="Record a sale (durable before the answer; idempotent on sale_id)",
    responses={200: {"description": "identical retry: the original answer"},
               409: {"description": "sale_id reused with another body"},
               422: {"description": "field errors, or payments not equal to lines minus discounts"},
               507: {"description": "the disk is full; nothing was recorded"}},
    openapi_extra=body_schema(SaleIn),
)
async def post_sale(request: Request) -> JSONResponse:
    sale = await json_body(request, SaleIn)
    outcome = await request.app.state.agent.sales.record(sale)
    return JSONResponse(outcome.body, status_code=201 if outcome.created else 200)


@router.get("/sales/{sale_id}", summary="A recorded sale with its lines and (masked) payments")
async def get_sale(request: Request, sale_id: str = Path(pattern=SALE_ID)) -> dict[str, Any]:
    return await request.app.state.agent.sales.get(sale_id)
