"""`HqSync`: wires sync/ (link, drainer, stream) to the agent's store, and reports `sync` in GET /v1/status.

Reads go through the agent's reader; every write (the stream's row, the acked marks) goes through the
store writer's `submit`, so the single-writer rule holds. Acked marks are bookkeeping
(`durable=False`): a mark lost to a power cut only makes the drainer send those events again, and HQ
deduplicates them; so a big backlog's marks never add an fsync to a checkout's commit.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter
from concurrent.futures import Future
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence
from urllib.parse import urlsplit

from posedge import __version__
from posedge.agent.config import Config
from posedge.agent.feature import EventListener
from posedge.agent.sales import SaleParticipant
from posedge.agent.store.reader import StoreReader
from posedge.agent.store.writer import StoreWriter
from posedge.sync import outbox, stream as streams
from posedge.sync.down import parse_down_topic, parse_hq
from posedge.sync.drainer import Drainer, DrainSettings
from posedge.sync.outbox import OutboxEvent
from posedge.sync.protocol import ProtocolError, Topics
from posedge.sync.stream import Stream

if TYPE_CHECKING:  # paho is imported when the link starts ([mqtt] enabled), not at import
    from posedge.sync.link import ConnectHook, Link, LinkSettings

log = logging.getLogger("posedge.agent.sync")

WRITE_TIMEOUT_S = 30.0
# A down message for this store: (store or None when tenant-wide, the down name, the payload); on the link thread.
DownRoute = Callable[[str | None, str, bytes], None]
VersionSource = Callable[[], dict[str, dict[str, int]]]  # scope -> kind -> version held


class StoreOutbox:
    """The drainer's `OutboxSource` over the agent's reader and writer (called on the link thread)."""

    def __init__(self, config: Config, reader: StoreReader, writer: StoreWriter, current: Stream) -> None:
        self.path = config.storage.path
        self.reader = reader
        self.writer = writer
        self.current = current
        self._mark_lock = threading.Lock()  # acks arrive on the link thread, marks finish on the writer's
        self._mark_target = 0  # the newest acked seq to mark
        self._marking = False

    def stream(self) -> Stream:
        return self.current

    def read_pending(self, after_seq: int, limit: int) -> list[OutboxEvent]:
        return self.reader.read_sync(lambda conn: outbox.pending(conn, limit, after_seq))

    def max_seq(self) -> int:
        return self.reader.read_sync(outbox.max_seq)

    def event_id_at(self, seq: int) -> str | None:
        query = "SELECT event_id FROM outbox WHERE seq = ?"
        row = self.reader.read_sync(lambda conn: conn.execute(query, (seq,)).fetchone())
        return str(row[0]) if row else None

    def mark_acked_through(self, seq: int) -> None:
        """Coalesced: at most one mark in the writer's queue at a time (a drain has acks coming in dozens a
        second), the newest ack wins; a mark is one small row (sync/outbox.py), whatever it covers."""
        with self._mark_lock:
            self._mark_target = max(self._mark_target, seq)
            if self._marking:
                return
            self._marking = True
        self._submit_mark()

    def _submit_mark(self) -> None:
        with self._mark_lock:
            through = self._mark_target
        future = self.writer.submit(lambda conn: outbox.mark_acked_through(conn, through), durable=False)
        future.add_done_callback(lambda done: self._mark_done(done, through))

    def _mark_done(self, future: Future[int], through: int) -> None:
        """In the writer thread, after the mark committed (or failed: then the events are only sent again)."""
        _log_failed_mark(future)
        with self._mark_lock:
            self._marking = self._mark_target > through
            again = self._marking
        if again:
            self._submit_mark()

    def rebirth(self, reason: str) -> Stream:
        new = self.writer.submit(lambda conn: streams.birth_stream(conn, reason)).result(WRITE_TIMEOUT_S)
        streams.write_marker(self.path, new.stream_id)
        log.warning("event=sync_new_stream reason=%s stream=%s first_seq=%s", reason, new.stream_id, new.first_seq)
        self.current = new
        return new


def _log_failed_mark(future: Future[int]) -> None:
    if future.exception() is not None:
        log.warning("event=sync_ack_mark_failed error=%r (the events are sent again)", str(future.exception()))


def ensure_stream(conn: Any, marker: str | None) -> Stream:
    """In the writer: the database's stream, born (again) when it is new or not the one last run with."""
    current = streams.read_stream(conn)
    reason = streams.birth_reason(current, marker)
    if reason is None and current is not None:
        return current
    return streams.birth_stream(conn, reason or "new_database")


