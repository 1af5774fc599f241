-- posedge schema: the till loop. Members and points, coupons, pickup orders, stock.
-- Tables that mirror HQ carry the HQ `version` they came from (older pushes are ignored);
-- local changes carry a unique id HQ deduplicates on and a local `seq`. HQ values are
-- "value at version V, including this store's entries up to through_seq" (docs/till.md).

CREATE TABLE members (
    member_id       TEXT PRIMARY KEY,
    version         INTEGER NOT NULL,          -- HQ's version of this record; 0: known only from a member code
    tier            TEXT,
    card_no         TEXT UNIQUE,               -- static member card number
    phone_hash      TEXT,                      -- keyed hash (HMAC-SHA256, [members] phone_hash_key); never the phone
    phone_masked    TEXT,                      -- 138****5678
    consent         INTEGER NOT NULL DEFAULT 0 CHECK (consent IN (0, 1)),  -- marketing consent
    points_base     INTEGER NOT NULL DEFAULT 0,  -- HQ balance at `version`
    points_through  INTEGER NOT NULL DEFAULT 0,  -- local points_entries.seq already inside points_base
    deleted         INTEGER NOT NULL DEFAULT 0 CHECK (deleted IN (0, 1)),  -- tombstone keeps the version
    updated_at      TEXT NOT NULL
) STRICT;

CREATE INDEX members_phone ON members (phone_hash) WHERE phone_hash IS NOT NULL;

CREATE TABLE points_entries (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    entry_id    TEXT NOT NULL UNIQUE,          -- UUIDv7; HQ deduplicates on it
    member_id   TEXT NOT NULL,
    delta       INTEGER NOT NULL,
    reason      TEXT NOT NULL,                 -- earn | redeem | refund_earn | refund_redeem
    sale_id     TEXT,
    refund_id   TEXT,
    created_at  TEXT NOT NULL
) STRICT;

CREATE INDEX points_entries_member ON points_entries (member_id, seq, delta);  -- covers the balance sum

-- Till side of a sale: who, what the coupons and points did line by line (for refunds).
CREATE TABLE till_sales (
    sale_id          TEXT PRIMARY KEY REFERENCES sales(sale_id),
    member_id        TEXT,
    tier             TEXT,
    coupon_discount_fen INTEGER NOT NULL CHECK (coupon_discount_fen >= 0),
    points_redeemed  INTEGER NOT NULL CHECK (points_redeemed >= 0),
    points_discount_fen INTEGER NOT NULL CHECK (points_discount_fen >= 0),
    points_earned    INTEGER NOT NULL CHECK (points_earned >= 0),
    lines            TEXT NOT NULL              -- JSON: priced lines (net per line after every discount)
) STRICT;

CREATE TABLE coupon_redemptions (
    redemption_id   TEXT PRIMARY KEY,          -- UUIDv7
    coupon_id       TEXT NOT NULL,             -- the code's jti
    campaign        TEXT NOT NULL,
    sale_id         TEXT NOT NULL REFERENCES sales(sale_id),
    member_id       TEXT,
    discount_fen    INTEGER NOT NULL CHECK (discount_fen >= 0),
    mode            TEXT NOT NULL CHECK (mode IN ('online', 'offline', 'override')),
    till            TEXT,
    business_day    TEXT NOT NULL,
    override_by     TEXT,                      -- manager, when mode = 'override'
    override_reason TEXT,
    redeemed_at     TEXT NOT NULL,
    returned_at     TEXT,                      -- a refund gave the coupon back ([coupons] return_on_refund)
    refund_id       TEXT
) STRICT;

-- A coupon is redeemed at most once in this store; a returned coupon may be redeemed again.
CREATE UNIQUE INDEX coupon_redeemed_once ON coupon_redemptions (coupon_id) WHERE returned_at IS NULL;
CREATE INDEX coupon_offline_day ON coupon_redemptions (business_day, till) WHERE mode = 'offline';

