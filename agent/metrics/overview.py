"""The status page's read-only view (`GET /v1/overview`, no token): chosen fields of GET /v1/status.

It is built by picking fields, never by removing some, so a field added to the status later does not
show up here unseen. What it holds: states, counts, ages and times, device names and their problems,
the last scans masked (only product codes, GTIN and GS1, in clear), and recent WARNING/ERROR log lines
(which never hold personal data). No member data, no payment reference, no code text but products'.
"""

from __future__ import annotations

from typing import Any, Iterable

from posedge.agent.events import Event, mask_payment_code, mask_payment_runs

CLEAR_KINDS = frozenset({"gtin", "gs1"})  # product codes: nobody's data
LAST_SCANS = 10
MASKED_MAX = 24  # a signed member code is hundreds of characters: its stars are shortened


def overview(status: dict[str, Any], events: Iterable[Event], problems: list[dict[str, Any]]) -> dict[str, Any]:
    agent = status.get("agent", {})
    storage = status.get("storage", {})
    outbox = status.get("outbox", {})
    sync = status.get("sync", {})
    pipeline = status.get("scanners", {}).get("pipeline", {})
    return {
        "agent": _pick(agent, "version", "started_at", "uptime_s", "tenant", "store_id"),
        "storage": _pick(storage, "state", "error", "size_bytes", "wal_bytes", "free_bytes"),
        "outbox": _pick(outbox, "depth", "oldest_pending_at", "oldest_pending_age_s", "error"),
        "sync": _pick(sync, "state", "last_contact", "last_error", "acked_seq", "reconnects"),
        "config": config_view(status.get("config")),
        "scanners": [_pick(d, "name", "type", "state", "last_error", "since") for d in
                     status.get("scanners", {}).get("devices", [])],
        "printers": [_pick(p, "name", "type", "state", "problem", "last_error", "reason", "queued", "printed")
                     for p in status.get("receipts", {}).get("printers", [])],
        "scans": {"by_kind": dict(pipeline.get("by_kind", {})), "rejected": dict(pipeline.get("rejected", {})),
                  "last": last_scans(events)},
        "sales": _pick(status.get("sales", {}), "recorded", "replayed", "conflicts"),
        "refunds": _pick(status.get("refunds", {}), "recorded", "replayed"),
        "problems": problems,
    }


def config_view(config: Any) -> dict[str, Any]:
    """The pushed config's version and refusals when the agent reports them; else the file only (version 0)."""
    if isinstance(config, dict) and isinstance(config.get("version"), int):
        return {"version": config["version"], "source": "pushed" if config["version"] else "file only",
                "rejected": config.get("rejected")}
    return {"version": 0, "source": "file only", "rejected": None}


def last_scans(events: Iterable[Event], limit: int = LAST_SCANS) -> list[dict[str, Any]]:
    """Newest first: when, which scanner, what kind, the text masked unless it is a product code."""
    scans = [e for e in events if e.type == "scan"][-limit:]
    return [{"id": e.id, "at": e.data.get("at"), "scanner": e.data.get("scanner"), "kind": e.data.get("kind"),
             "text": scan_text(e.data)} for e in reversed(scans)]


def scan_text(data: dict[str, Any]) -> str:
    text = str(data.get("text", ""))
    if data.get("kind") in CLEAR_KINDS:
        return mask_payment_runs(text)
    masked = mask_payment_code(text)  # as payment codes are shown everywhere: wallet digits and last four
    return masked if len(masked) <= MASKED_MAX else masked[:2] + "*" * 8 + masked[-4:]


def _pick(source: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {key: source[key] for key in keys if key in source}
