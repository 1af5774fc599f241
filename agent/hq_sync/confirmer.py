"""`HqConfirmer`: the till's `CouponConfirmer` over the MQTT link (docs/protocol.md 8.6, docs/till.md).

`confirm()` runs on the API's loop: it numbers the request (`<store>-<till>-<seq>`, the seq from the
`confirm_requests` table through the writer, so it never repeats, see migration 0006), publishes
`up/confirm` and awaits the `down/confirm` whose `reply_to` is the request's msg_id. The reply arrives on
the link thread (`on_reply`, HqSync's down route), which hands it to the waiting future with
`call_soon_threadsafe`; it never blocks that thread. The link not connected means HQ cannot be asked:
`Unreachable` at once, with no wait. A reply that comes after its request gave up is logged (INFO) and
otherwise ignored; anything that is not a valid reply is counted in `sync.rejected_down`. Every valid reply
is contact with HQ for the offline policy (`hq_contact`, written through the writer, not awaited).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime, timezone

from posedge.agent.activity import TillActivity
from posedge.agent.config import Config
from posedge.agent.hq_sync.feature import HqSync
from posedge.agent.store.writer import StoreWriter
from posedge.agent.till.coupons import RedemptionRequest, Unreachable, Verdict
from posedge.agent.till.hq_records import record_hq_contact
from posedge.sync.down import ConfirmReply, ConfirmRequest, build_confirm, parse_confirm_reply
from posedge.sync.ids import uuid7
from posedge.sync.protocol import ProtocolError

log = logging.getLogger("posedge.agent.sync")

NO_TILL = ""  # the confirm_requests row of sales without a till; "0" in the request number
RECENT_GAVE_UP = 256  # msg_ids of requests that timed out, remembered to tell a late reply from a stray one


def next_request_seq(conn: sqlite3.Connection, till: str, now: datetime | None = None) -> int:
    """In the writer: the till's next seq, max(last + 1, now in epoch ms): strictly increasing, never reused."""
    moment = now or datetime.now(timezone.utc)
    floor = int(moment.timestamp() * 1000)
    row = conn.execute(
        "INSERT INTO confirm_requests (till, last_seq, updated_at) VALUES (?, ?, ?) ON CONFLICT (till) DO UPDATE"
        " SET last_seq = max(last_seq + 1, excluded.last_seq), updated_at = excluded.updated_at RETURNING last_seq",
        (till, floor, moment.isoformat(timespec="milliseconds"))).fetchone()
    return int(row[0])


def request_no(store: str, till: str | None, seq: int) -> str:
    return f"{store}-{till or '0'}-{seq}"


@dataclass
class _Waiting:
    request_no: str
    future: asyncio.Future[ConfirmReply]
    loop: asyncio.AbstractEventLoop


