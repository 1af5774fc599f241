"""The agent's live event stream: a ring buffer of recent events and the subscribers that follow it.

Any part of the agent publishes (scans, printer states, resolved codes...); the SSE endpoint
(`GET /v1/events`) subscribes. Event ids only ever increase, across restarts too (they start from
the wall clock in microseconds), so a client resuming with `Last-Event-ID` never mistakes a new
event for one it has seen. Events live in memory only: nothing here is written to disk.

Publishing is safe from any thread; subscribers run on the agent's loop. A subscriber that cannot
keep up is cut off (it reconnects and resumes from the ring) rather than slowing the publisher.

Defence in depth: whatever a publisher hands over, a run of digits shaped like a WeChat Pay or Alipay
payment code is masked before the event is kept or sent (`mask_payment_runs`), so a code that slipped
past classification (noise we did not foresee, a field that should not hold one) never reaches the
stream, the replay ring or a POST answer that echoes the event.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

log = logging.getLogger("posedge.agent.events")

DEFAULT_CAPACITY = 1000
SUBSCRIBER_QUEUE = 256
# A whole run of digits (not part of a longer one) shaped like a customer payment code: WeChat Pay 18
# digits starting 10-15, Alipay 16-24 digits starting 25-30. agent/scans.py classifies by the same rules.
PAYMENT_CODE_RUN = re.compile(r"(?<!\d)(?:1[0-5]\d{16}|(?:2[5-9]|30)\d{14,22})(?!\d)")


def mask_payment_code(text: str) -> str:
    """First two digits (the wallet) and last four, the rest starred; length kept."""
    if len(text) <= 6:
        return "*" * len(text)
    return text[:2] + "*" * (len(text) - 6) + text[-4:]


def mask_payment_runs(value: Any) -> Any:
    """`value` (JSON-like: dicts, lists, strings...) with every payment-code-shaped digit run masked."""
    if isinstance(value, str):
        return PAYMENT_CODE_RUN.sub(lambda m: mask_payment_code(m.group()), value)
    if isinstance(value, dict):
        return {mask_payment_runs(k): mask_payment_runs(v) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_payment_runs(v) for v in value]
    if isinstance(value, tuple):  # kept a tuple, so an untouched event compares equal to what was given
        return tuple(mask_payment_runs(v) for v in value)
    return value


@dataclass(frozen=True, slots=True)
class Event:
    id: int
    type: str  # "scan", "scan_rejected", "printer", "stream_gap"...
    data: dict[str, Any]  # JSON-safe; must never hold a clear payment code or phone number
    at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "type": self.type, "at": self.at.isoformat(), **self.data}


class Subscription:
    """One client's view: replayed events first, then live ones, until closed or cut off."""

    def __init__(self, hub: "EventHub", backlog: list[Event]) -> None:
        self._hub = hub
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize=SUBSCRIBER_QUEUE)
        self._backlog = deque(backlog)  # replayed before live events; bounded by the ring
        self.lagged = False
        self._last_id = 0  # an event both replayed and fanned out (published mid-subscribe) goes out once

    def offer(self, event: Event) -> None:
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.lagged = True
            self._hub._drop(self)
            # make room for the end marker so the reader wakes up and ends the stream
            self._queue.get_nowait()
            self._queue.put_nowait(None)

    async def next(self, timeout: float) -> Event | None:
        """The next event, or None after `timeout` seconds of quiet. Raises EOFError when cut off."""
        while self._backlog:
            event = self._backlog.popleft()
            if event.id > self._last_id:
                self._last_id = event.id
                return event
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            try:
                queued = await asyncio.wait_for(self._queue.get(), max(0.0, remaining))
            except asyncio.TimeoutError:
                return None
            if queued is None:
                raise EOFError("subscriber fell behind" if self.lagged else "the agent is stopping")
            if queued.id > self._last_id:
                self._last_id = queued.id
                return queued

    def close(self) -> None:
        self._hub._drop(self)

    def end(self) -> None:
        """The agent is stopping: the reader ends its stream at once, after what is already queued."""
        if self._queue.full():
            self._queue.get_nowait()
        self._queue.put_nowait(None)


class EventHub:
    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self._ring: deque[Event] = deque(maxlen=capacity)
        self._ids = itertools.count(time.time_ns() // 1000)
        self._subscribers: set[Subscription] = set()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self.published = 0
        self.cut_off = 0
        self.masked = 0  # events the guard had to mask: noise or a field classification did not foresee

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def publish(self, type_: str, data: dict[str, Any]) -> Event:
        """Record an event and hand it to every subscriber. Safe from any thread.

        Payment-code-shaped digit runs anywhere in `data` are masked first; an event where that
        happened says `masked: true`.
        """
        data = self._guard(data)
        with self._lock:
            event = Event(next(self._ids), type_, data)
            self._ring.append(event)
            self.published += 1
        loop = self._loop
        if loop is None:
            return event
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._fan_out(event)
        elif not loop.is_closed():
            loop.call_soon_threadsafe(self._fan_out, event)
        return event

    def _guard(self, data: dict[str, Any]) -> dict[str, Any]:
        guarded = mask_payment_runs(data)
        if guarded != data:
            guarded["masked"] = True
            with self._lock:
                self.masked += 1
        return guarded

    def subscribe(self, last_event_id: int | None = None) -> tuple[Subscription, bool]:
        """A new subscription (call on the loop). With `last_event_id`, events after it are replayed first.

        Returns (subscription, gap): gap is True when events after `last_event_id` have already left
        the ring (or the id is unknown), so the client missed some.
        """
        with self._lock:
            ring = list(self._ring)
        backlog: list[Event] = []
        gap = False
        if last_event_id is not None:
            backlog = [e for e in ring if e.id > last_event_id]
            oldest = ring[0].id if ring else None
            newest = ring[-1].id if ring else None
            gap = (oldest is not None and last_event_id < oldest - 1) or (newest is not None and last_event_id > newest)
            if newest is not None and last_event_id > newest:
                backlog = []  # an id from the future: nothing to replay, but say so
        sub = Subscription(self, backlog)
        self._subscribers.add(sub)
        if self._closing:
            sub.end()
        return sub, gap

    def close_streams(self) -> None:
        """End every subscription (call on the loop, first thing at stop): open event streams then
        finish like any response, instead of holding the server's shutdown until its grace period
        runs out and their tasks are cancelled. Subscriptions made afterwards end at once."""
        self._closing = True
        for sub in list(self._subscribers):
            sub.end()

    def recent(self, limit: int = 50) -> list[Event]:
        with self._lock:
            return list(self._ring)[-limit:]

    def stats(self) -> dict[str, Any]:
        return {"published": self.published, "subscribers": len(self._subscribers), "cut_off": self.cut_off,
                "buffered": len(self._ring), "masked": self.masked}

    def _fan_out(self, event: Event) -> None:
        for sub in list(self._subscribers):
            sub.offer(event)

    def _drop(self, sub: Subscription) -> None:
        if sub in self._subscribers:
            self._subscribers.discard(sub)
            if sub.lagged:
                self.cut_off += 1
                log.warning("event=event_subscriber_cut_off reason=%r", "fell behind; it may resume with Last-Event-ID")
