"""A stand-in handler of `down/verdicts` until the general records inbox (the down path) handles every kind.

HQ's double-redemption verdicts (posedge-hq's `send_verdicts`) arrive as a `verdicts` records document
(docs/protocol.md 8.2). This applies it through the till's one apply path (`Till.apply_from_hq`, the
same as `posedge data import verdicts`: each record's own version decides, so a document applied twice
changes nothing) and answers with a `down_ack`. It does not keep document versions; the records inbox
will, and takes the route over (`Agent._link_features` registers this only when nothing else did).
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Future
from typing import Any, Awaitable, Callable

from posedge.agent.config import Config
from posedge.agent.hq_sync.feature import HqSync
from posedge.sync.down import DownAck, Records, build_down_ack, parse_records
from posedge.sync.ids import uuid7
from posedge.sync.protocol import ProtocolError

log = logging.getLogger("posedge.agent.sync")

ApplyRecords = Callable[[str, list[dict[str, Any]]], Awaitable[dict[str, Any]]]


class VerdictInbox:
    def __init__(self, config: Config, sync: HqSync, apply: ApplyRecords) -> None:
        self.tenant, self.store = config.store.tenant, config.store.id
        self.sync = sync
        self.apply = apply

    def on_records(self, store: str | None, name: str, payload: bytes) -> None:
        """On the link thread: parse, hand the apply to the loop, never wait for it here."""
        loop = self.sync.loop
        try:
            doc = parse_records(payload, self.tenant, store, name)
            if loop is None:
                raise ProtocolError("not_ready", "the agent's loop is not running yet")
        except ProtocolError as exc:
            self.sync.count_down_rejected(exc.reason)
            log.warning("event=sync_down_rejected kind=%s reason=%s detail=%r", name, exc.reason, exc.detail[:200])
            return
        done = asyncio.run_coroutine_threadsafe(self._apply(doc), loop)
        done.add_done_callback(lambda f: self._acknowledge(doc, f))

    async def _apply(self, doc: Records) -> dict[str, Any]:
        return await self.apply(doc.kind, list(doc.records))

    def _acknowledge(self, doc: Records, done: Future[dict[str, Any]]) -> None:
        error = done.exception()
        if error is not None:  # storage down: no ack; HQ sends it again (versions on the next connect)
            log.warning("event=sync_down_apply_failed kind=%s version=%s error=%r", doc.kind, doc.version, str(error))
            return
        report = done.result()
        counts = {"applied": report["applied"], "ignored": report["ignored_older"], "invalid": len(report["invalid"])}
        log.info("event=sync_down_applied kind=%s version=%s counts=%s", doc.kind, doc.version, counts)
        ack = DownAck(str(uuid7()), self.tenant, self.store, doc.kind, doc.scope, doc.version, "applied",
                      reply_to=doc.msg_id, counts=counts)
        self.sync.send("down_ack", build_down_ack(ack))
