"""The POS's live scan stream and hand-typed scans.

`GET /v1/events` is Server-Sent Events: one `id:` and one `data:` line (a JSON object with `type`)
per event, a comment line as heartbeat, and resumption with the `Last-Event-ID` header.
`POST /v1/scans` sends text typed at the POS through the same pipeline as a scanner's reads.
"""

from __future__ import annotations

import json
from typing import Any, AsyncIterator

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from posedge.agent.api.auth import require_token
from posedge.agent.api.body import NO_BODY, body_schema, json_body, no_body
from posedge.agent.errors import InvalidInput
from posedge.agent.events import Event, EventHub

router = APIRouter(prefix="/v1", tags=["events"], dependencies=[Depends(require_token)])

RETRY_MS = 1000


class ScanIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=65536, description="the code as typed or read at the POS")
    scanner: str = Field("pos", max_length=64, pattern=r"^[A-Za-z0-9_.-]+$",
                         description="name shown as the event's scanner")


def sse_frame(event: Event) -> bytes:
    body = json.dumps(event.as_json(), ensure_ascii=False, separators=(",", ":"))
    return f"id: {event.id}\ndata: {body}\n\n".encode("utf-8")


def _last_event_id(request: Request) -> int | None:
    value = request.headers.get("last-event-id")
    if value is None or value.strip() == "":
        return None
    if not value.strip().isdigit() or len(value.strip()) > 19:
        raise InvalidInput("Last-Event-ID must be the id of an event this agent sent (digits)", header="Last-Event-ID")
    return int(value.strip())


EVENTS_OPENAPI = {
    "parameters": [{"name": "Last-Event-ID", "in": "header", "required": False,
                    "description": "resume after this event id (EventSource sends it itself)",
                    "schema": {"type": "string", "pattern": "^ *[0-9]{1,19} *$"}}],
    "responses": {"200": {"description": "the stream, until the client leaves",
                          "content": {"text/event-stream": {"schema": {"type": "string"}}}}},
}


@router.get("/events", summary="Live events (scans, device states) as Server-Sent Events",
            response_class=StreamingResponse, openapi_extra=EVENTS_OPENAPI)
async def events(request: Request) -> StreamingResponse:
    agent = request.app.state.agent
    hub: EventHub = agent.events
    heartbeat_s: float = agent.config.events.heartbeat_s
    subscription, gap = hub.subscribe(_last_event_id(request))

    async def stream() -> AsyncIterator[bytes]:
        try:
            yield f"retry: {RETRY_MS}\n: posedge events\n\n".encode()
            if gap:
                yield _gap_frame()
            while True:
                try:
                    event = await subscription.next(heartbeat_s)
                except EOFError:
                    return  # fell behind, or the agent is stopping: the client reconnects with Last-Event-ID
                if event is None:
                    if await request.is_disconnected():
                        return
                    yield b": heartbeat\n\n"
                    continue
                yield sse_frame(event)
        finally:
            subscription.close()

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache, no-store", "X-Accel-Buffering": "no"})


def _gap_frame() -> bytes:
    body = json.dumps({"type": "stream_gap", "message": "some events were missed (agent restarted or the client was "
                       "away too long); refresh state that depends on them"})
    return f"data: {body}\n\n".encode()


@router.post("/scans", summary="A scan typed at the POS, through the same pipeline as the scanners",
             openapi_extra=body_schema(ScanIn))
async def post_scan(request: Request) -> dict[str, Any]:
    body = await json_body(request, ScanIn)  # in the handler, so the token (a router dependency) is checked first
    event = await request.app.state.agent.scans.submit_text(body.text, body.scanner)
    if event is None:
        return {"duplicate": True, "message": "the same code from the same scanner a moment ago; ignored"}
    return {"duplicate": False, "event": event.as_json()}


@router.post("/scans/{event_id}/payment-code", summary="The clear payment code of a scan event, once",
             dependencies=[Depends(no_body)], openapi_extra=NO_BODY)
async def claim_payment_code(event_id: int, request: Request) -> dict[str, Any]:
    text = request.app.state.agent.scans.claim_payment_code(event_id)
    return {"event_id": event_id, "text": text}
