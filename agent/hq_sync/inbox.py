"""The down-records inbox: HQ's versioned records documents (docs/protocol.md 8.2) applied, acknowledged.

A document arrives on the link thread. It is parsed there (sync/down.py: size cap, schema, tenant, store,
kind), then applied in ONE writer transaction: its version is checked against `down_versions` for its
(kind, scope) and, when newer, each record goes through the till's apply logic (the one `posedge data
import` uses, agent/till/hq_records.py) and the version is stored. The link thread never waits for the
writer: the `down_ack` goes out from the future's done callback through `HqSync.send`. A document that
fails to parse is answered `rejected` with its reason and counted in `sync.rejected_down`; nothing of it is
applied. A storage failure is logged and not answered: HQ resends on the next connect (up/versions).

On every connect the store says what it holds (`up/versions`): the records versions from `down_versions`
and whatever the other sources in `HqSync.version_sources` add (the pushed config's versions).
"""

from __future__ import annotations

import logging
import sqlite3
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Iterable, Protocol

import orjson

from posedge.agent.till.hq_records import ImportReport, record_hq_contact
from posedge.sync.down import (
    MAX_RECORDS_BYTES,
    RECORD_KINDS,
    DownAck,
    Records,
    Scope,
    Versions,
    build_down_ack,
    build_versions,
    parse_records,
)
from posedge.sync.ids import uuid7
from posedge.sync.protocol import ProtocolError

if TYPE_CHECKING:
    from posedge.agent.hq_sync.feature import HqSync

log = logging.getLogger("posedge.agent.sync")


class RecordsSink(Protocol):
    """Who applies HQ records (the till): in the writer's transaction, then announced after the commit."""

    def apply_hq_records(self, conn: sqlite3.Connection, kind: str, records: Iterable[dict[str, Any]],
                         report: ImportReport) -> list[Any]: ...

    def announce_hq_records(self, kind: str, applied: list[Any]) -> None: ...


@dataclass(frozen=True)
class Applied:
    result: str  # applied | ignored
    report: ImportReport
    applied: list[Any]


def held_versions(conn: sqlite3.Connection) -> dict[str, dict[str, int]]:
    """scope -> kind -> the version of the records document applied last."""
    held: dict[str, dict[str, int]] = {}
    for kind, scope, version in conn.execute("SELECT kind, scope, version FROM down_versions"):
        held.setdefault(scope, {})[kind] = version
    return held


def merged_versions(sync: "HqSync") -> dict[str, dict[str, int]]:
    """scope -> kind -> version held, from every source in `sync.version_sources`."""
    merged: dict[str, dict[str, int]] = {}
    for source in sync.version_sources:
        try:
            for scope, kinds in source().items():
                merged.setdefault(scope, {}).update(kinds)
        except Exception:  # one source's failure must not cost HQ the others' versions
            log.exception("event=sync_version_source_failed")
    return merged


def send_versions(sync: "HqSync") -> None:
    """`up/versions` (docs/protocol.md 8.3): on every connect, and after a `resync` command forgot some."""
    config = sync.config.store
    sync.send("versions", build_versions(Versions(str(uuid7()), config.tenant, config.id, merged_versions(sync))))


