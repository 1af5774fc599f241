"""The wire protocol between a store and HQ (docs/protocol.md, version 1): topics, envelopes, acks.

Everything a peer needs is in the payload (JSON), so the protocol runs the same on MQTT 3.1.1 and 5.
Every parse here is of untrusted bytes: it either returns a typed value or raises `ProtocolError`
with a reason code (what was wrong, where) -- never another exception, whatever the bytes.
"""

from __future__ import annotations

import base64
import binascii
import re
import zlib
from dataclasses import dataclass
from typing import Any, Sequence

import orjson

from posedge.sync.encoding import dumps_bytes

SCHEMA_VERSION = 1
ROOT = "posedge/v1"
SEGMENT = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # tenant and store ids: the agent's SAFE_ID
KIND = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
MAX_SEQ = 2**63 - 1

MAX_ACK_BYTES = 4096  # an ack is ~250 bytes; anything near this is not an ack
MAX_HELLO_BYTES = 4096
MAX_BATCH_BYTES = 1_048_576  # on the wire, and again after decompression
MAX_BATCH_EVENTS = 10_000
ACK_ERRORS = frozenset({"seq_conflict", "stream_behind"})
COMPRESSIONS = ("none", "zlib")


class ProtocolError(ValueError):
    """A message that does not follow the protocol: `reason` is a short code, the text says what and where."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# -- topics ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Topics:
    """The topic tree of one store: posedge/v1/{tenant}/{store}/..."""

    tenant: str
    store: str

    def __post_init__(self) -> None:
        for name, value in (("tenant", self.tenant), ("store", self.store)):
            if not SEGMENT.match(value):
                raise ValueError(f"{name} {value!r} cannot be a topic segment; expected 1-64 of A-Z a-z 0-9 _ -")

    @property
    def base(self) -> str:
        return f"{ROOT}/{self.tenant}/{self.store}"

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def up_batch(self) -> str:
        return f"{self.base}/up/batch"

    @property
    def up_hello(self) -> str:
        return f"{self.base}/up/hello"

    @property
    def down_ack(self) -> str:
        return f"{self.base}/down/ack"

    @property
    def tenant_down(self) -> str:
        return f"{ROOT}/{self.tenant}/all/down"


UP_SUBSCRIPTION = f"{ROOT}/+/+/up/#"  # what HQ subscribes to


def parse_up_topic(topic: str) -> tuple[str, str, str]:
    """posedge/v1/{tenant}/{store}/up/{name} -> (tenant, store, name)."""
    parts = topic.split("/")
    if len(parts) != 6 or "/".join(parts[:2]) != ROOT or parts[4] != "up":
        raise ProtocolError("bad_topic", f"{topic[:200]!r} is not {ROOT}/{{tenant}}/{{store}}/up/{{name}}")
    tenant, store, name = parts[2], parts[3], parts[5]
    if not SEGMENT.match(tenant) or not SEGMENT.match(store) or store == "all":
        raise ProtocolError("bad_topic", f"{topic[:200]!r}: tenant or store is not a valid id")
    return tenant, store, name


# -- values ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WireEvent:
    """One outbox event on the wire: `seq` is gap-free within its stream."""

    seq: int
    event_id: str
    kind: str
    key: str
    created_at: str
    payload: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "event_id": self.event_id, "kind": self.kind, "key": self.key,
                "created_at": self.created_at, "payload": self.payload}


@dataclass(frozen=True)
class Batch:
    msg_id: str
    tenant: str
    store: str
    stream: str
    first_seq: int  # the stream's first sequence number (where HQ's position for a new stream starts)
    sent_at: str
    events: tuple[WireEvent, ...]
    compression: str = "none"


@dataclass(frozen=True)
class Hello:
    """Sent by the agent on every connect: its stream and how far its outbox goes; HQ answers with an ack."""

    msg_id: str
    tenant: str
    store: str
    stream: str
    first_seq: int
    max_seq: int  # the highest seq the agent's outbox holds (0: none yet)
    agent_version: str


@dataclass(frozen=True)
class Ack:
    """HQ's cumulative acknowledgement: every event of `stream` up to `acked_seq` is applied, with no gap."""

    msg_id: str
    tenant: str
    store: str
    stream: str
    acked_seq: int
    gap_from: int | None = None  # HQ saw a later seq but misses this one: resend from here
    reply_to: str | None = None
    error: str | None = None  # seq_conflict | stream_behind: the agent must start a new stream
    acked_event_id: str | None = None  # the event HQ holds at acked_seq: a restored database numbers another there


