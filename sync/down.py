"""The down path's messages (docs/protocol.md section 8): HQ -> store records, and the store's answers.

HQ publishes versioned documents on `.../{store}/down/{name}` and tenant-wide on `.../{tenant}/all/down/{name}`;
the store tells HQ what it holds (`up/versions`) on every connect, acknowledges each down message
(`up/down_ack`), and asks HQ to confirm coupons (`up/confirm`, answered on `down/confirm`). As everywhere in
sync/, a parse of untrusted bytes returns a typed value or raises `ProtocolError` with a reason code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from posedge.sync.encoding import dumps_bytes

# The envelope and field checks are the up path's own (one set of rules and messages for every message).
from posedge.sync.protocol import (
    ROOT,
    SCHEMA_VERSION,
    SEGMENT,
    ProtocolError,
    Topics,
    _envelope,
    _int,
    _optional_str,
    _str,
)

# Record kinds HQ sends in a `records` document; each record has the fields of a `posedge data import` line
# of that kind (docs/till.md), and `erase` records are {"member_id", "version"}.
RECORD_KINDS = ("members", "stock", "coupons", "revocations", "pickups", "verdicts", "erase")
# Every name under down/: `ack` (section 5), `config` (a compact JWS, section 8.3), `confirm` (answers to
# up/confirm), `command` (a compact JWS, signed like config), `hq` (HQ's presence, tenant-wide only, section 8.9)
# and the record kinds.
DOWN_NAMES = ("ack", "config", "confirm", "command", "hq", *RECORD_KINDS)
SCOPES = ("store", "tenant")
Scope = Literal["store", "tenant"]
RESULTS = ("applied", "ignored", "rejected")
Result = Literal["applied", "ignored", "rejected"]

MAX_RECORDS_BYTES = 1_048_576  # a records document on the wire
MAX_RECORDS = 10_000
MAX_CONFIG_BYTES = 65_536  # a config or command JWS
MAX_SMALL_BYTES = 4096  # versions, down_ack, confirm, confirm reply
# Commands (section 8.8): the store's answer to each, and the diagnostics bundle it uploads in parts.
COMMAND_RESULTS = ("ok", "refused", "failed")
CommandResult = Literal["ok", "refused", "failed"]
MAX_DETAIL_CHARS = 1000
MAX_ACK_DATA_KEYS = 16
MAX_DIAGNOSTICS_PART_CHARS = 196_608  # base64 characters of one part (192 KiB)
MAX_DIAGNOSTICS_BYTES = MAX_DIAGNOSTICS_PART_CHARS + 1024  # one up/diagnostics message on the wire
MAX_DIAGNOSTICS_PARTS = 32  # a bundle is at most 6 MiB of base64 gzip
DIAGNOSTICS_ENCODING = "gzip+base64"
BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
# HQ's presence (section 8.9): retained on all/down/hq, online after each connect and subscribe, offline as its will.
HQ_STATES = ("online", "offline")
HqState = Literal["online", "offline"]


# -- topics ----------------------------------------------------------------------------------------


def down_topic(topics: Topics, name: str, scope: Scope = "store") -> str:
    """`posedge/v1/{tenant}/{store}/down/{name}`, or the tenant-wide `.../{tenant}/all/down/{name}`."""
    return f"{topics.base}/down/{name}" if scope == "store" else f"{topics.tenant_down}/{name}"


def store_down_subscriptions(topics: Topics) -> tuple[str, str]:
    """What a store subscribes to: its own down/ and its tenant's all/down/."""
    return f"{topics.base}/down/#", f"{topics.tenant_down}/#"


def up_topic(topics: Topics, name: str) -> str:
    return f"{topics.base}/up/{name}"


def parse_down_topic(topic: str) -> tuple[str, str | None, str]:
    """`.../{tenant}/{store}/down/{name}` -> (tenant, store, name); tenant-wide -> (tenant, None, name)."""
    parts = topic.split("/")
    if len(parts) != 6 or "/".join(parts[:2]) != ROOT or parts[4] != "down" or parts[5] not in DOWN_NAMES:
        raise ProtocolError("bad_topic", f"{topic[:200]!r} is not {ROOT}/{{tenant}}/{{store|all}}/down/{{name}}")
    tenant, store, name = parts[2], parts[3], parts[5]
    if not SEGMENT.match(tenant) or not SEGMENT.match(store):
        raise ProtocolError("bad_topic", f"{topic[:200]!r}: tenant or store is not a valid id")
    return tenant, (None if store == "all" else store), name


