-- posedge schema 5: the down path (docs/protocol.md section 8).
-- down_versions: the version of each HQ records document (kind, scope) this store applied; a document not
-- newer than it is ignored. `up/versions` on every connect tells HQ these, and HQ resends what is newer.
CREATE TABLE down_versions (
    kind        TEXT NOT NULL,                 -- members | stock | coupons | revocations | pickups | verdicts | erase
    scope       TEXT NOT NULL CHECK (scope IN ('store', 'tenant')),
    version     INTEGER NOT NULL CHECK (version >= 1),
    msg_id      TEXT NOT NULL,                 -- the document's msg_id
    applied_at  TEXT NOT NULL,
    PRIMARY KEY (kind, scope)
) STRICT;

-- HQ's issued coupons with their status (`coupons` records): a coupon HQ says is revoked or was
-- redeemed elsewhere is refused at the till, as a revocation is.
CREATE TABLE hq_coupons (
    coupon_id   TEXT PRIMARY KEY,              -- the code's jti
    version     INTEGER NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('issued', 'revoked', 'redeemed')),
    campaign    TEXT,
    redeemed_at_store TEXT,                    -- where HQ saw it redeemed, when status = 'redeemed'
    reason      TEXT,
    deleted     INTEGER NOT NULL DEFAULT 0 CHECK (deleted IN (0, 1)),
    updated_at  TEXT NOT NULL
) STRICT;

-- Member erasure (PIPL): the member's row is deleted and every row that named them names `pseudonym`
-- instead. The tombstone keeps a salted hash of the member id (never the id) and the newest version the
-- store had seen, so a replayed older `members` record cannot bring the member back.
CREATE TABLE erased_members (
    pseudonym   TEXT PRIMARY KEY,              -- erased-<24 hex of sha256(salt:member_id)>
    version     INTEGER NOT NULL,
    erased_at   TEXT NOT NULL
) STRICT;

CREATE TABLE erasure_salt (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    salt        TEXT NOT NULL                  -- random, born with this database
) STRICT;

INSERT INTO erasure_salt (id, salt) VALUES (1, lower(hex(randomblob(32))));