class RecordsInbox:
    def __init__(self, sync: "HqSync", sink: RecordsSink) -> None:
        self.sync = sync
        self.sink = sink

    def register(self) -> None:
        """Before HqSync.start(): take the record kinds' routes, say the versions on every connect."""
        for kind in RECORD_KINDS:
            self.sync.down_routes[kind] = self.on_records
        self.sync.version_sources.append(lambda: self.sync.reader.read_sync(held_versions))
        self.sync.connect_hooks.append(self.send_versions)
        self.sync.hq_online_hooks.append(self.send_versions)  # HQ back in a new session (docs/protocol.md 8.9)

    # -- versions on connect (on the link thread) -------------------------------------------------
    def send_versions(self) -> None:
        send_versions(self.sync)

    # -- a records document (on the link thread) ---------------------------------------------------
    def on_records(self, store: str | None, kind: str, payload: bytes) -> None:
        try:
            doc = self._parse(store, kind, payload)
        except ProtocolError as exc:
            self.sync.count_down_rejected(exc.reason)
            log.warning("event=sync_down_rejected kind=%s scope=%s reason=%s detail=%r", kind,
                        "tenant" if store is None else "store", exc.reason, exc.detail[:200])
            self._ack(kind, "tenant" if store is None else "store", None, "rejected", exc.reason,
                      _peek_msg_id(payload))
            return
        future = self.sync.writer.submit(lambda conn: self._apply(conn, doc))
        future.add_done_callback(lambda done: self._applied(doc, done))

    def _parse(self, store: str | None, kind: str, payload: bytes) -> Records:
        tenant = self.sync.config.store.tenant
        try:
            return parse_records(payload, tenant, store, kind)
        except ProtocolError as exc:
            # HQ's resend of a tenant-wide document to one store comes on the store's own topic, without a
            # store in the payload: it is a tenant-scope document (docs/protocol.md 8.3).
            if store is not None and exc.reason == "wrong_store" and _store_absent(payload):
                return parse_records(payload, tenant, None, kind)
            raise

    def _apply(self, conn: sqlite3.Connection, doc: Records) -> Applied:
        report = ImportReport()
        row = conn.execute("SELECT version FROM down_versions WHERE kind = ? AND scope = ?",
                           (doc.kind, doc.scope)).fetchone()
        if row is not None and doc.version <= row[0]:
            record_hq_contact(conn, "link")
            return Applied("ignored", report, [])
        applied = self.sink.apply_hq_records(conn, doc.kind, doc.records, report)
        conn.execute("INSERT INTO down_versions (kind, scope, version, msg_id, applied_at) VALUES (?,?,?,?,?)"
                     " ON CONFLICT (kind, scope) DO UPDATE SET version = excluded.version, msg_id = excluded.msg_id,"
                     " applied_at = excluded.applied_at",
                     (doc.kind, doc.scope, doc.version, doc.msg_id,
                      datetime.now(timezone.utc).isoformat(timespec="milliseconds")))
        return Applied("applied", report, applied)

    def _applied(self, doc: Records, future: "Future[Applied]") -> None:
        """On the writer thread, after the commit (or the failure)."""
        error = future.exception()
        if error is not None:  # not applied and not answered: HQ resends it after our next up/versions
            log.warning("event=sync_down_not_applied kind=%s scope=%s version=%s error=%r", doc.kind, doc.scope,
                        doc.version, str(error)[:200])
            return
        outcome = future.result()
        report = outcome.report
        counts = {"applied": report.applied, "ignored": report.ignored, "invalid": len(report.invalid)}
        log.info("event=sync_down_%s kind=%s scope=%s version=%s applied=%s ignored=%s invalid=%s", outcome.result,
                 doc.kind, doc.scope, doc.version, counts["applied"], counts["ignored"], counts["invalid"])
        for number, problem in report.invalid[:5]:
            log.warning("event=sync_down_record_invalid kind=%s version=%s record=%s problem=%r", doc.kind,
                        doc.version, number, problem[:200])
        self._ack(doc.kind, doc.scope, doc.version, outcome.result, None, doc.msg_id,
                  counts if outcome.result == "applied" else None)
        try:
            self.sink.announce_hq_records(doc.kind, outcome.applied)
        except Exception:
            log.exception("event=sync_down_announce_failed kind=%s", doc.kind)

    def _ack(self, kind: str, scope: Scope, version: int | None, result: Any, reason: str | None,
             reply_to: str | None, counts: dict[str, int] | None = None) -> None:
        store = self.sync.config.store
        ack = DownAck(str(uuid7()), store.tenant, store.id, kind, scope, version, result, reason, reply_to, counts)
        self.sync.send("down_ack", build_down_ack(ack))


def _loads(payload: bytes) -> Any:
    if len(payload) > MAX_RECORDS_BYTES:
        return None
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None


def _store_absent(payload: bytes) -> bool:
    obj = _loads(payload)
    return isinstance(obj, dict) and "store" not in obj


def _peek_msg_id(payload: bytes) -> str | None:
    """The refused message's msg_id for the ack's reply_to, when it has a sane one."""
    obj = _loads(payload)
    msg_id = obj.get("msg_id") if isinstance(obj, dict) else None
    return msg_id if isinstance(msg_id, str) and 0 < len(msg_id) <= 64 else None