# -- values ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Records:
    """A versioned document of HQ records of one kind for one scope (a store, or every store of the tenant)."""

    msg_id: str
    tenant: str
    store: str | None  # None: tenant-wide (published on all/down/)
    kind: str
    version: int  # strictly increasing per (tenant, scope, kind); the store ignores what is not newer
    records: tuple[dict[str, Any], ...]

    @property
    def scope(self) -> Scope:
        return "tenant" if self.store is None else "store"


@dataclass(frozen=True)
class Versions:
    """Sent by the store on every connect: the version it holds of each down kind, per scope (0: none)."""

    msg_id: str
    tenant: str
    store: str
    versions: dict[str, dict[str, int]] = field(default_factory=dict)  # scope -> kind -> version


@dataclass(frozen=True)
class DownAck:
    """The store's answer to one down message: applied, ignored (not newer) or rejected with a reason."""

    msg_id: str
    tenant: str
    store: str
    kind: str
    scope: Scope
    version: int | None  # None when the message was too broken to say
    result: Result
    reason: str | None = None  # a reason code when rejected (config: bad_signature, stale_version, ...)
    reply_to: str | None = None  # the down message's msg_id when it had one
    counts: dict[str, int] | None = None  # records: applied / ignored / invalid


@dataclass(frozen=True)
class ConfirmRequest:
    """Online coupon confirmation: `request_no` is unique per store, till and sequence (an idempotency key)."""

    msg_id: str
    tenant: str
    store: str
    request_no: str
    coupon_id: str
    campaign: str
    discount_fen: int
    till: str | None = None
    sale_id: str | None = None
    member_id: str | None = None


@dataclass(frozen=True)
class ConfirmReply:
    msg_id: str
    tenant: str
    store: str
    reply_to: str  # the request's msg_id
    request_no: str
    accepted: bool
    reason: str | None = None  # when refused: already_redeemed, revoked, unknown_coupon, ...


@dataclass(frozen=True)
class CommandAck:
    """The store's answer to one command: ok, refused (with a reason code) or failed (it ran and did not work)."""

    msg_id: str
    tenant: str
    store: str
    cmd_id: str | None  # None when the command was too broken to say
    cmd: str | None
    result: CommandResult
    reason: str | None = None  # bad_signature, expired, replayed, invalid_config, ... (None when ok)
    detail: str | None = None  # in words, no personal data, at most MAX_DETAIL_CHARS
    data: dict[str, str | int | bool | None] | None = None  # e.g. rotate_token's fingerprint, diagnostics' bundle


@dataclass(frozen=True)
class DiagnosticsPart:
    """One part of a diagnostics bundle: the gzip of the bundle's JSON, base64, cut into `parts` pieces."""

    msg_id: str
    tenant: str
    store: str
    cmd_id: str
    bundle_id: str
    part: int  # 0 .. parts - 1
    parts: int
    sha256: str  # of the whole gzip data, hex: HQ checks the reassembled bundle
    data: str  # this part's base64 characters


@dataclass(frozen=True)
class HqPresence:
    """HQ's retained presence for a tenant: `online` after each (re)connect once its subscriptions are granted,
    `offline` as its last will and on a clean stop. A new `hq_session` means HQ may have missed what was said."""

    msg_id: str
    tenant: str
    state: HqState
    hq_session: str  # unique per HQ connection
    at: datetime  # tz-aware, HQ's clock


# -- building --------------------------------------------------------------------------------------


def _head(kind: str, msg_id: str, tenant: str, store: str | None) -> dict[str, Any]:
    head: dict[str, Any] = {"v": SCHEMA_VERSION, "type": kind, "msg_id": msg_id, "tenant": tenant}
    if store is not None:
        head["store"] = store
    return head


def build_records(doc: Records) -> bytes:
    body = _head("records", doc.msg_id, doc.tenant, doc.store)
    body.update(kind=doc.kind, version=doc.version, count=len(doc.records), records=list(doc.records))
    return dumps_bytes(body)


def build_versions(versions: Versions) -> bytes:
    body = _head("versions", versions.msg_id, versions.tenant, versions.store)
    body["versions"] = versions.versions
    return dumps_bytes(body)


def build_down_ack(ack: DownAck) -> bytes:
    body = _head("down_ack", ack.msg_id, ack.tenant, ack.store)
    body.update(kind=ack.kind, scope=ack.scope, version=ack.version, result=ack.result, reason=ack.reason,
                reply_to=ack.reply_to, counts=ack.counts)
    return dumps_bytes(body)


