"""HQ's database, SQLite or PostgreSQL (one code path, a small dialect layer).

One transaction per up batch, then the ack; in it, usually one statement per table for all the batch's events
(executemany), event by event only to find where one already held stops the batch.

Tables (the same in both):
- `streams`: per (tenant, store, stream) the highest seq held without a gap (`acked_seq`);
- `events`: every event received, unique on (tenant, store, stream, seq) and (tenant, store, stream,
  event_id), raw payload kept;
- `applied_events`: unique on (tenant, store, event_id): an event is applied once even when a new
  stream (a restored database) carries it again;
- `sales`: one row per sale, unique on (tenant, store_id, sale_id), with the sale's totals;
- `down_documents`, `down_acks`: the down log (hq/down.py): every records document HQ pushed, unique on
  (tenant, store ('' for tenant-wide), kind, version), and every answer the stores gave.
- `command_acks`, `diagnostics_bundles`: the stores' answers to HQ's commands (kind `command` in the down
  log) and the parts of the diagnostics bundles they uploaded (hq/commands.py).
- `coupon_redemptions`, `coupon_confirmations`, `coupon_double_redemptions`: who holds each coupon, the
  answer given to each confirmation request, the double redemptions found (hq/coupons.py).
- `wire_counts`: per stream, what its committed batches carried: `batches`, `events`, and of those `applied`
  (first time), `duplicates` (held already: resends) and `skipped` (beyond a gap, or after a seq conflict),
  so `events = applied + duplicates + skipped`; counted in the batch's transaction, so exact across crashes.
The ack goes out only after the batch's COMMIT returned (SQLite: synchronous = FULL; PostgreSQL: its
default synchronous_commit): what HQ acked is on disk.

Concurrency: a batch holds its stream's position row locked until COMMIT (SQLite: BEGIN IMMEDIATE, one
writer at a time; PostgreSQL: SELECT ... FOR UPDATE), so two HQ workers fed the same batches never ack past
each other; every insert is ON CONFLICT DO NOTHING, so the loser of a race sees a duplicate, not an error.
"""

from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence
from urllib.parse import urlsplit, urlunsplit

from posedge.hq import ledger
from posedge.sync.encoding import dumps
from posedge.sync.protocol import Batch, WireEvent