class HqSync:
    name = "sync"

    def __init__(self, config: Config, reader: StoreReader, writer: StoreWriter) -> None:
        self.config = config
        self.reader = reader
        self.writer = writer
        self.link: Link | None = None
        self._listeners: list[EventListener] = []
        self._problem: str | None = None
        # The other features' status() by section name ("till", "receipts", "scans"), set by the agent: the
        # retained status is built from what they already report, not from their insides.
        self.feature_status: dict[str, Callable[[], dict[str, Any]]] = {}
        # Who handles each down name (docs/protocol.md section 8): records kinds, config, confirm, ...; set by the
        # features that own them before start(). A name nobody handles is counted and dropped.
        self.down_routes: dict[str, DownRoute] = {}
        self.connect_hooks: list[ConnectHook] = []
        # Run on the link thread when HQ says it is online in a session this agent has not seen (docs/protocol.md
        # 8.9): what the store said on connect may have reached no HQ; the records inbox says its versions again.
        self.hq_online_hooks: list[ConnectHook] = []
        self.down_routes["hq"] = self._on_hq
        self._hq_state = "unknown"  # online | offline | unknown (nothing heard since start)
        self._hq_since: datetime | None = None  # when this store learned the state (its own clock)
        self._hq_session: str | None = None  # the last online session seen
        # What the store holds, for `up/versions` on every connect: each source returns scope ("store" or
        # "tenant") -> down kind -> version; the records inbox adds one, the pushed config may add its own
        # ("config"). Called on the link thread; a source must only read (e.g. reader.read_sync).
        self.version_sources: list[VersionSource] = []
        # The applied pushed config's version for the retained status (agent/reconfig/); 0: the file only.
        self.config_version: Callable[[], int] = lambda: 0
        self.down_rejected: Counter[str] = Counter()
        self._down_lock = threading.Lock()
        # The API's loop, once started: down routes (on the link thread) hand work to it with
        # call_soon_threadsafe / run_coroutine_threadsafe.
        self.loop: asyncio.AbstractEventLoop | None = None
        self.till_busy: Callable[[], bool] = lambda: False  # set by the agent: a checkout is being served
        self.till_waiting: Callable[[], bool] = lambda: False  # set by the agent: a checkout waits for the link

    @property
    def participants(self) -> Sequence[SaleParticipant]:
        return ()

    @property
    def listeners(self) -> list[EventListener]:
        return self._listeners

    @property
    def problem(self) -> str | None:
        """Why the link did not start (storage down at start), or None."""
        return self._problem

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        if not self.config.mqtt.enabled:
            return
        try:
            current = await asyncio.to_thread(self._ensure_stream)
        except Exception as exc:  # storage down: the agent serves sales; sync waits for a restart
            self._problem = f"cannot read or start the outbox stream: {exc}"
            log.error("event=sync_not_started error=%r", self._problem)
            return
        source = StoreOutbox(self.config, self.reader, self.writer, current)
        mqtt = self.config.mqtt
        topics = Topics(self.config.store.tenant, self.config.store.id)
        drainer = Drainer(topics, source, DrainSettings(mqtt.batch_max_events, mqtt.batch_max_bytes,
                                                        mqtt.inflight_batches, mqtt.ack_timeout_s), __version__)
        settings = link_settings(self.config)
        if not settings.tls and (mqtt.ca_file or mqtt.cert_file or mqtt.key_file):
            log.warning("event=sync_tls_files_unused url=%s (ca_file, cert_file and key_file need mqtts://)", mqtt.url)
        from posedge.sync.link import Link

        self.link = Link(settings, topics, drainer, self._status_fields, self.till_busy, self.till_waiting)
        self.link.on_down = self._on_down
        self.link.connect_hooks.extend(self.connect_hooks)
        self.link.start()
        log.info("event=sync_started broker=%s stream=%s", mqtt.url, current.stream_id)

    def _ensure_stream(self) -> Stream:
        path = self.config.storage.path
        marker = streams.read_marker(path)
        current = self.writer.submit(lambda conn: ensure_stream(conn, marker)).result(WRITE_TIMEOUT_S)
        if current.stream_id != marker:
            streams.write_marker(path, current.stream_id)
            if marker is not None or current.reason != "new_database":
                log.warning("event=sync_new_stream reason=%s stream=%s first_seq=%s", current.reason,
                            current.stream_id, current.first_seq)
        return current

    def _on_down(self, topic: str, payload: bytes) -> None:
        """Route a down message to its feature; refuse one for another tenant or store (on the link thread)."""
        try:
            tenant, store, name = parse_down_topic(topic)
            if tenant != self.config.store.tenant:
                raise ProtocolError("wrong_tenant", f"topic of tenant {tenant!r}")
            if store not in (None, self.config.store.id):
                raise ProtocolError("wrong_store", f"topic of store {store!r}")
            route = self.down_routes.get(name)
            if route is None:
                raise ProtocolError("unhandled", f"nothing in this agent handles down/{name}")
        except ProtocolError as exc:
            self.count_down_rejected(exc.reason)
            log.warning("event=sync_down_rejected topic=%s reason=%s", topic[:200], exc.reason)
            return
        route(store, name, payload)

    def _on_hq(self, store: str | None, name: str, payload: bytes) -> None:
        """HQ's presence on all/down/hq (on the link thread): a new online session says versions again and resends
        the unacknowledged window now."""
        try:
            if store is not None:
                raise ProtocolError("bad_topic", "HQ's presence is tenant-wide only (all/down/hq)")
            presence = parse_hq(payload, self.config.store.tenant)
        except ProtocolError as exc:
            self.count_down_rejected(exc.reason)
            log.warning("event=sync_down_rejected kind=hq reason=%s detail=%r", exc.reason, exc.detail[:200])
            return
        with self._down_lock:
            changed = presence.state != self._hq_state
            if changed:
                self._hq_state, self._hq_since = presence.state, datetime.now(timezone.utc)
            new_session = presence.state == "online" and presence.hq_session != self._hq_session
            if presence.state == "online":
                self._hq_session = presence.hq_session
        if changed:
            log.info("event=sync_hq_state state=%s hq_session=%s", presence.state, presence.hq_session[:64])
        if not new_session:
            return
        for hook in self.hq_online_hooks:
            try:
                hook()
            except Exception:  # one feature's hook must not cost the others theirs
                log.exception("event=sync_hq_online_hook_failed")
        if self.link is not None:
            self.link.drainer.resend_now()

    def count_down_rejected(self, reason: str) -> None:
        with self._down_lock:
            self.down_rejected[reason] += 1

    def send(self, name: str, payload: bytes) -> bool:
        """Publish on this store's up/{name} when the link runs; False when there is no link (sync disabled)."""
        if self.link is None:
            return False
        self.link.send(f"{Topics(self.config.store.tenant, self.config.store.id).base}/up/{name}", payload)
        return True

    async def stop(self) -> None:
        if self.link is not None:
            await asyncio.to_thread(self.link.stop)

    def _status_fields(self) -> dict[str, Any]:
        """The retained status's fields (docs/protocol.md section 7); called on the link thread."""
        stats = self.reader.read_sync(outbox.stats)
        till = self._section("till")
        link_contact = self.link.drainer.last_contact if self.link is not None else None
        return {"agent_version": __version__, "config_version": self.config_version(),
                "outbox_depth": stats.depth, "oldest_pending_age_s": _round(stats.oldest_age_s()),
                "hours_since_hq": hours_since(link_contact, till.get("last_hq_contact_at")),
                "offline_redemptions_pending": till.get("offline_redemptions"),
                "printers": [{"name": p.get("name"), "state": p.get("state"), "problem": p.get("problem")}
                             for p in self._section("receipts").get("printers", [])],
                "scanners": [{"name": s.get("name"), "state": s.get("state")}
                             for s in self._section("scans").get("devices", [])]}

    def _section(self, name: str) -> dict[str, Any]:
        """A feature's status section; {} when there is none (the fields it gives are then null or empty)."""
        provider = self.feature_status.get(name)
        return provider() if provider is not None else {}

    def status(self) -> dict[str, Any]:
        if not self.config.mqtt.enabled:
            return {"state": "disabled", "last_contact": None, "last_error": None, "acked_seq": None, "stream": None}
        if self.link is None:
            return {"state": "offline", "last_contact": None, "last_error": self._problem, "acked_seq": None,
                    "stream": None}
        status = self.link.status()
        if status["state"] == "stopped":
            status["state"] = "offline"
        with self._down_lock:
            rejected = dict(self.down_rejected)
            hq = {"state": self._hq_state, "since": self._hq_since.isoformat() if self._hq_since else None}
        return {"broker": self.config.mqtt.url, "protocol": self.config.mqtt.protocol, **status,
                "rejected_down": rejected, "hq": hq}