# -- building --------------------------------------------------------------------------------------


def build_batch(batch: Batch, compress_min_bytes: int = 2048) -> bytes:
    """The batch as bytes; its events are zlib-compressed (and announced) when their JSON is long enough."""
    return build_batch_encoded(batch, [dumps_bytes(e.as_dict()) for e in batch.events], compress_min_bytes)


def encode_event(seq: int, event_id: str, kind: str, key: str, created_at: str, payload_json: str) -> bytes:
    """One event of a batch's `events`, its payload the JSON text it was stored as, spliced in unparsed
    (orjson.Fragment): the same bytes as encoding the decoded payload, without decoding and encoding it again.
    The text must be a JSON object: the outbox's, written by sync/outbox.py's `append_event`."""
    return orjson.dumps({"seq": seq, "event_id": event_id, "kind": kind, "key": key, "created_at": created_at,
                         "payload": orjson.Fragment(payload_json)})


def build_batch_encoded(batch: Batch, encoded: Sequence[bytes], compress_min_bytes: int = 2048) -> bytes:
    """`batch`'s envelope (its `events` are not read) with `encoded` as its events, in seq order: each one
    `encode_event`'s or a `WireEvent.as_dict()` encoded."""
    events = BatchEvents(compress_min_bytes)
    events.add(encoded)
    return events.build(batch)


class BatchEvents:
    """A batch's `events` built a chunk of encoded events at a time, so that building a batch is many short
    steps (the drainer gives way to the till between two: it shares the process, and the GIL, with the
    checkout). Once the JSON array reaches `compress_min_bytes` it goes through one zlib stream as it comes
    (level 6), so compressing is spread over the chunks too. The bytes decompress to what `zlib.compress` of
    the whole array gives; the compressed bytes themselves may differ. One use: `add`, then `build` once."""

    def __init__(self, compress_min_bytes: int = 2048) -> None:
        self.compress_min_bytes = compress_min_bytes
        self.count = 0
        self.array_bytes = 1  # the JSON array's length so far, its closing "]" counted
        self._plain: list[bytes] = []  # the array's start while it is too short to compress
        self._deflate: Any = None  # zlib's compressobj once it is long enough
        self._packed: list[bytes] = []

    def add(self, encoded: Sequence[bytes]) -> None:
        if not encoded:
            return
        chunk = (b"," if self.count else b"[") + b",".join(encoded)
        self.count += len(encoded)
        self.array_bytes += len(chunk)
        if self._deflate is not None:
            self._packed.append(self._deflate.compress(chunk))
            return
        self._plain.append(chunk)
        if self.compress_min_bytes and self.array_bytes >= self.compress_min_bytes:
            self._deflate = zlib.compressobj(6)
            self._packed.append(self._deflate.compress(b"".join(self._plain)))
            self._plain = []

    def build(self, batch: Batch) -> bytes:
        envelope: dict[str, Any] = _head("batch", batch.msg_id, batch.tenant, batch.store)
        envelope.update(stream=batch.stream, first_seq=batch.first_seq, sent_at=batch.sent_at,
                        content_type="application/json", count=self.count)
        if self._deflate is not None:
            packed = b"".join(self._packed) + self._deflate.compress(b"]") + self._deflate.flush()
            envelope["compression"] = "zlib"
            envelope["events_zlib"] = base64.b64encode(packed).decode("ascii")
            return dumps_bytes(envelope)
        envelope["compression"] = "none"
        events = b"".join(self._plain) + b"]" if self.count else b"[]"
        return dumps_bytes(envelope)[:-1] + b',"events":' + events + b"}"


def build_hello(hello: Hello) -> bytes:
    envelope = _head("hello", hello.msg_id, hello.tenant, hello.store)
    envelope.update(stream=hello.stream, first_seq=hello.first_seq, max_seq=hello.max_seq,
                    agent_version=hello.agent_version)
    return dumps_bytes(envelope)


def build_ack(ack: Ack) -> bytes:
    envelope = _head("ack", ack.msg_id, ack.tenant, ack.store)
    envelope.update(stream=ack.stream, acked_seq=ack.acked_seq, acked_event_id=ack.acked_event_id,
                    gap_from=ack.gap_from, reply_to=ack.reply_to, error=ack.error)
    return dumps_bytes(envelope)


# Status fields that change with time alone: a new value is no reason to publish (the periodic status
# refreshes them); only turning from null to a number, or back, is.
STATUS_CLOCK_FIELDS = ("oldest_pending_age_s", "hours_since_hq")