# {int}: the integer column type (SQLite's STRICT INTEGER is 64-bit; PostgreSQL's INTEGER is not);
# {strict}: SQLite's STRICT tables (type-checked columns), nothing on PostgreSQL whose columns always are.
SCHEMA = """
CREATE TABLE IF NOT EXISTS streams (
    tenant TEXT NOT NULL, store_id TEXT NOT NULL, stream TEXT NOT NULL,
    first_seq {int} NOT NULL, acked_seq {int} NOT NULL,
    first_seen_at TEXT NOT NULL, last_seen_at TEXT NOT NULL,
    PRIMARY KEY (tenant, store_id, stream)
){strict};
CREATE TABLE IF NOT EXISTS events (
    tenant TEXT NOT NULL, store_id TEXT NOT NULL, stream TEXT NOT NULL, seq {int} NOT NULL,
    event_id TEXT NOT NULL, kind TEXT NOT NULL, key TEXT NOT NULL, created_at TEXT NOT NULL,
    payload TEXT NOT NULL, received_at TEXT NOT NULL,
    PRIMARY KEY (tenant, store_id, stream, seq),
    UNIQUE (tenant, store_id, stream, event_id)
){strict};
CREATE TABLE IF NOT EXISTS applied_events (
    tenant TEXT NOT NULL, store_id TEXT NOT NULL, event_id TEXT NOT NULL,
    PRIMARY KEY (tenant, store_id, event_id)
){strict};
CREATE TABLE IF NOT EXISTS sales (
    tenant TEXT NOT NULL, store_id TEXT NOT NULL, sale_id TEXT NOT NULL,
    receipt_no TEXT, business_day TEXT,
    gross_fen {int} NOT NULL, discount_fen {int} NOT NULL, total_fen {int} NOT NULL, paid_fen {int} NOT NULL,
    stream TEXT NOT NULL, seq {int} NOT NULL, received_at TEXT NOT NULL,
    UNIQUE (tenant, store_id, sale_id)
){strict};
CREATE TABLE IF NOT EXISTS down_documents (
    tenant TEXT NOT NULL, store TEXT NOT NULL, kind TEXT NOT NULL, version {int} NOT NULL,
    msg_id TEXT NOT NULL, payload TEXT NOT NULL, created_at TEXT NOT NULL, published_at TEXT,
    PRIMARY KEY (tenant, store, kind, version)
){strict};
CREATE TABLE IF NOT EXISTS down_acks (
    tenant TEXT NOT NULL, store TEXT NOT NULL, kind TEXT NOT NULL, scope TEXT NOT NULL, version {int},
    result TEXT NOT NULL, reason TEXT, reply_to TEXT, counts TEXT, at TEXT NOT NULL
){strict};
CREATE TABLE IF NOT EXISTS command_acks (
    tenant TEXT NOT NULL, store TEXT NOT NULL, cmd_id TEXT, cmd TEXT, result TEXT NOT NULL, reason TEXT,
    detail TEXT, data TEXT, msg_id TEXT NOT NULL, at TEXT NOT NULL,
    PRIMARY KEY (tenant, store, msg_id)
){strict};
CREATE INDEX IF NOT EXISTS command_acks_cmd ON command_acks (cmd_id);
CREATE TABLE IF NOT EXISTS diagnostics_bundles (
    tenant TEXT NOT NULL, store TEXT NOT NULL, bundle_id TEXT NOT NULL, part {int} NOT NULL, parts {int} NOT NULL,
    cmd_id TEXT NOT NULL, sha256 TEXT NOT NULL, data TEXT NOT NULL, received_at TEXT NOT NULL,
    PRIMARY KEY (tenant, store, bundle_id, part)
){strict};
CREATE TABLE IF NOT EXISTS coupon_redemptions (
    tenant TEXT NOT NULL, coupon_id TEXT NOT NULL, store_id TEXT NOT NULL,
    state TEXT NOT NULL, request_no TEXT, sale_id TEXT, mode TEXT,
    held_at TEXT NOT NULL, redeemed_at TEXT,
    PRIMARY KEY (tenant, coupon_id)
){strict};
CREATE TABLE IF NOT EXISTS coupon_confirmations (
    tenant TEXT NOT NULL, store_id TEXT NOT NULL, request_no TEXT NOT NULL,
    coupon_id TEXT NOT NULL, sale_id TEXT, accepted {int} NOT NULL, reason TEXT, answered_at TEXT NOT NULL,
    PRIMARY KEY (tenant, store_id, request_no)
){strict};
CREATE TABLE IF NOT EXISTS coupon_double_redemptions (
    tenant TEXT NOT NULL, coupon_id TEXT NOT NULL, store_id TEXT NOT NULL, other_store TEXT NOT NULL,
    sale_id TEXT, mode TEXT, detected_at TEXT NOT NULL, notified_at TEXT,
    PRIMARY KEY (tenant, coupon_id, store_id)
){strict};
CREATE TABLE IF NOT EXISTS wire_counts (
    tenant TEXT NOT NULL, store_id TEXT NOT NULL, stream TEXT NOT NULL,
    batches {int} NOT NULL, events {int} NOT NULL, applied {int} NOT NULL, duplicates {int} NOT NULL,
    skipped {int} NOT NULL,
    PRIMARY KEY (tenant, store_id, stream)
){strict};
"""