def link_settings(config: Config) -> LinkSettings:
    from posedge.sync.link import LinkSettings

    mqtt = config.mqtt
    parts = urlsplit(mqtt.url)
    tls = parts.scheme == "mqtts"
    return LinkSettings(
        host=parts.hostname or "127.0.0.1", port=parts.port or (8883 if tls else 1883),
        client_id=mqtt.client_id or f"posedge-{config.store.tenant}-{config.store.id}",
        protocol=mqtt.protocol, tls=tls, ca_file=_path(mqtt.ca_file), cert_file=_path(mqtt.cert_file),
        key_file=_path(mqtt.key_file), username=mqtt.username,
        password=mqtt.password.get_secret_value() if mqtt.password else None,
        keepalive_s=mqtt.keepalive_s, reconnect_max_s=mqtt.reconnect_max_s, window=mqtt.inflight_batches,
        status_min_interval_s=mqtt.status_min_interval_s, session_expiry_s=mqtt.session_expiry_s,
    )


def _path(value: Path | None) -> str | None:
    return str(value) if value is not None else None


def hours_since(link_contact: datetime | None, till_contact: str | None) -> float | None:
    """Hours since HQ was last heard from: an ack on the link or an answer the till counted; None if never."""
    seen = [t for t in (link_contact, datetime.fromisoformat(till_contact) if till_contact else None) if t]
    if not seen:
        return None
    return round((datetime.now(timezone.utc) - max(seen)).total_seconds() / 3600, 2)


def _round(value: float | None) -> float | None:
    return round(value, 1) if value is not None else None