class HqConfirmer:
    """Asks HQ over the link; registers itself as the handler of down/confirm."""

    def __init__(self, config: Config, sync: HqSync, writer: StoreWriter,
                 activity: TillActivity | None = None) -> None:
        self.tenant, self.store = config.store.tenant, config.store.id
        self.sync = sync
        self.writer = writer
        self.activity = activity or TillActivity()  # while a request waits, the drain does not hold the link
        self._waiting: dict[str, _Waiting] = {}  # request msg_id -> its waiter
        self._gave_up: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()  # _waiting and _gave_up: the loop adds and removes, the link thread reads
        sync.down_routes["confirm"] = self.on_reply

    # -- CouponConfirmer (on the loop) ---------------------------------------------------------------
    def describe(self) -> str:
        why = self._not_askable()
        return f"unreachable: {why}" if why else "online: HQ is asked over the MQTT link"

    async def confirm(self, request: RedemptionRequest, timeout_s: float) -> Verdict | Unreachable:
        why = self._not_askable()
        if why is not None:
            return Unreachable(why)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        till = request.till or NO_TILL
        try:
            seq = await self.writer.write(lambda conn: next_request_seq(conn, till))
        except Exception as exc:  # a storage failure: the sale's own transaction will say it too
            return Unreachable(f"cannot number the request: {exc}")
        ask = ConfirmRequest(str(uuid7()), self.tenant, self.store, request_no(self.store, request.till, seq),
                             request.coupon_id, request.campaign, request.discount_fen, request.till,
                             request.sale_id, request.member_id)
        waiting = _Waiting(ask.request_no, loop.create_future(), loop)
        with self._lock:
            self._waiting[ask.msg_id] = waiting
        try:
            with self.activity.waiting_on_link():
                if not self.sync.send("confirm", build_confirm(ask)):
                    return Unreachable("the MQTT link is not running")
                reply = await asyncio.wait_for(waiting.future, max(0.0, deadline - loop.time()))
        except asyncio.TimeoutError:
            self._give_up(ask.msg_id)
            log.info("event=coupon_confirm_timeout request_no=%s coupon_id=%s timeout_ms=%d", ask.request_no,
                     ask.coupon_id, timeout_s * 1000)
            return Unreachable(f"HQ did not answer within {timeout_s * 1000:.0f} ms")
        except asyncio.CancelledError:  # the till's own deadline ran out first
            self._give_up(ask.msg_id)
            raise
        log.info("event=coupon_confirmed request_no=%s coupon_id=%s accepted=%s reason=%s", ask.request_no,
                 ask.coupon_id, reply.accepted, reply.reason)
        return Verdict(reply.accepted, reply.reason)

    def _not_askable(self) -> str | None:
        link = self.sync.link
        if link is None:
            return "the MQTT link is not running" + (f" ({self.sync.problem})" if self.sync.problem else "")
        if not link.connected:
            error = link.status().get("last_error")
            return "the MQTT link is not connected" + (f": {error}" if error else "")
        return None

    def _give_up(self, msg_id: str) -> None:
        with self._lock:
            if self._waiting.pop(msg_id, None) is not None:
                self._gave_up[msg_id] = None
                while len(self._gave_up) > RECENT_GAVE_UP:
                    self._gave_up.popitem(last=False)

    # -- down/confirm (on the link thread) ---------------------------------------------------------
    def on_reply(self, store: str | None, name: str, payload: bytes) -> None:
        try:
            if store is None:
                raise ProtocolError("wrong_scope", "a confirm reply is for one store, not the tenant")
            reply = parse_confirm_reply(payload, self.tenant, store)
        except ProtocolError as exc:
            self.sync.count_down_rejected(exc.reason)
            log.warning("event=coupon_confirm_reply_rejected reason=%s detail=%r", exc.reason, exc.detail[:200])
            return
        with self._lock:
            waiting = self._waiting.pop(reply.reply_to, None)
            late = waiting is None and reply.reply_to in self._gave_up
            if waiting is not None and waiting.request_no != reply.request_no:
                self._waiting[reply.reply_to] = waiting  # not its answer: keep waiting for the right one
                waiting = None
                mismatch = True
            else:
                mismatch = False
        if mismatch:
            self.sync.count_down_rejected("bad_field")
            log.warning("event=coupon_confirm_reply_rejected reason=bad_field detail='request_no does not match'")
            return
        self._count_contact()
        if waiting is None:
            log.info("event=coupon_confirm_reply_ignored reply_to=%s request_no=%s why=%s", reply.reply_to,
                     reply.request_no, "late" if late else "no such request waiting")
            return
        waiting.loop.call_soon_threadsafe(_resolve, waiting.future, reply)

    def _count_contact(self) -> None:
        future = self.writer.submit(lambda conn: record_hq_contact(conn, "link"), durable=False)
        future.add_done_callback(_log_unrecorded_contact)


def _log_unrecorded_contact(future: Future[None]) -> None:
    if future.exception() is not None:  # storage down: the offline policy sees an older contact, the safe side
        log.warning("event=hq_contact_not_recorded error=%r", str(future.exception()))


def _resolve(future: asyncio.Future[ConfirmReply], reply: ConfirmReply) -> None:
    if future.done():  # its request gave up between the reply's arrival and now
        log.info("event=coupon_confirm_reply_ignored reply_to=%s request_no=%s why=late", reply.reply_to,
                 reply.request_no)
        return
    future.set_result(reply)