# The chain's tables (docs/hq-api.md): the store registry and broker users, what the stores' events say
# (points, spend, stock, pickups collected, store keys: projected in hq/ledger.py as each event is applied
# once), what the mini-program API records, and the down intents (hq/down_hook.py). {real}: a float column.
CHAIN_SCHEMA = """
CREATE TABLE IF NOT EXISTS stores (
    tenant TEXT NOT NULL, store_id TEXT NOT NULL, name TEXT, lat {real}, lng {real},
    username TEXT NOT NULL UNIQUE, password_hash TEXT NOT NULL, created_at TEXT NOT NULL,
    PRIMARY KEY (tenant, store_id)
){strict};
CREATE TABLE IF NOT EXISTS store_keys (
    tenant TEXT NOT NULL, store_id TEXT NOT NULL, kid TEXT NOT NULL, x TEXT NOT NULL, received_at TEXT NOT NULL,
    PRIMARY KEY (tenant, store_id, kid)
){strict};
CREATE TABLE IF NOT EXISTS members (
    tenant TEXT NOT NULL, member_id TEXT NOT NULL, tier TEXT NOT NULL, marketing_consent {int} NOT NULL,
    created_at TEXT NOT NULL, updated_at TEXT NOT NULL,
    PRIMARY KEY (tenant, member_id)
){strict};
CREATE TABLE IF NOT EXISTS member_stores (
    tenant TEXT NOT NULL, member_id TEXT NOT NULL, store_id TEXT NOT NULL, first_seen_at TEXT NOT NULL,
    PRIMARY KEY (tenant, member_id, store_id)
){strict};
CREATE TABLE IF NOT EXISTS points_ledger (
    tenant TEXT NOT NULL, entry_id TEXT NOT NULL, member_id TEXT NOT NULL, store_id TEXT, store_seq {int},
    delta {int} NOT NULL, reason TEXT NOT NULL, ref TEXT, created_at TEXT NOT NULL,
    PRIMARY KEY (tenant, entry_id)
){strict};
CREATE INDEX IF NOT EXISTS points_ledger_member ON points_ledger (tenant, member_id);
CREATE TABLE IF NOT EXISTS member_spend (
    tenant TEXT NOT NULL, source TEXT NOT NULL, ref TEXT NOT NULL, member_id TEXT NOT NULL, store_id TEXT,
    amount_fen {int} NOT NULL, at TEXT NOT NULL,
    PRIMARY KEY (tenant, source, ref)
){strict};
CREATE INDEX IF NOT EXISTS member_spend_member ON member_spend (tenant, member_id, at);
CREATE TABLE IF NOT EXISTS online_orders (
    tenant TEXT NOT NULL, order_id TEXT NOT NULL, member_id TEXT NOT NULL, amount_fen {int} NOT NULL,
    points_earned {int} NOT NULL, points_spent {int} NOT NULL, body_sha256 TEXT NOT NULL, created_at TEXT NOT NULL,
    PRIMARY KEY (tenant, order_id)
){strict};
CREATE TABLE IF NOT EXISTS coupons (
    tenant TEXT NOT NULL, coupon_id TEXT NOT NULL, member_id TEXT NOT NULL, campaign TEXT NOT NULL,
    benefit TEXT NOT NULL, min_fen {int} NOT NULL, stores TEXT, valid_from {int}, valid_until {int} NOT NULL,
    issued_at TEXT NOT NULL,
    PRIMARY KEY (tenant, coupon_id)
){strict};
CREATE TABLE IF NOT EXISTS claims (
    tenant TEXT NOT NULL, store_id TEXT NOT NULL, sale_id TEXT NOT NULL, member_id TEXT NOT NULL,
    points {int} NOT NULL, amount_fen {int} NOT NULL, claimed_at TEXT NOT NULL,
    PRIMARY KEY (tenant, store_id, sale_id)
){strict};
CREATE TABLE IF NOT EXISTS claim_reversals (
    tenant TEXT NOT NULL, store_id TEXT NOT NULL, sale_id TEXT NOT NULL, refund_id TEXT NOT NULL,
    points {int} NOT NULL,
    PRIMARY KEY (tenant, store_id, refund_id)
){strict};
CREATE TABLE IF NOT EXISTS stock_levels (
    tenant TEXT NOT NULL, store_id TEXT NOT NULL, sku TEXT NOT NULL, on_hand {int} NOT NULL, as_of TEXT NOT NULL,
    PRIMARY KEY (tenant, store_id, sku)
){strict};
CREATE TABLE IF NOT EXISTS pickups (
    tenant TEXT NOT NULL, order_id TEXT NOT NULL, store_id TEXT NOT NULL, member_id TEXT, items TEXT NOT NULL,
    phone_masked TEXT, body_sha256 TEXT NOT NULL, created_at TEXT NOT NULL, collected_at TEXT,
    PRIMARY KEY (tenant, order_id)
){strict};
CREATE TABLE IF NOT EXISTS erasures (
    tenant TEXT NOT NULL, erasure_id TEXT NOT NULL, requested_by TEXT NOT NULL, requested_at TEXT NOT NULL,
    PRIMARY KEY (tenant, erasure_id)
){strict};
CREATE TABLE IF NOT EXISTS erasure_acks (
    tenant TEXT NOT NULL, erasure_id TEXT NOT NULL, store_id TEXT NOT NULL, acked_at TEXT,
    PRIMARY KEY (tenant, erasure_id, store_id)
){strict};
CREATE TABLE IF NOT EXISTS down_queue (
    tenant TEXT NOT NULL, scope TEXT NOT NULL, kind TEXT NOT NULL, version {int} NOT NULL,
    records TEXT NOT NULL, created_at TEXT NOT NULL,
    PRIMARY KEY (tenant, scope, kind, version)
){strict};
"""