def status_changed(last: dict[str, Any] | None, now: dict[str, Any]) -> bool:
    """Whether `now` says something the last published status did not (clock-driven fields aside)."""
    if last is None:
        return True
    def comparable(fields: dict[str, Any]) -> dict[str, Any]:
        return {k: (v is None if k in STATUS_CLOCK_FIELDS else v) for k, v in fields.items()}
    return comparable(last) != comparable(now)


def build_status(state: str, **fields: Any) -> bytes:
    """The retained status message (and, with state offline, the last will)."""
    return dumps_bytes({"v": SCHEMA_VERSION, "type": "status", "state": state, **fields})


def _head(kind: str, msg_id: str, tenant: str, store: str) -> dict[str, Any]:
    return {"v": SCHEMA_VERSION, "type": kind, "msg_id": msg_id, "tenant": tenant, "store": store}


# -- parsing ---------------------------------------------------------------------------------------


def parse_ack(data: bytes, tenant: str, store: str) -> Ack:
    """An ack for this store, or ProtocolError. The broker is untrusted: anyone who may publish there could."""
    obj = _envelope(data, MAX_ACK_BYTES, "ack", tenant, store)
    acked = _int(obj, "acked_seq", 0)
    gap = obj.get("gap_from")
    if gap is not None:
        gap = _int(obj, "gap_from", 1)
        if gap <= acked:
            raise ProtocolError("bad_field", f"gap_from {gap} must be above acked_seq {acked}")
    error = obj.get("error")
    if error is not None and error not in ACK_ERRORS:
        raise ProtocolError("bad_field", f"error {str(error)[:40]!r} is not one of {sorted(ACK_ERRORS)} or null")
    reply_to = _optional_str(obj, "reply_to", 64)
    acked_event_id = None if obj.get("acked_event_id") is None else _uuid(obj, "acked_event_id")
    return Ack(_str(obj, "msg_id", 64), tenant, store, _uuid(obj, "stream"), acked, gap, reply_to, error,
               acked_event_id)


def parse_hello(data: bytes, tenant: str, store: str) -> Hello:
    obj = _envelope(data, MAX_HELLO_BYTES, "hello", tenant, store)
    first = _int(obj, "first_seq", 1)
    return Hello(_str(obj, "msg_id", 64), tenant, store, _uuid(obj, "stream"), first, _int(obj, "max_seq", 0),
                 _str(obj, "agent_version", 64))


def parse_batch(data: bytes, tenant: str, store: str) -> Batch:
    """A batch whose events are in ascending, consecutive seq order (the agent sends ranges), or ProtocolError."""
    obj = _envelope(data, MAX_BATCH_BYTES, "batch", tenant, store)
    compression = obj.get("compression", "none")
    if compression not in COMPRESSIONS:
        raise ProtocolError("bad_field", f"compression {str(compression)[:20]!r} is not one of {COMPRESSIONS}")
    raw_events = _inflate(obj) if compression == "zlib" else obj.get("events")
    if not isinstance(raw_events, list) or not raw_events:
        raise ProtocolError("bad_field", "events must be a non-empty list")
    if len(raw_events) > MAX_BATCH_EVENTS:
        raise ProtocolError("too_large", f"{len(raw_events)} events; at most {MAX_BATCH_EVENTS} in one batch")
    if obj.get("count") is not None and obj.get("count") != len(raw_events):
        raise ProtocolError("bad_field", f"count {obj.get('count')!r} but {len(raw_events)} events")
    events = tuple(_event(e, i) for i, e in enumerate(raw_events))
    for before, after in zip(events, events[1:]):
        if after.seq != before.seq + 1:
            raise ProtocolError("bad_field",
                                f"events[].seq must be consecutive; {before.seq} is followed by {after.seq}")
    first = _int(obj, "first_seq", 1)
    if events[0].seq < first:
        raise ProtocolError("bad_field", f"seq {events[0].seq} is below the stream's first_seq {first}")
    return Batch(_str(obj, "msg_id", 64), tenant, store, _uuid(obj, "stream"), first,
                 _str(obj, "sent_at", 64), events, compression)


