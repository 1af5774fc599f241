-- posedge schema 2: the durable print queue. A receipt job is inserted in the sale's transaction.

CREATE TABLE print_jobs (
    job_id               INTEGER PRIMARY KEY AUTOINCREMENT,  -- print order
    kind                 TEXT NOT NULL,                      -- receipt | reprint
    receipt_no           TEXT NOT NULL,
    sale_id              TEXT NOT NULL,
    printer              TEXT NOT NULL,                      -- [[printers]] name
    facts                TEXT NOT NULL,                      -- JSON snapshot of what the receipt shows
    copy                 INTEGER NOT NULL DEFAULT 0,         -- 1: printed marked as a copy
    state                TEXT NOT NULL DEFAULT 'pending',    -- pending | sending | done | failed
    possibly_duplicated  INTEGER NOT NULL DEFAULT 0,         -- bytes may already have reached the printer
    attempts             INTEGER NOT NULL DEFAULT 0,
    last_error           TEXT,
    created_at           TEXT NOT NULL,
    done_at              TEXT
) STRICT;

CREATE INDEX print_jobs_open ON print_jobs (printer, job_id) WHERE state IN ('pending', 'sending');
CREATE INDEX print_jobs_receipt ON print_jobs (receipt_no, job_id);