SALE_TOTALS = ("gross_fen", "discount_fen", "total_fen", "paid_fen")
POSTGRES_INSTALL_HINT = "PostgreSQL needs psycopg 3: pip install 'posedge[hq]'"


@dataclass(frozen=True)
class Outcome:
    acked_seq: int
    gap_from: int | None = None
    error: str | None = None
    applied: int = 0
    duplicates: int = 0
    bad_payloads: int = 0
    acked_event_id: str | None = None  # the event held at acked_seq, for the agent to check (docs/protocol.md)


@dataclass(frozen=True)
class Result:
    rows: list[tuple[Any, ...]]
    rowcount: int

    def one(self) -> tuple[Any, ...] | None:
        return self.rows[0] if self.rows else None


class Database:
    """What the up path needs of a database. SQL is written once with `?` placeholders; a dialect says the rest."""

    integer_type = "INTEGER"
    real_type = "REAL"
    table_suffix = ""
    lock_row = ""  # appended to the SELECT of the stream position inside a batch
    schema_lock = ""  # run first in the schema's transaction: workers starting together create it one at a time
    # run first in a bookkeeping transaction (`bookkeeping()`): what it writes may wait for the next flush
    relaxed_commit = ""

    def execute(self, sql: str, params: Sequence[object] = ()) -> Result:
        raise NotImplementedError

    def executemany(self, sql: str, rows: Sequence[Sequence[object]]) -> int:
        """One statement over many rows; returns the rows changed in all (both drivers sum them)."""
        raise NotImplementedError

    @contextmanager
    def transaction(self) -> Iterator[None]:
        raise NotImplementedError
        yield

    @contextmanager
    def bookkeeping(self) -> Iterator[None]:
        """A transaction for records no peer relies on being on disk when HQ answers (the stores' down_acks: what
        a store holds is what it says in `up/versions` on every connect). PostgreSQL commits it without waiting for
        the WAL flush (synchronous_commit off, this transaction only): atomic and in order as ever, durable a
        fraction of a second later (wal_writer_delay); a crash of PostgreSQL itself in that window loses those
        rows, never part of one. On the 2-core VM this took a push's ack recording from about 60 to over 1,000 acks
        a second (bench/fleet.py, docs/deployment.md). SQLite: the ordinary transaction."""
        with self.transaction():
            if self.relaxed_commit:
                self.execute(self.relaxed_commit)
            yield

    def close(self) -> None:
        raise NotImplementedError

    def create_schema(self) -> None:
        with self.transaction():
            if self.schema_lock:
                self.execute(self.schema_lock)
            for statement in (SCHEMA + CHAIN_SCHEMA).format(int=self.integer_type, strict=self.table_suffix,
                                                             real=self.real_type).split(";"):
                if statement.strip():
                    self.execute(statement)