def build_confirm(request: ConfirmRequest) -> bytes:
    body = _head("confirm", request.msg_id, request.tenant, request.store)
    body.update(request_no=request.request_no, coupon_id=request.coupon_id, campaign=request.campaign,
                discount_fen=request.discount_fen, till=request.till, sale_id=request.sale_id,
                member_id=request.member_id)
    return dumps_bytes(body)


def build_confirm_reply(reply: ConfirmReply) -> bytes:
    body = _head("confirm_reply", reply.msg_id, reply.tenant, reply.store)
    body.update(reply_to=reply.reply_to, request_no=reply.request_no, accepted=reply.accepted, reason=reply.reason)
    return dumps_bytes(body)


def build_command_ack(ack: CommandAck) -> bytes:
    body = _head("command_ack", ack.msg_id, ack.tenant, ack.store)
    body.update(cmd_id=ack.cmd_id, cmd=ack.cmd, result=ack.result, reason=ack.reason,
                detail=None if ack.detail is None else ack.detail[:MAX_DETAIL_CHARS], data=ack.data)
    return dumps_bytes(body)


def build_diagnostics(part: DiagnosticsPart) -> bytes:
    body = _head("diagnostics", part.msg_id, part.tenant, part.store)
    body.update(cmd_id=part.cmd_id, bundle_id=part.bundle_id, part=part.part, parts=part.parts,
                encoding=DIAGNOSTICS_ENCODING, sha256=part.sha256, data=part.data)
    return dumps_bytes(body)


def build_hq(presence: HqPresence) -> bytes:
    body = _head("hq", presence.msg_id, presence.tenant, None)
    body.update(state=presence.state, hq_session=presence.hq_session, at=presence.at.isoformat())
    return dumps_bytes(body)


# -- parsing ---------------------------------------------------------------------------------------


def parse_records(data: bytes, tenant: str, store: str | None, kind: str) -> Records:
    """A records document from the topic of (tenant, store or None for all/, kind), or ProtocolError."""
    obj = _envelope(data, MAX_RECORDS_BYTES, "records", tenant, store)
    if obj.get("kind") != kind:
        raise ProtocolError("bad_schema", f"kind {str(obj.get('kind'))[:20]!r} on the {kind!r} topic")
    records = obj.get("records")
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ProtocolError("bad_field", "records must be a list of objects")
    if len(records) > MAX_RECORDS:
        raise ProtocolError("too_large", f"{len(records)} records; at most {MAX_RECORDS} in one document")
    if obj.get("count") is not None and obj.get("count") != len(records):
        raise ProtocolError("bad_field", f"count {str(obj.get('count'))[:20]!r} but {len(records)} records")
    return Records(_str(obj, "msg_id", 64), tenant, store, kind, _int(obj, "version", 1), tuple(records))


def parse_versions(data: bytes, tenant: str, store: str) -> Versions:
    obj = _envelope(data, MAX_SMALL_BYTES, "versions", tenant, store)
    raw = obj.get("versions")
    if not isinstance(raw, dict) or not set(raw) <= set(SCOPES):
        raise ProtocolError("bad_field", f"versions must be an object with keys from {SCOPES}")
    versions: dict[str, dict[str, int]] = {}
    for scope, kinds in raw.items():
        if not isinstance(kinds, dict):
            raise ProtocolError("bad_field", f"versions.{scope} must be an object of kind -> version")
        versions[scope] = {}
        for kind, version in kinds.items():
            if kind not in DOWN_NAMES:
                raise ProtocolError("bad_field", f"versions.{scope}: {str(kind)[:20]!r} is not a down kind")
            versions[scope][kind] = _int(kinds, kind, 0, f"versions.{scope}")
    return Versions(_str(obj, "msg_id", 64), tenant, store, versions)


def parse_down_ack(data: bytes, tenant: str, store: str) -> DownAck:
    obj = _envelope(data, MAX_SMALL_BYTES, "down_ack", tenant, store)
    scope, result = obj.get("scope"), obj.get("result")
    if scope not in SCOPES:
        raise ProtocolError("bad_field", f"scope {str(scope)[:20]!r} is not one of {SCOPES}")
    if result not in RESULTS:
        raise ProtocolError("bad_field", f"result {str(result)[:20]!r} is not one of {RESULTS}")
    version = None if obj.get("version") is None else _int(obj, "version", 0)
    counts = obj.get("counts")
    if counts is not None and not (isinstance(counts, dict) and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts.values())):
        raise ProtocolError("bad_field", "counts must be an object of non-negative integers or null")
    return DownAck(_str(obj, "msg_id", 64), tenant, store, _str(obj, "kind", 32), scope, version, result,
                   _optional_str(obj, "reason", 64), _optional_str(obj, "reply_to", 64), counts)


