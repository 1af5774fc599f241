"""Health (no token, for monitors) and status (outbox, storage, devices)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from posedge.agent.api.auth import require_token

router = APIRouter(prefix="/v1", tags=["system"])


@router.get("/health", summary="Liveness and storage health (no token needed)")
async def health(request: Request) -> JSONResponse:
    body = request.app.state.agent.health()
    return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)


@router.get("/status", summary="Outbox depth, oldest pending age, storage, devices",
            dependencies=[Depends(require_token)])
async def status(request: Request) -> dict:
    return await asyncio.to_thread(request.app.state.agent.status)