class SqliteDatabase(Database):
    table_suffix = " STRICT"

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("PRAGMA synchronous = FULL")
        self._conn.execute("PRAGMA busy_timeout = 5000")

    def execute(self, sql: str, params: Sequence[object] = ()) -> Result:
        cur = self._conn.execute(sql, params)
        return Result(cur.fetchall() if cur.description else [], cur.rowcount)

    def executemany(self, sql: str, rows: Sequence[Sequence[object]]) -> int:
        return int(self._conn.executemany(sql, rows).rowcount)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self._conn.execute("BEGIN IMMEDIATE")  # the write lock now, not at the first write: one batch at a time
        try:
            yield
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self._conn.close()


class PostgresDatabase(Database):
    integer_type = "BIGINT"
    real_type = "DOUBLE PRECISION"
    lock_row = " FOR UPDATE"
    # Concurrent CREATE TABLE IF NOT EXISTS races in PostgreSQL (a unique violation in pg_type): a transaction-scoped
    # advisory lock (any constant of ours) makes the workers of a scaled-out HQ create the schema one after another.
    schema_lock = "SELECT pg_advisory_xact_lock(7011001)"
    relaxed_commit = "SET LOCAL synchronous_commit = off"

    def __init__(self, url: str) -> None:
        try:
            import psycopg
        except ImportError as exc:
            raise ValueError(POSTGRES_INSTALL_HINT) from exc
        self._url = url
        self._psycopg = psycopg
        self._conn = psycopg.connect(url, autocommit=True)

    def _live(self) -> Any:
        if self._conn.closed:  # the server went away and came back: the next batch opens a new connection
            self._conn = self._psycopg.connect(self._url, autocommit=True)
        return self._conn

    def execute(self, sql: str, params: Sequence[object] = ()) -> Result:
        cur = self._live().execute(sql.replace("?", "%s"), params)  # no literal ? or % in this module's SQL
        return Result(list(cur.fetchall()) if cur.description else [], cur.rowcount)

    def executemany(self, sql: str, rows: Sequence[Sequence[object]]) -> int:
        with self._live().cursor() as cur:  # psycopg 3 sums the rowcounts of an executemany without RETURNING
            cur.executemany(sql.replace("?", "%s"), rows)
            return int(cur.rowcount)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self._live().transaction():  # COMMIT on leaving, ROLLBACK on an exception
            yield

    def close(self) -> None:
        self._conn.close()


def database_errors() -> tuple[type[Exception], ...]:
    """The exceptions a database raises (psycopg's only when it is installed)."""
    try:
        import psycopg
    except ImportError:
        return (sqlite3.Error,)
    return (sqlite3.Error, psycopg.Error)


def masked_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def open_database(url: str) -> Database:
    """sqlite:///path/to/hq.db or postgresql://user[:password]@host[:port]/dbname; the schema is created."""
    parts = urlsplit(url)
    database: Database
    if parts.scheme == "sqlite" and parts.path:
        database = SqliteDatabase(Path(parts.path))
    elif parts.scheme in ("postgresql", "postgres") and parts.path.strip("/"):
        database = PostgresDatabase(url)
    else:
        raise ValueError("expected sqlite:///path/to/hq.db or postgresql://user:password@host:port/dbname")
    database.create_schema()
    return database


def held_event_id(database: Database, tenant: str, store: str, stream: str, seq: int) -> str | None:
    row = database.execute("SELECT event_id FROM events WHERE tenant = ? AND store_id = ? AND stream = ? AND seq = ?",
                           (tenant, store, stream, seq)).one()
    return str(row[0]) if row else None