def parse_confirm(data: bytes, tenant: str, store: str) -> ConfirmRequest:
    obj = _envelope(data, MAX_SMALL_BYTES, "confirm", tenant, store)
    return ConfirmRequest(_str(obj, "msg_id", 64), tenant, store, _str(obj, "request_no", 200),
                          _str(obj, "coupon_id", 128), _str(obj, "campaign", 128), _int(obj, "discount_fen", 0),
                          _optional_str(obj, "till", 64), _optional_str(obj, "sale_id", 128),
                          _optional_str(obj, "member_id", 128))


def parse_confirm_reply(data: bytes, tenant: str, store: str) -> ConfirmReply:
    obj = _envelope(data, MAX_SMALL_BYTES, "confirm_reply", tenant, store)
    accepted = obj.get("accepted")
    if not isinstance(accepted, bool):
        raise ProtocolError("bad_field", "accepted must be true or false")
    return ConfirmReply(_str(obj, "msg_id", 64), tenant, store, _str(obj, "reply_to", 64),
                        _str(obj, "request_no", 200), accepted, _optional_str(obj, "reason", 64))


def parse_command_ack(data: bytes, tenant: str, store: str) -> CommandAck:
    obj = _envelope(data, MAX_SMALL_BYTES, "command_ack", tenant, store)
    result = obj.get("result")
    if result not in COMMAND_RESULTS:
        raise ProtocolError("bad_field", f"result {str(result)[:20]!r} is not one of {COMMAND_RESULTS}")
    extra = obj.get("data")
    if extra is not None and not (isinstance(extra, dict) and len(extra) <= MAX_ACK_DATA_KEYS and all(
            isinstance(k, str) and len(k) <= 32 and (v is None or isinstance(v, (str, int, bool)))
            for k, v in extra.items())):
        raise ProtocolError("bad_field", f"data must be an object of at most {MAX_ACK_DATA_KEYS} plain values or null")
    return CommandAck(_str(obj, "msg_id", 64), tenant, store, _optional_str(obj, "cmd_id", 64),
                      _optional_str(obj, "cmd", 32), result, _optional_str(obj, "reason", 64),
                      _optional_str(obj, "detail", MAX_DETAIL_CHARS), extra)


def parse_diagnostics(data: bytes, tenant: str, store: str) -> DiagnosticsPart:
    obj = _envelope(data, MAX_DIAGNOSTICS_BYTES, "diagnostics", tenant, store)
    if obj.get("encoding") != DIAGNOSTICS_ENCODING:
        raise ProtocolError("bad_field",
                            f"encoding {str(obj.get('encoding'))[:20]!r}; expected {DIAGNOSTICS_ENCODING!r}")
    parts = _int(obj, "parts", 1)
    if parts > MAX_DIAGNOSTICS_PARTS:
        raise ProtocolError("too_large", f"{parts} parts; a bundle has at most {MAX_DIAGNOSTICS_PARTS}")
    part = _int(obj, "part", 0)
    if part >= parts:
        raise ProtocolError("bad_field", f"part {part} of {parts}")
    sha256 = _str(obj, "sha256", 64)
    if not SHA256_HEX.fullmatch(sha256):
        raise ProtocolError("bad_field", "sha256 must be 64 lowercase hex digits")
    text = _str(obj, "data", MAX_DIAGNOSTICS_PART_CHARS)
    if not BASE64.fullmatch(text):
        raise ProtocolError("bad_field", "data must be base64")
    return DiagnosticsPart(_str(obj, "msg_id", 64), tenant, store, _str(obj, "cmd_id", 64), _str(obj, "bundle_id", 64),
                           part, parts, sha256, text)



def parse_hq(data: bytes, tenant: str) -> HqPresence:
    """HQ's presence from `.../{tenant}/all/down/hq` (a tenant-wide message: it carries no store)."""
    obj = _envelope(data, MAX_SMALL_BYTES, "hq", tenant, None)
    state = obj.get("state")
    if state not in HQ_STATES:
        raise ProtocolError("bad_field", f"state {str(state)[:20]!r} is not one of {HQ_STATES}")
    text = _str(obj, "at", 40)
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise ProtocolError("bad_field", f"at {text[:40]!r} is not an ISO 8601 time") from None
    if at.tzinfo is None:
        raise ProtocolError("bad_field", "at must carry its UTC offset")
    return HqPresence(_str(obj, "msg_id", 64), tenant, state, _str(obj, "hq_session", 64), at)