CREATE TABLE revocations (
    scope       TEXT NOT NULL CHECK (scope IN ('campaign', 'coupon')),
    ref         TEXT NOT NULL,
    version     INTEGER NOT NULL,
    revoked     INTEGER NOT NULL CHECK (revoked IN (0, 1)),  -- 0: HQ lifted it (kept for its version)
    reason      TEXT,
    updated_at  TEXT NOT NULL,
    PRIMARY KEY (scope, ref)
) STRICT;

-- HQ's later verdict on an offline-accepted redemption (e.g. the coupon was also used elsewhere).
CREATE TABLE coupon_verdicts (
    coupon_id     TEXT PRIMARY KEY,
    verdict       TEXT NOT NULL,               -- double_redemption | confirmed
    other_store   TEXT,
    detail        TEXT,
    version       INTEGER NOT NULL,
    received_at   TEXT NOT NULL,
    seen          INTEGER NOT NULL DEFAULT 0 CHECK (seen IN (0, 1))
) STRICT;

CREATE TABLE pickups (
    order_id      TEXT PRIMARY KEY,
    version       INTEGER NOT NULL,
    state         TEXT NOT NULL,               -- from HQ: ready | cancelled | collected ...
    items         TEXT NOT NULL,               -- JSON list of {sku, name, qty}
    phone_masked  TEXT,
    member_id     TEXT,
    deleted       INTEGER NOT NULL DEFAULT 0 CHECK (deleted IN (0, 1)),
    updated_at    TEXT NOT NULL
) STRICT;

-- A collection is recorded once (primary key): a second collect is a conflict.
CREATE TABLE pickup_collections (
    order_id      TEXT PRIMARY KEY,
    collected_at  TEXT NOT NULL,
    till          TEXT,
    cashier       TEXT
) STRICT;

CREATE TABLE stock (
    sku           TEXT PRIMARY KEY,
    version       INTEGER NOT NULL,
    qty           INTEGER NOT NULL,            -- HQ's quantity at `version`
    through_seq   INTEGER NOT NULL DEFAULT 0,  -- local stock_movements.seq already inside qty
    updated_at    TEXT NOT NULL
) STRICT;

CREATE TABLE stock_movements (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    movement_id  TEXT NOT NULL UNIQUE,
    sku          TEXT NOT NULL,
    delta        INTEGER NOT NULL,             -- pieces, or grams / millilitres for weighed goods
    reason       TEXT NOT NULL,                -- sale | refund | adjustment
    sale_id      TEXT,
    refund_id    TEXT,
    created_at   TEXT NOT NULL
) STRICT;

CREATE INDEX stock_movements_sku ON stock_movements (sku, seq, delta);  -- covers the on-hand sum

-- A sale without a member: what its claim code is worth, honoured once by HQ.
CREATE TABLE pending_claims (
    sale_id      TEXT PRIMARY KEY REFERENCES sales(sale_id),
    points       INTEGER NOT NULL CHECK (points >= 0),     -- what the sale was worth
    points_refunded INTEGER NOT NULL DEFAULT 0 CHECK (points_refunded >= 0),  -- taken back by refunds
    amount_fen   INTEGER NOT NULL CHECK (amount_fen >= 0),
    expires_at   TEXT NOT NULL,
    token        TEXT,                         -- the signed claim code (the store key), when a signer is wired
    created_at   TEXT NOT NULL
) STRICT;

CREATE TABLE refunds (
    refund_id     TEXT PRIMARY KEY,
    sale_id       TEXT NOT NULL REFERENCES sales(sale_id),
    body_sha256   TEXT NOT NULL,
    refund_fen    INTEGER NOT NULL CHECK (refund_fen >= 0),
    lines         TEXT NOT NULL,               -- JSON: [{line_no, qty, refund_fen}]
    response      TEXT NOT NULL,
    created_at    TEXT NOT NULL
) STRICT;

CREATE INDEX refunds_sale ON refunds (sale_id);

-- When this store last heard from HQ (the offline coupon policy counts hours from it).
CREATE TABLE hq_contact (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    last_contact_at TEXT NOT NULL,
    source        TEXT NOT NULL                -- link | import
) STRICT;
