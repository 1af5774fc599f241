"""HQ's commands to stores (docs/protocol.md 8.8): sign, enqueue in the down log, record the answers.

`issue` signs a command (sync/command_doc.py) with an HQ config key and writes it to the down log
(`down_documents`, kind `command`, its `msg_id` the cmd_id) in one transaction; the running `posedge-hq serve`
publishes it (hq/down.py's Publisher, QoS 1, not retained: a command is for once). The serve's consumer
records each `up/command_ack` in `command_acks` and each `up/diagnostics` part in
`diagnostics_bundles`. On a store's `up/hello` (it connected; not on `up/versions`, which a `resync` sends
too) it resends the commands of its scope that store has not answered and that have not expired, so a
broker that lost its queue loses no command (a store that ran one already refuses the resend `replayed`,
which `posedge-hq command status` shows beside the first answer).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
import zlib
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

from posedge.hq import db, down
from posedge.hq.keys import load_minter
from posedge.sync.codes import peek_claims
from posedge.sync.command_doc import COMMANDS, RESYNC_DEFAULT, check_args, peek_expiry, sign_command
from posedge.sync.config_doc import ID, MAX_DOCUMENT_CHARS, DocumentRefused
from posedge.sync.down import parse_command_ack, parse_diagnostics
from posedge.sync.encoding import dumps
from posedge.sync.ids import uuid7

log = logging.getLogger("posedge.hq.commands")

KIND = "command"
Publish = Callable[[str, bytes], None]
MAX_BUNDLE_JSON_BYTES = 64 * 1024 * 1024
RESEND_WITHIN_S = 7 * 86400  # how far back a connecting store's unanswered commands are looked for


class CommandError(ValueError):
    """A command HQ will not issue (bad ids, args, key); the message says why."""


def issue(database: db.Database, key: Path, kid: str, tenant: str, store: str | None, cmd: str,
          args: dict[str, Any] | None = None, ttl_s: int = 3600) -> tuple[str, int]:
    """Sign and enqueue a command; returns (cmd_id, its version in the down log)."""
    if cmd not in COMMANDS:
        raise CommandError(f"{cmd!r} is not one of {', '.join(COMMANDS)}")
    for name, value in (("--tenant", tenant), ("--store", store)):
        if value is not None and not ID.match(value):
            raise CommandError(f"{name} {value!r}: expected an id of 1-64 A-Z a-z 0-9 _ -")
    if store == "all":
        raise CommandError("store 'all' is the tenant-wide topic; give no --store for every store")
    try:
        checked = check_args(cmd, dict(args or {}))
    except DocumentRefused as exc:
        raise CommandError(exc.message) from None
    minter = load_minter(key, kid)
    cmd_id = str(uuid7())
    token = sign_command(minter.private_key, minter.kid, cmd_id=cmd_id, cmd=cmd, tenant=tenant, store=store,
                         args=checked, ttl_s=ttl_s)
    if len(token) > MAX_DOCUMENT_CHARS:
        raise CommandError(f"the signed command is {len(token)} characters; stores take at most {MAX_DOCUMENT_CHARS}")
    for _ in range(down.VERSION_RETRIES):
        with database.transaction():
            version = down.next_version(database, tenant, store, KIND)
            if down.insert_row(database, tenant, store, KIND, version, cmd_id, token):
                return cmd_id, version
    raise CommandError(f"could not take a version for the command after {down.VERSION_RETRIES} tries (busy writers)")


def resync_args(kinds: Sequence[str] | None) -> dict[str, Any]:
    return {"kinds": list(kinds or RESYNC_DEFAULT)}


class CommandConsumer:
    """`up/command_ack` and `up/diagnostics` into the database; pending commands resent on `up/hello`."""

    def __init__(self, database: db.Database, publish: Publish, counts: Counter[str]) -> None:
        self.database = database
        self.publish = publish
        self.counts = counts

    def on_command_ack(self, tenant: str, store: str, payload: bytes) -> None:
        ack = parse_command_ack(payload, tenant, store)
        self.counts[f"command_acks_{ack.result}"] += 1
        with self.database.transaction():
            self.database.execute(
                "INSERT INTO command_acks (tenant, store, cmd_id, cmd, result, reason, detail, data, msg_id, at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (tenant, store, ack.cmd_id, ack.cmd, ack.result, ack.reason, ack.detail,
                 dumps(ack.data) if ack.data is not None else None, ack.msg_id, _now()))
        level = logging.INFO if ack.result == "ok" else logging.WARNING
        log.log(level, "event=hq_command_ack tenant=%s store=%s cmd=%s cmd_id=%s result=%s reason=%s", tenant, store,
                ack.cmd, ack.cmd_id, ack.result, ack.reason)

    def on_diagnostics(self, tenant: str, store: str, payload: bytes) -> None:
        part = parse_diagnostics(payload, tenant, store)
        self.counts["diagnostics_parts"] += 1
        with self.database.transaction():
            self.database.execute(
                "INSERT INTO diagnostics_bundles (tenant, store, bundle_id, part, parts, cmd_id, sha256, data,"
                " received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (tenant, store, part.bundle_id, part.part, part.parts, part.cmd_id, part.sha256, part.data, _now()))

    def on_connect(self, tenant: str, store: str) -> int:
        """The store connected: resend its scope's published commands it has not answered, still valid."""
        since = datetime.fromtimestamp(time.time() - RESEND_WITHIN_S, timezone.utc).isoformat(timespec="milliseconds")
        rows = self.database.execute(
            "SELECT d.msg_id, d.payload FROM down_documents d WHERE d.tenant = ? AND d.store IN (?, '')"
            " AND d.kind = ? AND d.published_at IS NOT NULL AND d.created_at >= ? AND NOT EXISTS ("
            "SELECT 1 FROM command_acks a WHERE a.tenant = d.tenant AND a.store = ? AND a.cmd_id = d.msg_id)"
            " ORDER BY d.created_at", (tenant, store, KIND, since, store)).rows
        now, resent = time.time(), 0
        for _cmd_id, payload in rows:
            exp = peek_expiry(str(payload))
            if exp is None or exp <= now:
                continue
            # to the store's own topic, tenant-wide ones too: only this store asked
            self.publish(down.topic_of(tenant, store, KIND), str(payload).encode())
            resent += 1
        if resent:
            self.counts["commands_resent"] += resent
            log.info("event=hq_commands_resent tenant=%s store=%s commands=%d", tenant, store, resent)
        return resent


