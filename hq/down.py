"""The down path at HQ (docs/protocol.md section 8): a durable log of records documents, their publishing,
the resend on a store's `up/versions`, and the stores' `up/down_ack`s.

Every document is first written to `down_documents` (one row per (tenant, store, kind, version); store ''
for tenant-wide) with the next version of its (tenant, scope, kind); only then published. The row is the
truth: a document written by another process (`posedge-hq push`, the HTTP API through hq/down_hook.py) is
published by the running `posedge-hq serve`, which polls the log for rows not yet published
(`Publisher.poll`); a store that missed one (offline with no session, a broker that lost its queue) gets it
again when it says its versions on connect. Nothing here waits for a broker.
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import datetime, timezone
from typing import Any, Callable, Sequence

from posedge.hq import db
from posedge.sync.down import (
    MAX_RECORDS,
    MAX_RECORDS_BYTES,
    RECORD_KINDS,
    Records,
    Scope,
    build_records,
    down_topic,
    parse_down_ack,
    parse_versions,
)
from posedge.sync.encoding import dumps
from posedge.sync.ids import uuid7
from posedge.sync.protocol import SEGMENT, Topics

log = logging.getLogger("posedge.hq.down")

Publish = Callable[[str, bytes], None]
VERSION_RETRIES = 5  # two writers racing for the same next version: the loser takes the one after


class DocumentRefused(ValueError):
    """A document HQ will not write: unknown kind, bad ids, too many records or too many bytes."""


def topic_of(tenant: str, store: str | None, kind: str) -> str:
    scope: Scope = "tenant" if store is None else "store"
    return down_topic(Topics(tenant, store or "all"), kind, scope)


def write_document(database: db.Database, tenant: str, store: str | None, kind: str,
                   records: Sequence[dict[str, Any]]) -> int:
    """Store the next version of (tenant, scope, kind) with these records, unpublished; returns the version."""
    for _ in range(VERSION_RETRIES):
        with database.transaction():
            version = insert_document(database, tenant, store, kind, records)
        if version is not None:
            return version
    raise DocumentRefused(f"could not take a version for {kind} after {VERSION_RETRIES} tries (busy writers)")


def insert_document(database: db.Database, tenant: str, store: str | None, kind: str,
                    records: Sequence[dict[str, Any]]) -> int | None:
    """In the caller's transaction: the next version's row, or None when another writer took that version."""
    _check(tenant, store, kind, records)
    row = database.execute("SELECT max(version) FROM down_documents"
                           " WHERE tenant = ? AND store = ? AND kind = ?", (tenant, store or "", kind)).one()
    version = int(row[0]) + 1 if row and row[0] is not None else 1
    doc = Records(str(uuid7()), tenant, store, kind, version, tuple(records))
    payload = build_records(doc)
    if len(payload) > MAX_RECORDS_BYTES:
        raise DocumentRefused(f"the document is {len(payload)} bytes; stores take at most {MAX_RECORDS_BYTES}"
                              " (split the records over several pushes)")
    inserted = database.execute(
        "INSERT INTO down_documents (tenant, store, kind, version, msg_id, payload, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        (tenant, store or "", kind, version, doc.msg_id, payload.decode(), _now())).rowcount
    return version if inserted == 1 else None


def push(database: db.Database, publish: Publish, tenant: str, store: str | None, kind: str,
         records: Sequence[dict[str, Any]]) -> int:
    """Write the document (next version), publish it, mark it published; returns its version."""
    version = write_document(database, tenant, store, kind, records)
    Publisher(database, publish).poll()
    return version


def _check(tenant: str, store: str | None, kind: str, records: Sequence[dict[str, Any]]) -> None:
    if kind not in RECORD_KINDS:
        raise DocumentRefused(f"kind {kind!r} is not one of {', '.join(RECORD_KINDS)}")
    for name, value in (("tenant", tenant), ("store", store)):
        if value is not None and not SEGMENT.match(value):
            raise DocumentRefused(f"{name} {value!r} is not an id of 1-64 of A-Z a-z 0-9 _ -")
    if store == "all":
        raise DocumentRefused("store 'all' is the tenant-wide topic; give no store for a tenant-wide document")
    if len(records) > MAX_RECORDS:
        raise DocumentRefused(f"{len(records)} records; a document holds at most {MAX_RECORDS}")
    if not all(isinstance(r, dict) for r in records):
        raise DocumentRefused("every record must be a JSON object")


class Publisher:
    """Publishes the log's unpublished rows, oldest first, and marks them published (serve's loop polls it)."""

    def __init__(self, database: db.Database, publish: Publish) -> None:
        self.database = database
        self.publish = publish

    def poll(self, limit: int = 100) -> int:
        rows = self.database.execute(
            "SELECT tenant, store, kind, version, payload FROM down_documents WHERE published_at IS NULL"
            " ORDER BY created_at, version LIMIT ?", (limit,)).rows
        for tenant, store, kind, version, payload in rows:
            self.publish(topic_of(tenant, store or None, kind), str(payload).encode())
            self.database.execute("UPDATE down_documents SET published_at = ? WHERE tenant = ? AND store = ?"
                                  " AND kind = ? AND version = ?", (_now(), tenant, store, kind, version))
            log.info("event=hq_down_published tenant=%s store=%s kind=%s version=%s", tenant, store or "all", kind,
                     version)
        return len(rows)


class DownConsumer:
    """HQ's side of `up/versions` (resend what is newer) and `up/down_ack` (record it)."""

    def __init__(self, database: db.Database, publish: Publish, counts: Counter[str]) -> None:
        self.database = database
        self.publish = publish
        self.counts = counts

    def on_versions(self, tenant: str, store: str, payload: bytes) -> None:
        versions = parse_versions(payload, tenant, store)
        self.counts["versions"] += 1
        resent = 0
        for scope, stored_as in (("store", store), ("tenant", "")):
            held = versions.versions.get(scope, {})
            for kind, version, doc in self._documents(tenant, stored_as):
                if version > held.get(kind, 0):
                    # A tenant-wide document goes to this store's own topic: only it asked (docs/protocol.md 8.3).
                    self.publish(topic_of(tenant, store, kind), doc)
                    resent += 1
        self.counts["resent"] += resent
        if resent:
            log.info("event=hq_down_resent tenant=%s store=%s documents=%s", tenant, store, resent)

    def _documents(self, tenant: str, store: str) -> list[tuple[str, int, bytes]]:
        rows = self.database.execute("SELECT kind, version, payload FROM down_documents WHERE tenant = ? AND store = ?"
                                     " ORDER BY kind, version", (tenant, store)).rows
        return [(str(kind), int(version), str(payload).encode()) for kind, version, payload in rows]

    def on_down_ack(self, tenant: str, store: str, payload: bytes) -> None:
        ack = parse_down_ack(payload, tenant, store)
        self.counts[f"down_acks_{ack.result}"] += 1
        with self.database.bookkeeping():  # no fsync wait per ack (hq/db.py): a push brings one from every store
            self.database.execute(
                "INSERT INTO down_acks (tenant, store, kind, scope, version, result, reason, reply_to, counts, at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (tenant, store, ack.kind, ack.scope, ack.version, ack.result, ack.reason, ack.reply_to,
                 dumps(ack.counts) if ack.counts is not None else None, _now()))
        if ack.result == "rejected":
            log.warning("event=hq_down_rejected_by_store tenant=%s store=%s kind=%s scope=%s reason=%s", tenant,
                        store, ack.kind, ack.scope, ack.reason)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")
