"""The outbox drainer: pending events up to HQ in seq order, done only on HQ's cumulative ack.

It is the link thread's logic, without MQTT: the link (sync/link.py) calls `on_connected`,
`on_disconnected`, `on_ack` and `publishes` from its one thread, and sends what `publishes` returns.
The outbox is reached through an `OutboxSource` the agent provides (its reader for reads, its
writer's `submit` for the acked marks), so this module knows nothing of the agent.

Go-back-N over a bounded window: at most `window` batches are out unacknowledged; after a connect or
an ack timeout only one, until HQ answers (a store whose HQ is down resends one batch a timeout, not
a window of them). An event is done
when HQ acknowledges its seq (never on the broker's PUBACK: a broker may lose what it acknowledged,
and paho's queue is in memory). A gap HQ reports (`gap_from`), an ack that does not come within
`ack_timeout_s`, or a new connection all rewind to the first unacknowledged seq and send from there;
HQ deduplicates what it already holds.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Protocol

from posedge.sync.ids import uuid7
from posedge.sync.outbox import OutboxEvent
from posedge.sync.protocol import (
    Ack,
    Batch,
    BatchEvents,
    Hello,
    ProtocolError,
    Topics,
    build_hello,
    encode_event,
    parse_ack,
)
from posedge.sync.stream import Stream


class OutboxSource(Protocol):
    """What the drainer needs of the store. Called on the link thread; reads may block briefly."""

    def stream(self) -> Stream: ...

    def read_pending(self, after_seq: int, limit: int) -> list[OutboxEvent]: ...

    def max_seq(self) -> int: ...

    def event_id_at(self, seq: int) -> str | None: ...

    def mark_acked_through(self, seq: int) -> None:
        """Hand the mark to the store's writer and return at once (a lost mark only means a resend)."""

    def rebirth(self, reason: str) -> Stream:
        """Start a new stream (the database is behind HQ's position for the old one)."""


@dataclass(frozen=True)
class DrainSettings:
    batch_max_events: int = 500
    batch_max_bytes: int = 524_288
    window: int = 8  # batches out without HQ's ack
    ack_timeout_s: float = 10.0
    compress_min_bytes: int = 2048


@dataclass
class _InFlight:
    first: int
    last: int
    sent_at: float


Publish = tuple[str, bytes]

# Events read and encoded in one step of building a batch: the link gives way to the till between two steps,
# so a checkout waits behind one chunk (a fraction of a millisecond), not behind a 500-event batch.
CHUNK_EVENTS = 50