def _envelope(data: bytes, cap: int, kind: str, tenant: str, store: str | None) -> dict[str, Any]:
    """The common envelope's checks; `store` None: a tenant-wide message, which carries no store."""
    if len(data) > cap:
        raise ProtocolError("too_large", f"{len(data)} bytes; a {kind} is at most {cap}")
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError("not_json", f"not JSON ({exc.msg} at byte {exc.pos})") from None
    if not isinstance(obj, dict):
        raise ProtocolError("bad_schema", f"expected a JSON object, found {type(obj).__name__}")
    if obj.get("v") != SCHEMA_VERSION:
        raise ProtocolError("bad_version", f"v is {str(obj.get('v'))[:20]!r}; this peer speaks {SCHEMA_VERSION}")
    if obj.get("type") != kind:
        raise ProtocolError("bad_schema", f"type is {str(obj.get('type'))[:20]!r}, expected {kind!r}")
    if obj.get("tenant") != tenant:
        raise ProtocolError("wrong_tenant", f"tenant {str(obj.get('tenant'))[:64]!r} on the topic of {tenant!r}")
    if obj.get("store") != store:
        raise ProtocolError("wrong_store", f"store {str(obj.get('store'))[:64]!r} on the topic of {store!r}")
    return obj


def _inflate(obj: dict[str, Any]) -> Any:
    text = obj.get("events_zlib")
    if not isinstance(text, str):
        raise ProtocolError("bad_field", "compression zlib needs events_zlib, a base64 string")
    try:
        packed = base64.b64decode(text, validate=True)
        inflater = zlib.decompressobj()
        raw = inflater.decompress(packed, MAX_BATCH_BYTES)
        if inflater.unconsumed_tail or not inflater.eof:
            raise ProtocolError("too_large", f"events_zlib inflates past {MAX_BATCH_BYTES} bytes or is truncated")
        return orjson.loads(raw)
    except (binascii.Error, zlib.error) as exc:
        raise ProtocolError("bad_field", f"events_zlib is not base64 zlib data: {exc}") from None
    except orjson.JSONDecodeError as exc:
        raise ProtocolError("not_json", f"events_zlib holds no JSON ({exc.msg})") from None


def _event(raw: Any, index: int) -> WireEvent:
    """One event, checked in one expression when it is right (HQ checks thousands a second); the first thing
    wrong with it is named by `_event_checked`, which makes the same checks one by one."""
    if type(raw) is dict:
        get = raw.get
        seq, event_id, kind, key, created_at, payload = (get("seq"), get("event_id"), get("kind"), get("key"),
                                                         get("created_at"), get("payload"))
        if (type(seq) is int and 1 <= seq <= MAX_SEQ and type(event_id) is str and CANONICAL_UUID.fullmatch(event_id)
                and type(kind) is str and KIND.match(kind) and type(key) is str and 0 < len(key) <= 128
                and type(created_at) is str and 0 < len(created_at) <= 64 and type(payload) is dict):
            return WireEvent(seq, event_id, kind, key, created_at, payload)
    return _event_checked(raw, index)


def _event_checked(raw: Any, index: int) -> WireEvent:
    where = f"events[{index}]"
    if not isinstance(raw, dict):
        raise ProtocolError("bad_field", f"{where} must be an object")
    kind = raw.get("kind")
    if not isinstance(kind, str) or not KIND.match(kind):
        raise ProtocolError("bad_field", f"{where}.kind {str(kind)[:40]!r} is not a lower-case event kind")
    payload = raw.get("payload")
    if not isinstance(payload, dict):
        raise ProtocolError("bad_field", f"{where}.payload must be an object")
    return WireEvent(_int(raw, "seq", 1, where), _uuid(raw, "event_id", where), kind, _str(raw, "key", 128, where),
                     _str(raw, "created_at", 64, where), payload)


def _int(obj: dict[str, Any], key: str, minimum: int, where: str = "") -> int:
    value = obj.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= MAX_SEQ:
        raise ProtocolError("bad_field",
                            f"{_at(where, key)} {str(value)[:30]!r} is not an integer from {minimum} to 2^63-1")
    return value


def _str(obj: dict[str, Any], key: str, max_len: int, where: str = "") -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not 0 < len(value) <= max_len:
        raise ProtocolError("bad_field", f"{_at(where, key)} must be a string of 1 to {max_len} characters")
    return value


def _optional_str(obj: dict[str, Any], key: str, max_len: int) -> str | None:
    return None if obj.get(key) is None else _str(obj, key, max_len)


def _uuid(obj: dict[str, Any], key: str, where: str = "") -> str:
    """A UUID in its canonical text (what `str(uuid.UUID(...))` gives), checked by a pattern: HQ checks one an
    event, and building a UUID object for each was a tenth of HQ's time for a batch."""
    value = _str(obj, key, 36, where)
    if not CANONICAL_UUID.fullmatch(value):
        raise ProtocolError("bad_field", f"{_at(where, key)} {value!r} is not a lower-case UUID")
    return value


def _at(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key
