"""Seeing what is going on: the status page (`GET /`), its read-only numbers (`GET /v1/overview`) and
Prometheus metrics (`GET /metrics`).

None of them needs the token: they show states, counts and masked scans, nothing personal, and the Host
guard keeps other sites' pages out (DNS rebinding). The page's one action, the test print, is a route of
the receipts and asks for the token (agent/api/receipts.py). Both reads run in a worker thread: they
read the database (outbox and print queue depths).
"""

from __future__ import annotations

import asyncio
from importlib import resources

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

router = APIRouter(tags=["observe"])

# The page's inline script and style only, and connections to this agent only: the page loads nothing else.
PAGE_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
            "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def _page() -> str:
    return resources.files("posedge.agent.metrics").joinpath("page.html").read_text(encoding="utf-8")


@router.get("/", summary="The status page for store IT (no token; its test print asks for it)",
            response_class=HTMLResponse, responses={200: {"content": {"text/html": {}}}})
async def status_page() -> HTMLResponse:
    return HTMLResponse(_page(), headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-store",
                                          "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"})


@router.get("/v1/overview", summary="The status page's numbers: chosen fields of GET /v1/status, nothing personal "
                                    "(no token)")
async def overview(request: Request) -> dict:
    return await asyncio.to_thread(request.app.state.agent.metrics.overview)


@router.get("/metrics", summary="Prometheus metrics in the text format (no token)", response_class=Response,
            responses={200: {"content": {"text/plain": {}}}})
async def metrics(request: Request) -> Response:
    from posedge.agent.metrics.feature import CONTENT_TYPE

    body = await asyncio.to_thread(request.app.state.agent.metrics.scrape)
    return Response(body, media_type=CONTENT_TYPE.split(";")[0], headers={"Content-Type": CONTENT_TYPE,
                                                                           "Cache-Control": "no-store"})
