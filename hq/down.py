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

import orjson

from posedge.hq import db, ledger
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
    version = next_version(database, tenant, store, kind)
    doc = Records(str(uuid7()), tenant, store, kind, version, tuple(records))
    payload = build_records(doc)
    if len(payload) > MAX_RECORDS_BYTES:
        raise DocumentRefused(f"the document is {len(payload)} bytes; stores take at most {MAX_RECORDS_BYTES}"
                              " (split the records over several pushes)")
    return version if insert_row(database, tenant, store, kind, version, doc.msg_id, payload.decode()) else None


def next_version(database: db.Database, tenant: str, store: str | None, kind: str) -> int:
    row = database.execute("SELECT max(version) FROM down_documents"
                           " WHERE tenant = ? AND store = ? AND kind = ?", (tenant, store or "", kind)).one()
    return int(row[0]) + 1 if row and row[0] is not None else 1


def insert_row(database: db.Database, tenant: str, store: str | None, kind: str, version: int, msg_id: str,
               payload: str) -> bool:
    """In the caller's transaction: one unpublished row of the log (records, or a command's JWS: hq/commands.py);
    False when another writer took that version."""
    return database.execute(
        "INSERT INTO down_documents (tenant, store, kind, version, msg_id, payload, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        (tenant, store or "", kind, version, msg_id, payload, _now())).rowcount == 1


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
        # Commands are not versioned data: pending ones are resent by hq/commands.py, not here.
        rows = self.database.execute("SELECT kind, version, payload FROM down_documents WHERE tenant = ? AND store = ?"
                                     " AND kind <> 'command' ORDER BY kind, version", (tenant, store)).rows
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
            if ack.kind == "erase" and ack.scope == "store" and ack.version is not None and ack.result in (
                    "applied", "ignored") and not (ack.counts or {}).get("invalid"):
                erasures = erasure_document_acked(self.database, tenant, store, ack.version)
                if erasures:
                    log.info("event=hq_erasure_acked tenant=%s store=%s erasures=%s", tenant, store,
                             ",".join(erasures))
        if ack.result == "rejected":
            log.warning("event=hq_down_rejected_by_store tenant=%s store=%s kind=%s scope=%s reason=%s", tenant,
                        store, ack.kind, ack.scope, ack.reason)


# -- erasure (PIPL): the down log keeps nothing of an erased member -------------------------------------

ERASED = "erased"  # what an erase record's member id becomes in down_queue once its store has acknowledged it


def pseudonym(erasure_id: str) -> str:
    """What HQ's books say instead of an erased member's id."""
    return f"{ERASED}:{erasure_id}"
PERSONAL_FIELDS = ("member_id", "phone_masked", "phone_hash", "phone", "card_no")


def _scrub(kind: str, record: dict[str, Any], quoted: str, member_id: str) -> dict[str, Any] | None:
    """The record without the member; None when the record is the member (a `members` record) or names them
    somewhere else than its own member fields."""
    if record.get("member_id") == member_id:
        if kind == "members":
            return None
        record = {k: v for k, v in record.items() if k not in PERSONAL_FIELDS}  # a pickup, a coupon: it stays
    return None if quoted in dumps(record) else record


def purge_member(database: db.Database, tenant: str, member_id: str) -> int:
    """At erasure, in the caller's transaction: every document of the down log (`down_documents`) and every
    intent (`down_queue`) naming the member is rewritten without them: their `members` records go, a pickup or
    coupon record stays without its member id and masked phone. Versions and msg_ids stay, so the resend on a
    store's `up/versions` works as before for everything else and can never bring the member back; a document
    left with no records stays, empty. `erase` documents are apart: they carry the member to each store until
    that store acknowledges (`erasure_document_acked`). Returns the rows rewritten."""
    quoted = dumps(member_id)
    pattern = f"%{quoted}%"
    rewritten = 0
    rows = database.execute("SELECT store, kind, version, payload FROM down_documents WHERE tenant = ? AND"
                            " kind != 'erase' AND payload LIKE ?", (tenant, pattern)).rows
    for store, kind, version, payload in rows:
        doc = orjson.loads(payload)
        records = [r for r in (_scrub(str(kind), rec, quoted, member_id) for rec in doc.get("records", []))
                   if r is not None]
        doc.update(records=records, count=len(records))
        database.execute("UPDATE down_documents SET payload = ? WHERE tenant = ? AND store = ? AND kind = ? AND"
                         " version = ?", (dumps(doc), tenant, store, kind, version))
        rewritten += 1
    rows = database.execute("SELECT scope, kind, version, records FROM down_queue WHERE tenant = ? AND"
                            " kind != 'erase' AND records LIKE ?", (tenant, pattern)).rows
    for scope, kind, version, held in rows:
        kept = [r for r in (_scrub(str(kind), rec, quoted, member_id) for rec in orjson.loads(held)) if r is not None]
        database.execute("UPDATE down_queue SET records = ? WHERE tenant = ? AND scope = ? AND kind = ? AND"
                         " version = ?", (dumps(kept), tenant, scope, kind, version))
        rewritten += 1
    return rewritten


def erasure_document_acked(database: db.Database, tenant: str, store: str, version: int) -> list[str]:
    """The store's `down_ack` of its `erase` document `version` (applied, or held already): each erasure in it
    is acknowledged for that store. Returns the erasure ids acknowledged now (not before)."""
    row = database.execute("SELECT payload FROM down_documents WHERE tenant = ? AND store = ? AND kind = 'erase'"
                           " AND version = ?", (tenant, store, version)).one()
    if row is None:
        return []
    records = orjson.loads(row[0]).get("records", [])
    acked: list[str] = []
    for record in records if isinstance(records, list) else []:
        queued = record.get("version") if isinstance(record, dict) else None
        if isinstance(queued, int):
            acked += erasure_acked(database, tenant, store, queued)
    return acked


def erasure_acked(database: db.Database, tenant: str, store: str, queued_version: int) -> list[str]:
    """The erasures of `down_queue`'s (store, erase, `queued_version`) row acknowledged by the store: recorded in
    `erasure_acks` (once), and the member id leaves HQ's down log for that store (the row's records say `erased`,
    the store's erase documents lose the record). An erase pushed by hand (`posedge-hq push erase`, no erasure
    id) is not HQ's to purge and stays as written."""
    row = database.execute("SELECT records FROM down_queue WHERE tenant = ? AND scope = ? AND kind = 'erase' AND"
                           " version = ?", (tenant, store, queued_version)).one()
    if row is None:
        return []
    queued = orjson.loads(row[0])
    acked: list[str] = []
    members = set()
    for record in queued:
        erasure_id, member = record.get("erasure_id"), record.get("member_id")
        if not isinstance(erasure_id, str) or not isinstance(member, str):
            continue
        if database.execute("UPDATE erasure_acks SET acked_at = ? WHERE tenant = ? AND erasure_id = ? AND"
                            " store_id = ? AND acked_at IS NULL", (_now(), tenant, erasure_id, store)).rowcount == 1:
            acked.append(erasure_id)
        if member != ERASED:
            members.add(member)
    if not members:
        return acked
    for record in queued:  # what the store sent before it erased them, received since HQ did
        if record.get("member_id") in members and isinstance(record.get("erasure_id"), str):
            ledger.forget_member(database, tenant, record["member_id"], pseudonym(record["erasure_id"]))
    database.execute("UPDATE down_queue SET records = ? WHERE tenant = ? AND scope = ? AND kind = 'erase' AND"
                     " version = ?", (dumps([{**r, "member_id": ERASED} if r.get("erasure_id") else r for r in queued]),
                                      tenant, store, queued_version))
    for member in members:
        quoted = dumps(member)
        for version, payload in database.execute(
                "SELECT version, payload FROM down_documents WHERE tenant = ? AND store = ? AND kind = 'erase' AND"
                " payload LIKE ?", (tenant, store, f"%{quoted}%")).rows:
            doc = orjson.loads(payload)
            records = [r for r in doc.get("records", []) if not (r.get("member_id") == member
                                                                 and r.get("version") == queued_version)]
            doc.update(records=records, count=len(records))
            database.execute("UPDATE down_documents SET payload = ? WHERE tenant = ? AND store = ? AND kind = 'erase'"
                             " AND version = ?", (dumps(doc), tenant, store, version))
    return acked


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")