class Drainer:
    def __init__(self, topics: Topics, source: OutboxSource, settings: DrainSettings, agent_version: str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.topics = topics
        self.source = source
        self.settings = settings
        self.agent_version = agent_version
        self.clock = clock
        self.stream = source.stream()
        self.acked_seq = self._local_acked()
        self.next_seq = self.acked_seq + 1
        self.inflight: deque[_InFlight] = deque()
        self.connected = False
        self.hello_due = False
        self.probing = True  # one batch out until HQ answers: nobody listening must not cost a window a timeout
        self.gap_rewound_at: int | None = None
        self.verified_seq: int | None = None
        self.last_contact: datetime | None = None
        self.rejected_acks: Counter[str] = Counter()
        self.last_rejected: str | None = None
        self.counts: Counter[str] = Counter()
        # Called before each chunk of a batch is encoded: the link sets it to wait while a checkout is served.
        self.give_way: Callable[[], None] = lambda: None

    def _local_acked(self) -> int:
        """Before HQ says anything: everything before the oldest pending event is acked."""
        pending = self.source.read_pending(self.stream.first_seq - 1, 1)
        if pending:
            return pending[0].seq - 1
        return max(self.stream.first_seq - 1, self.source.max_seq())

    # -- called by the link -----------------------------------------------------------------
    def on_connected(self) -> None:
        self.connected = True
        self.resend_now()

    def resend_now(self) -> None:
        """Say hello and resend from HQ's acked position: on connect, and when HQ says it is (back) online
        (docs/protocol.md 8.9), since what is in flight may then have reached nobody (no wait for the ack timeout)."""
        if not self.connected:
            return
        self._rewind()
        self.hello_due = True
        self.probing = True

    def on_disconnected(self) -> None:
        self.connected = False
        self._rewind()

    def on_ack(self, data: bytes) -> None:
        try:
            ack = parse_ack(data, self.topics.tenant, self.topics.store)
        except ProtocolError as exc:
            self.rejected_acks[exc.reason] += 1
            self.last_rejected = str(exc)[:200]
            return
        self._apply_ack(ack)

    def publishes(self, limit: int | None = None) -> list[Publish]:
        """What to send now: the hello after a connect, then batches while the window has room (at most
        `limit` of them: the link builds one at a time, so that it can give way to the till between two)."""
        if not self.connected:
            return []
        now = self.clock()
        out: list[Publish] = []
        if self.hello_due:  # HQ's answer moves acked_seq on if marks were lost; no need to wait for it
            self.hello_due = False
            out.append((self.topics.up_hello, self._hello()))
        if self.inflight and now - self.inflight[0].sent_at > self.settings.ack_timeout_s:
            self.counts["ack_timeouts"] += 1
            self.probing = True
            self._rewind()
        window = 1 if self.probing else self.settings.window
        built = 0
        while len(self.inflight) < window and (limit is None or built < limit):
            built += 1
            batch = self._next_batch(now)
            if batch is None:
                break
            out.append((self.topics.up_batch, batch))
        return out

    def status(self) -> dict[str, object]:
        return {
            "acked_seq": self.acked_seq,
            "stream": self.stream.stream_id,
            "stream_first_seq": self.stream.first_seq,
            "stream_reason": self.stream.reason,
            "in_flight_batches": len(self.inflight),
            "batches_sent": self.counts["batches"],
            "events_sent": self.counts["events"],
            "resends": self.counts["rewinds"],
            "new_streams": self.counts["new_streams"],
            "gaps": self.counts["gaps"],
            "ack_timeouts": self.counts["ack_timeouts"],
            "acks": self.counts["acks"],
            "rejected_acks": dict(self.rejected_acks),
            "last_rejected_ack": self.last_rejected,
        }

    # -- inside -----------------------------------------------------------------------------
    def _apply_ack(self, ack: Ack) -> None:
        if ack.stream != self.stream.stream_id:
            self.rejected_acks["other_stream"] += 1  # an old stream's, or another database's
            return
        self.last_contact = datetime.now(timezone.utc)
        self.counts["acks"] += 1
        self.probing = False
        problem = ack.error or self._contradiction(ack)
        if problem is not None:
            self._start_new_stream(problem)
            return
        if ack.acked_seq > self.acked_seq:
            self.acked_seq = ack.acked_seq
            self.gap_rewound_at = None
            self.source.mark_acked_through(ack.acked_seq)
            while self.inflight and self.inflight[0].last <= ack.acked_seq:
                self.inflight.popleft()
            self.next_seq = max(self.next_seq, self.acked_seq + 1)
        if ack.gap_from is not None and ack.gap_from == self.acked_seq + 1 and self.gap_rewound_at != ack.gap_from:
            # One rewind per gap: the window's later batches bring the same gap_from again.
            self.counts["gaps"] += 1
            self.gap_rewound_at = ack.gap_from
            self._rewind()

    def _contradiction(self, ack: Ack) -> str | None:
        """Why HQ's position can not be this database's: it is past the outbox's end (`stream_behind`), or
        HQ holds another event at that seq (`seq_conflict`): a backup restored, numbering anew."""
        if ack.acked_seq < self.stream.first_seq or ack.acked_seq == self.verified_seq:
            return None
        local = self.source.event_id_at(ack.acked_seq)
        if local is None:
            return "stream_behind"
        if ack.acked_event_id is not None and ack.acked_event_id != local:
            return "seq_conflict"
        self.verified_seq = ack.acked_seq
        return None

    def _start_new_stream(self, reason: str) -> None:
        self.counts["new_streams"] += 1
        self.verified_seq = None
        self.stream = self.source.rebirth(reason)
        self.acked_seq = self._local_acked()
        self.inflight.clear()
        self.next_seq = self.acked_seq + 1
        self.hello_due = self.connected
        self.probing = True

    def _rewind(self) -> None:
        if self.inflight or self.next_seq != self.acked_seq + 1:
            self.counts["rewinds"] += 1
        self.inflight.clear()
        self.next_seq = self.acked_seq + 1

    def _next_batch(self, now: float) -> bytes | None:
        """The next batch from `next_seq`, read and encoded CHUNK_EVENTS at a time with `give_way()` before each
        chunk is encoded. Each event's stored JSON goes in as it is (`encode_event`), so building a batch is a few
        microseconds of Python an event, not a decode and an encode of every payload. It ends at
        batch_max_events, at batch_max_bytes of events, at the outbox's end or at a hole in the seqs."""
        events = BatchEvents(self.settings.compress_min_bytes)
        first = last = size = 0
        more = True
        while more and events.count < self.settings.batch_max_events:
            want = min(CHUNK_EVENTS, self.settings.batch_max_events - events.count)
            rows = self.source.read_pending(last or self.next_seq - 1, want)
            more = len(rows) == want
            if rows:  # the encoding is the CPU work; an empty outbox costs one small read and no wait
                self.give_way()
            chunk: list[bytes] = []
            for event in rows:
                if (last and event.seq != last + 1) or event.seq < self.stream.first_seq:
                    more = False
                    break
                item = encode_event(event.seq, event.event_id, event.kind, event.key, event.created_at,
                                    event.payload_json)
                if last and size + len(item) > self.settings.batch_max_bytes:
                    more = False
                    break
                size += len(item)
                chunk.append(item)
                first, last = first or event.seq, event.seq
            events.add(chunk)
        if not events.count:
            return None
        sent_at = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        head = Batch(str(uuid7()), self.topics.tenant, self.topics.store, self.stream.stream_id,
                     self.stream.first_seq, sent_at, ())
        self.inflight.append(_InFlight(first, last, now))
        self.next_seq = last + 1
        self.counts["batches"] += 1
        self.counts["events"] += events.count
        return events.build(head)

    def _hello(self) -> bytes:
        return build_hello(Hello(str(uuid7()), self.topics.tenant, self.topics.store, self.stream.stream_id,
                                 self.stream.first_seq, self.source.max_seq(), self.agent_version))
