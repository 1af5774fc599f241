-- posedge schema 1: sales, their lines and payments, receipt numbering, the outbox.
-- STRICT tables: an INTEGER column refuses a float, so money can only be integer fen.

CREATE TABLE sales (
    sale_id       TEXT PRIMARY KEY,         -- from the POS (or a UUIDv7); HQ deduplicates on it
    receipt_no    TEXT NOT NULL UNIQUE,     -- store-local, YYYYMMDD-NNNN in the store's time zone
    body_sha256   TEXT NOT NULL,            -- canonical request body: same id + other body = conflict
    business_day  TEXT NOT NULL,
    occurred_at   TEXT NOT NULL,            -- ISO 8601 with offset, as the POS said (or recorded_at)
    recorded_at   TEXT NOT NULL,            -- ISO 8601 UTC, when the agent committed it
    till          TEXT,
    cashier       TEXT,
    member_id     TEXT,
    gross_fen     INTEGER NOT NULL CHECK (gross_fen >= 0),
    discount_fen  INTEGER NOT NULL CHECK (discount_fen >= 0),
    total_fen     INTEGER NOT NULL CHECK (total_fen >= 0),
    paid_fen      INTEGER NOT NULL CHECK (paid_fen >= 0),
    response      TEXT NOT NULL             -- the answer of the first commit, replayed to identical retries
) STRICT;

CREATE TABLE sale_lines (
    sale_id         TEXT NOT NULL REFERENCES sales(sale_id),
    line_no         INTEGER NOT NULL,
    sku             TEXT NOT NULL,
    name            TEXT,
    qty             INTEGER NOT NULL CHECK (qty > 0),
    unit            TEXT NOT NULL,          -- pcs | g | ml
    unit_price_fen  INTEGER NOT NULL CHECK (unit_price_fen >= 0),
    discount_fen    INTEGER NOT NULL CHECK (discount_fen >= 0),
    amount_fen      INTEGER NOT NULL CHECK (amount_fen >= 0),
    PRIMARY KEY (sale_id, line_no)
) STRICT;

CREATE TABLE sale_payments (
    sale_id           TEXT NOT NULL REFERENCES sales(sale_id),
    seq               INTEGER NOT NULL,
    method            TEXT NOT NULL,
    amount_fen        INTEGER NOT NULL CHECK (amount_fen > 0),
    reference_masked  TEXT,                 -- never the clear reference
    PRIMARY KEY (sale_id, seq)
) STRICT;

CREATE TABLE receipt_counters (
    business_day  TEXT PRIMARY KEY,
    last_no       INTEGER NOT NULL
) STRICT;

-- Up-events for HQ, appended in the same transaction as the change they describe.
CREATE TABLE outbox (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id    TEXT NOT NULL UNIQUE,       -- UUIDv7; HQ deduplicates on it
    kind        TEXT NOT NULL,
    key         TEXT NOT NULL,              -- the aggregate it is about (sale id, coupon id...)
    payload     TEXT NOT NULL,              -- JSON
    created_at  TEXT NOT NULL,
    sent_at     TEXT,
    acked_at    TEXT,
    attempts    INTEGER NOT NULL DEFAULT 0
) STRICT;

CREATE INDEX outbox_pending ON outbox (seq) WHERE acked_at IS NULL;
