"""Receipts: reprint a copy, preview as PNG, kick the cash drawer, print a printer's test page."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import JSONResponse, Response

from posedge.agent.api.auth import require_token
from posedge.agent.api.body import NO_BODY, no_body

router = APIRouter(prefix="/v1", tags=["receipts"], dependencies=[Depends(require_token)])

RECEIPT_NO = r"^[A-Za-z0-9._-]{1,64}$"
PRINTER_NAME = r"^[A-Za-z0-9._-]{1,64}$"


@router.post("/receipts/{receipt_no}/reprint", status_code=202,
             summary="Queue a copy of a receipt (printed marked as a copy; never opens the drawer)",
             responses={404: {"description": "no such receipt"}},
             dependencies=[Depends(no_body)], openapi_extra=NO_BODY)
async def reprint(request: Request, receipt_no: str = Path(pattern=RECEIPT_NO)) -> JSONResponse:
    body = await request.app.state.agent.receipts.reprint(receipt_no)
    return JSONResponse(body, status_code=202)


@router.get("/receipts/{receipt_no}.png", summary="PNG preview of a receipt, drawn from the same layout as the paper",
            response_class=Response,
            responses={200: {"content": {"image/png": {}}}, 404: {"description": "no such receipt"}})
async def preview(request: Request, receipt_no: str = Path(pattern=RECEIPT_NO)) -> Response:
    png = await request.app.state.agent.receipts.preview_png(receipt_no)
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})


@router.post("/drawer/open", summary="Kick the cash drawer through the receipt printer (now, or an error; never later)",
             responses={503: {"description": "printer unreachable or reporting a problem"}},
             dependencies=[Depends(no_body)], openapi_extra=NO_BODY)
async def open_drawer(request: Request) -> dict:
    return await request.app.state.agent.receipts.open_drawer()


@router.post("/printers/{name}/test-page", status_code=202,
             summary="Queue a short Chinese test page on a printer through the print queue (the status page's button)",
             responses={404: {"description": "no printer of that name (printer_not_found)"},
                        503: {"description": "the printer is disabled (printer_unavailable)"}},
             dependencies=[Depends(no_body)], openapi_extra=NO_BODY)
async def test_page(request: Request, name: str = Path(pattern=PRINTER_NAME)) -> JSONResponse:
    body = await request.app.state.agent.receipts.print_test_page(name)
    return JSONResponse(body, status_code=202)
