"""The `[retention]` table: how long the store keeps what it no longer needs, and how it prunes.

One field on `Config` (agent/config.py). Every key is documented in config.example.toml; the rules the
ages feed are in rules.py and docs/operations.md ("Retention").
"""

from __future__ import annotations

from pydantic import Field

from posedge.agent.config import ConfigModel


class RetentionConfig(ConfigModel):
    enabled: bool = Field(True, description="false: never prune (the database grows with every sale)")
    sales_days: int = Field(
        90, ge=7, le=3650,
        description="a sale is kept this many days after it was recorded: its refund and reprint window",
    )
    outbox_acked_days: int = Field(
        7, ge=1, le=3650, description="an outbox event HQ acknowledged is kept this many days (never unacknowledged)",
    )
    print_jobs_days: int = Field(
        7, ge=1, le=3650,
        description="a done reprint job is kept this many days (a sale's receipt job stays with the sale)",
    )
    batch_rows: int = Field(
        200, ge=10, le=5000, description="most rows of one kind one prune transaction deletes (keeps it short)",
    )
    interval_s: float = Field(3600.0, ge=10, le=86400, description="a prune pass runs this often (and once at start)")
    pause_ms: int = Field(
        50, ge=0, le=10000, description="rest between two prune transactions of a pass, so sales commit between them",
    )