def position(database: Database, tenant: str, store: str, stream: str, lock: bool = False) -> int | None:
    """The stream's acked_seq; `lock` (inside a batch's transaction) holds its row until COMMIT."""
    row = database.execute("SELECT acked_seq FROM streams WHERE tenant = ? AND store_id = ? AND stream = ?"
                           + (database.lock_row if lock else ""), (tenant, store, stream)).one()
    return int(row[0]) if row else None


def apply_batch(database: Database, batch: Batch) -> Outcome:
    """Apply the events that continue the stream without a gap, once each; one transaction."""
    with database.transaction():
        return _apply(database, batch, _now())


def _locked_position(database: Database, batch: Batch, now: str) -> int:
    """The stream's position, its row locked; a new stream starts at its own first_seq, never at another's position."""
    database.execute("INSERT INTO streams VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                     (batch.tenant, batch.store, batch.stream, batch.first_seq, batch.first_seq - 1, now, now))
    held = position(database, batch.tenant, batch.store, batch.stream, lock=True)
    assert held is not None  # inserted above or by another worker that committed first
    return held


def _apply(database: Database, batch: Batch, now: str) -> Outcome:
    held = _locked_position(database, batch, now)
    # parse_batch checked that the seqs are consecutive: the events HQ holds already are a prefix of the batch.
    resent = [e for e in batch.events if e.seq <= held]
    fresh_events = batch.events[len(resent):]
    acked, applied, bad = held, 0, 0
    gap_from: int | None = None
    duplicates, error = _check_resent(database, batch, resent)
    if error is None and fresh_events:
        if fresh_events[0].seq > held + 1:
            gap_from = held + 1
        else:
            counted = _apply_all(database, batch, fresh_events, now)
            if counted is None:  # one of them is held already somewhere: event by event, to stop at it
                counted = _apply_each(database, batch, fresh_events, now)
            acked, applied, fresh_dups, bad, error = counted
            duplicates += fresh_dups
            acked = max(acked, held)
    database.execute("UPDATE streams SET acked_seq = ?, last_seen_at = ? "
                     "WHERE tenant = ? AND store_id = ? AND stream = ?",
                     (acked, now, batch.tenant, batch.store, batch.stream))
    _count_wire(database, batch, applied, duplicates)
    return Outcome(acked, gap_from, error, applied, duplicates, bad,
                   held_event_id(database, batch.tenant, batch.store, batch.stream, acked))


Counted = tuple[int, int, int, int, str | None]  # acked through, applied, duplicates, bad payloads, error


def _check_resent(database: Database, batch: Batch, resent: list[WireEvent]) -> tuple[int, str | None]:
    """How many of these are duplicates, up to the first that HQ holds another event at the seq of
    (`seq_conflict`: the same stream numbered anew, a restored database). One query for the lot."""
    if not resent:
        return 0, None
    rows = database.execute("SELECT seq, event_id FROM events WHERE tenant = ? AND store_id = ? AND stream = ? "
                            "AND seq BETWEEN ? AND ?",
                            (batch.tenant, batch.store, batch.stream, resent[0].seq, resent[-1].seq)).rows
    held = {int(seq): str(event_id) for seq, event_id in rows}
    for duplicates, event in enumerate(resent):
        if held.get(event.seq) not in (event.event_id, None):
            return duplicates, "seq_conflict"
    return len(resent), None


def _apply_all(database: Database, batch: Batch, events: Sequence[WireEvent], now: str) -> Counted | None:
    """The usual case, a statement for all the events at once: none of them is held yet (in `events` nor
    `applied_events`). None (and nothing changed) when one is: then `_apply_each` finds which."""
    tenant, store, stream = batch.tenant, batch.store, batch.stream
    database.execute("SAVEPOINT apply_all")
    inserted = database.executemany(
        "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        [(tenant, store, stream, e.seq, e.event_id, e.kind, e.key, e.created_at, dumps(e.payload), now)
         for e in events])
    first_time = inserted == len(events) and database.executemany(
        "INSERT INTO applied_events VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
        [(tenant, store, e.event_id) for e in events]) == len(events)
    if not first_time:
        database.execute("ROLLBACK TO SAVEPOINT apply_all")
        database.execute("RELEASE SAVEPOINT apply_all")
        return None
    sales: list[tuple[Any, ...]] = []
    bad = 0
    for event in events:
        ledger.project(database, tenant, store, event)  # the chain's tables (points, stock, ...)
        if event.kind == "sale":
            row = _sale_row(event.payload)
            if row is None:
                bad += 1
            else:
                sales.append((tenant, store, *row, stream, event.seq, now))
    if sales:
        database.executemany("INSERT INTO sales VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                             sales)
    database.execute("RELEASE SAVEPOINT apply_all")
    return events[-1].seq, len(events), 0, bad, None


def _apply_each(database: Database, batch: Batch, events: Sequence[WireEvent], now: str) -> Counted:
    """Event by event, stopping at one whose id this stream holds at another seq (`seq_conflict`); an event
    applied before under another stream (a restored database resending) counts as a duplicate."""
    acked, applied, duplicates, bad = 0, 0, 0, 0
    for event in events:
        if not _insert_event(database, batch, event, now):
            return acked, applied, duplicates, bad, "seq_conflict"  # the event id is held at another seq
        fresh, valid = _apply_event(database, batch, event, now)
        applied += fresh
        duplicates += not fresh
        bad += not valid
        acked = event.seq
    return acked, applied, duplicates, bad, None


def _count_wire(database: Database, batch: Batch, applied: int, duplicates: int) -> None:
    key = (batch.tenant, batch.store, batch.stream)
    database.execute("INSERT INTO wire_counts VALUES (?, ?, ?, 0, 0, 0, 0, 0) ON CONFLICT DO NOTHING", key)
    database.execute("UPDATE wire_counts SET batches = batches + 1, events = events + ?, applied = applied + ?, "
                     "duplicates = duplicates + ?, skipped = skipped + ? WHERE tenant = ? AND store_id = ? "
                     "AND stream = ?",
                     (len(batch.events), applied, duplicates, len(batch.events) - applied - duplicates, *key))


def _insert_event(database: Database, batch: Batch, event: WireEvent, now: str) -> bool:
    """False when a unique key holds it already (ON CONFLICT, not an error: PostgreSQL would abort the batch)."""
    return database.execute("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                            (batch.tenant, batch.store, batch.stream, event.seq, event.event_id, event.kind,
                             event.key, event.created_at, dumps(event.payload), now)).rowcount == 1


