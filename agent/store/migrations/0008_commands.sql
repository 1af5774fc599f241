-- posedge schema 8: HQ's commands (docs/protocol.md 8.8). One row per cmd_id this store took: written
-- before the command runs, so a cmd_id is executed at most once, across restarts (a replay is refused
-- `replayed`). Rows whose command expired more than a day ago are pruned when a new one is taken (a
-- replay of one is refused `expired` anyway).
CREATE TABLE command_log (
    cmd_id      TEXT PRIMARY KEY,
    cmd         TEXT NOT NULL,
    scope       TEXT NOT NULL CHECK (scope IN ('store', 'tenant')),
    exp         INTEGER NOT NULL,              -- the command's exp, epoch seconds
    received_at TEXT NOT NULL,
    result      TEXT CHECK (result IN ('ok', 'refused', 'failed')),  -- NULL: taken, not finished
    reason      TEXT,
    done_at     TEXT
) STRICT;
