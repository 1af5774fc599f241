"""The up path at HQ: batches and hellos in, acks out (docs/protocol.md); the down path's versions and
down_acks go to hq/down.py.

Runs on paho's loop thread (HQ's main thread, `loop_forever`), which is the only user of the database
connection. Anything that is not the protocol is counted by reason and dropped; HQ keeps consuming.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any, Callable

from posedge.hq import coupons, db
from posedge.hq.commands import CommandConsumer
from posedge.hq.down import DownConsumer
from posedge.hq.verdicts import send_verdicts
from posedge.sync.down import ConfirmReply, build_confirm_reply, down_topic, parse_confirm
from posedge.sync.ids import uuid7
from posedge.sync.protocol import Ack, ProtocolError, Topics, build_ack, parse_batch, parse_hello, parse_up_topic

log = logging.getLogger("posedge.hq")

Publish = Callable[[str, bytes], None]


class Consumer:
    def __init__(self, database: db.Database, publish: Publish) -> None:
        self.database = database
        self.database_errors = db.database_errors()
        self.publish = publish
        self.counts: Counter[str] = Counter()
        self.down = DownConsumer(database, publish, self.counts)
        self.commands = CommandConsumer(database, publish, self.counts)

    def on_message(self, topic: str, payload: bytes) -> None:
        try:
            tenant, store, name = parse_up_topic(topic)
            if name == "batch":
                self._batch(tenant, store, payload)
            elif name == "hello":
                self._hello(tenant, store, payload)
                self.commands.on_connect(tenant, store)
            elif name == "versions":
                self.down.on_versions(tenant, store, payload)
            elif name == "command_ack":
                self.commands.on_command_ack(tenant, store, payload)
            elif name == "diagnostics":
                self.commands.on_diagnostics(tenant, store, payload)
            elif name == "down_ack":
                self.down.on_down_ack(tenant, store, payload)
            elif name == "confirm":
                self._confirm(tenant, store, payload)
            else:
                self.counts["unknown_topic"] += 1
        except ProtocolError as exc:
            self.counts[f"rejected_{exc.reason}"] += 1
            log.warning("event=hq_rejected topic=%s reason=%s detail=%r", topic[:200], exc.reason, exc.detail[:200])
        except self.database_errors as exc:  # rolled back (a deadlock, the server away): no ack, the agent resends
            self.counts["database_errors"] += 1
            log.warning("event=hq_database_error topic=%s error=%s", topic[:200], type(exc).__name__)

    def _batch(self, tenant: str, store: str, payload: bytes) -> None:
        batch = parse_batch(payload, tenant, store)
        outcome = db.apply_batch(self.database, batch)
        self.counts["batches"] += 1
        self.counts["applied"] += outcome.applied
        self.counts["duplicates"] += outcome.duplicates
        self.counts["bad_payloads"] += outcome.bad_payloads
        if outcome.gap_from is not None:
            self.counts["gaps"] += 1
        if outcome.error is not None:
            log.warning("event=hq_stream_conflict store=%s/%s stream=%s", tenant, store, batch.stream)
        self._doubles(coupons.apply_redemptions(self.database, batch, outcome.acked_seq))
        self._ack(tenant, store, batch.stream, outcome.acked_seq, batch.msg_id, outcome.gap_from, outcome.error,
                  outcome.acked_event_id)

    def _doubles(self, found: list[coupons.DoubleRedemption]) -> None:
        """Tell both stores of each double redemption, before the batch's ack (a crash makes it resent)."""
        if not found:
            return
        for double in found:
            log.warning("event=hq_double_redemption tenant=%s coupon_id=%s store=%s other_store=%s", double.tenant,
                        double.coupon_id, double.store, double.other_store)
        self.counts["double_redemptions"] += len(found)
        self.counts["verdict_documents"] += send_verdicts(self.database, self.publish, found)
        coupons.mark_told(self.database, found)

    def _confirm(self, tenant: str, store: str, payload: bytes) -> None:
        request = parse_confirm(payload, tenant, store)
        answer = coupons.answer_confirm(self.database, request)
        self.counts["confirms_accepted" if answer.accepted else "confirms_refused"] += 1
        log.info("event=hq_confirm store=%s/%s request_no=%s coupon_id=%s accepted=%s reason=%s", tenant, store,
                 request.request_no, request.coupon_id, answer.accepted, answer.reason)
        reply = ConfirmReply(str(uuid7()), tenant, store, request.msg_id, request.request_no, answer.accepted,
                             answer.reason)
        self.publish(down_topic(Topics(tenant, store), "confirm"), build_confirm_reply(reply))

    def _hello(self, tenant: str, store: str, payload: bytes) -> None:
        hello = parse_hello(payload, tenant, store)
        self.counts["hellos"] += 1
        held = db.position(self.database, tenant, store, hello.stream)
        acked = hello.first_seq - 1 if held is None else held
        error = "stream_behind" if acked > hello.max_seq else None
        held_id = db.held_event_id(self.database, tenant, store, hello.stream, acked)
        self._ack(tenant, store, hello.stream, acked, hello.msg_id, None, error, held_id)

    def _ack(self, tenant: str, store: str, stream: str, acked: int, reply_to: str, gap_from: int | None,
             error: str | None, acked_event_id: str | None) -> None:
        ack = Ack(str(uuid7()), tenant, store, stream, acked, gap_from, reply_to, error, acked_event_id)
        self.publish(Topics(tenant, store).down_ack, build_ack(ack))

    def summary(self) -> dict[str, Any]:
        return dict(self.counts)