def _apply_event(database: Database, batch: Batch, event: WireEvent, now: str) -> tuple[bool, bool]:
    """(first time this event id is applied, its payload was valid for its kind)."""
    fresh = database.execute("INSERT INTO applied_events VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                             (batch.tenant, batch.store, event.event_id)).rowcount
    if fresh == 0:
        return False, True
    ledger.project(database, batch.tenant, batch.store, event)  # the chain's tables (points, stock, ...)
    if event.kind != "sale":
        return True, True  # kept in `events`; other kinds get their tables with the issues that need them
    row = _sale_row(event.payload)
    if row is None:
        return True, False
    database.execute("INSERT INTO sales VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                     (batch.tenant, batch.store, *row, batch.stream, event.seq, now))
    return True, True


def _sale_row(payload: dict[str, Any]) -> tuple[Any, ...] | None:
    """(sale_id, receipt_no, business_day, the totals) or None when the sale id or a total is missing or not an
    integer. `type(...) is int` refuses bool (a subclass of int) as the isinstance pair did, in one test an event."""
    get = payload.get
    sale_id, gross, discount, total, paid = (get("sale_id"), get("gross_fen"), get("discount_fen"), get("total_fen"),
                                             get("paid_fen"))
    if type(sale_id) is not str or not (type(gross) is type(discount) is type(total) is type(paid) is int):
        return None
    receipt_no, business_day = get("receipt_no"), get("business_day")
    return (sale_id, receipt_no if type(receipt_no) is str else None,
            business_day if type(business_day) is str else None, gross, discount, total, paid)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")