def command_status(database: db.Database, cmd_id: str) -> dict[str, Any] | None:
    """What HQ knows of a command: who it was for, when published, every answer and diagnostics bundle."""
    row = database.execute("SELECT tenant, store, version, payload, created_at, published_at FROM down_documents"
                           " WHERE kind = ? AND msg_id = ?", (KIND, cmd_id)).one()
    if row is None:
        return None
    tenant, store, version, payload, created_at, published_at = row
    claims = _claims(str(payload))
    acks = [{"store": a[0], "result": a[1], "reason": a[2], "detail": a[3],
             "data": json.loads(a[4]) if a[4] else None, "at": a[5]}
            for a in database.execute("SELECT store, result, reason, detail, data, at FROM command_acks"
                                      " WHERE tenant = ? AND cmd_id = ? ORDER BY at", (tenant, cmd_id)).rows]
    bundles = [{"store": b[0], "bundle_id": b[1], "parts": int(b[2]), "received": int(b[3]),
                "complete": int(b[3]) == int(b[2])}
               for b in database.execute("SELECT store, bundle_id, max(parts), count(*) FROM diagnostics_bundles"
                                         " WHERE tenant = ? AND cmd_id = ? GROUP BY store, bundle_id"
                                         " ORDER BY store, bundle_id", (tenant, cmd_id)).rows]
    return {"cmd_id": cmd_id, "cmd": claims.get("cmd"), "args": claims.get("args"), "tenant": tenant,
            "store": store or None, "version": int(version), "exp": claims.get("exp"), "created_at": created_at,
            "published_at": published_at, "acks": acks, "bundles": bundles}


def read_bundle(database: db.Database, tenant: str, bundle_id: str) -> dict[str, Any]:
    """A complete diagnostics bundle, reassembled, its sha256 checked, decoded; CommandError otherwise."""
    rows = database.execute("SELECT part, parts, sha256, data FROM diagnostics_bundles WHERE tenant = ?"
                            " AND bundle_id = ? ORDER BY part", (tenant, bundle_id)).rows
    if not rows or len(rows) != int(rows[0][1]) or [int(r[0]) for r in rows] != list(range(len(rows))):
        raise CommandError(f"bundle {bundle_id}: {len(rows)} of {rows[0][1] if rows else '?'} parts received")
    packed = base64.b64decode("".join(str(r[3]) for r in rows))
    if hashlib.sha256(packed).hexdigest() != rows[0][2]:
        raise CommandError(f"bundle {bundle_id}: its sha256 does not match the parts received")
    try:
        inflater = zlib.decompressobj(wbits=31)  # gzip, bounded: a store's bundle, not a trusted file
        raw = inflater.decompress(packed, MAX_BUNDLE_JSON_BYTES)
        if inflater.unconsumed_tail:
            raise ValueError(f"inflates past {MAX_BUNDLE_JSON_BYTES} bytes")
        bundle = json.loads(raw)
    except (zlib.error, ValueError) as exc:
        raise CommandError(f"bundle {bundle_id}: not gzip'd JSON: {exc}") from None
    if not isinstance(bundle, dict):
        raise CommandError(f"bundle {bundle_id}: not a JSON object")
    return bundle


def _claims(token: str) -> dict[str, Any]:
    return peek_claims(token) or {}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")
