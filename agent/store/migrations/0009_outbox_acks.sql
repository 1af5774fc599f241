-- posedge schema 9: HQ's cumulative acks kept as positions, one small row an ack (sync/outbox.py), instead of
-- `acked_at` set on every outbox row: marking a drained backlog rewrote every event's page and its index entry
-- (100,000 events: the whole backlog again through the WAL) while the till's checkouts waited on the same disk.
-- An event is acknowledged when its seq <= max(through_seq); it was acknowledged at the acked_at of the first
-- row whose through_seq reaches it (retention reads that). Rows here are pruned with the outbox's.
CREATE TABLE outbox_acks (
    through_seq INTEGER PRIMARY KEY,            -- HQ holds every event up to this seq
    acked_at    TEXT NOT NULL
) STRICT;

-- The position so far: everything before the oldest unacknowledged event (an acked event above it, from an
-- ack by event id, is only sent again: HQ deduplicates it).
INSERT INTO outbox_acks (through_seq, acked_at)
    SELECT max(seq), acked_at FROM outbox
    WHERE acked_at IS NOT NULL
      AND seq < coalesce((SELECT min(seq) FROM outbox WHERE acked_at IS NULL), 9223372036854775807)
    GROUP BY acked_at;

DROP INDEX outbox_pending;
ALTER TABLE outbox DROP COLUMN acked_at;
