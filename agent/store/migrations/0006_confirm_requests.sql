-- posedge schema 5: numbers of online coupon confirmations (docs/protocol.md 8.6, docs/till.md).
-- A request_no is "<store>-<till>-<seq>" and must never repeat: HQ may pass it on as the payment
-- platform's idempotency key. One row per till ('' for a sale without a till) holds the last seq handed
-- out; the next is max(last + 1, now in epoch milliseconds), so a restart never reuses one, nor does a
-- database restored from a backup (the clock has moved on), nor a clock set back (the row has not).
CREATE TABLE confirm_requests (
    till        TEXT PRIMARY KEY,
    last_seq    INTEGER NOT NULL CHECK (last_seq >= 1),
    updated_at  TEXT NOT NULL
) STRICT;
