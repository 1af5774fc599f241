-- posedge schema 4: the outbox's stream (docs/protocol.md, "Streams").
-- outbox.seq is gap-free only within one stream: a database that was replaced or restored from a
-- backup starts a new stream, so HQ never takes its numbers for ones it already holds. One row.
-- The row is written by the agent (posedge.sync.stream), not here: the agent also keeps the stream id
-- in a file beside the database, and a database whose row does not match that file is a restored one.
CREATE TABLE sync_stream (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    stream_id   TEXT NOT NULL,              -- UUIDv7, born with the database (or at a restore)
    first_seq   INTEGER NOT NULL CHECK (first_seq >= 1),  -- the stream's first outbox seq
    born_at     TEXT NOT NULL,
    reason      TEXT NOT NULL               -- new_database | restored | stream_behind | seq_conflict
) STRICT;
