"""The agent's numbers as Prometheus metric families, read from one `Agent.status()` at scrape time.

Nothing is counted twice: every value here is one that GET /v1/status already shows (the features'
counters, the writer's, the link's, the devices'), so the scrape and the status can never disagree
about what happened. Only the API's latency is counted as it happens (agent/metrics/latency.py).

`collect()` reads the database (outbox and print queue depths): the scrape runs it in a worker thread.
Labels are bounded: device and printer names come from the config, scanner names the POS gives are
capped by the scan pipeline, states and reasons are fixed sets or codes of ours; never a scanned text,
a member or a payment code.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, Callable, Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
    StateSetMetricFamily,
    SummaryMetricFamily,
)

from posedge.drivers.base import DeviceState

log = logging.getLogger("posedge.agent.metrics")

DEVICE_STATES = tuple(state.value for state in DeviceState)
PRINTER_STATES = ("idle", "ready", "waiting", "disabled")
SYNC_STATES = ("connecting", "connected", "offline", "disabled")
WRITER_COUNTS = {  # storage.commits key -> (metric, help)
    "inline": ("posedge_storage_inline_commits", "Transactions committed on the API's own thread"),
    "batches": ("posedge_storage_batch_commits", "Transactions committed by the writer thread (group commits)"),
    "batched_jobs": ("posedge_storage_batched_writes", "Writes the writer thread's transactions held"),
    "relaxed_batches": ("posedge_storage_relaxed_commits", "Writer transactions committed without their own fsync"),
    "checkpoints": ("posedge_storage_checkpoints", "WAL checkpoints (passive pass)"),
}


class StatusCollector:
    """A prometheus_client collector over a status snapshot (`Agent.status`)."""

    def __init__(self, status: Callable[[], dict[str, Any]]) -> None:
        self.status = status

    def collect(self) -> Iterator[Metric]:
        status = self.status()
        yield from agent_families(status.get("agent", {}))
        yield from storage_families(status.get("storage", {}))
        yield from outbox_families(status.get("outbox", {}))
        yield from sale_families(status.get("sales", {}), status.get("refunds", {}))
        yield from scan_families(status.get("scanners", {}))
        yield from device_families(status.get("scanners", {}).get("devices", []))
        yield from printer_families(status.get("receipts", {}))
        yield from sync_families(status.get("sync", {}))
        yield from config_families(status.get("config"))
        yield from api_families(status.get("api", {}))


def agent_families(agent: dict[str, Any]) -> Iterator[Metric]:
    info = InfoMetricFamily("posedge_agent", "The agent's version and store", labels=["version", "tenant", "store_id"])
    info.add_metric([str(agent.get("version", "")), str(agent.get("tenant", "")), str(agent.get("store_id", ""))], {})
    yield info
    yield _gauge("posedge_agent_uptime_seconds", "Seconds since the agent started", agent.get("uptime_s"))


def storage_families(storage: dict[str, Any]) -> Iterator[Metric]:
    commits = storage.get("commits", {})
    for key, (name, help_) in WRITER_COUNTS.items():
        if isinstance(commits.get(key), int):
            yield CounterMetricFamily(name, help_, value=commits[key])
    if isinstance(commits.get("commit_statements"), int):
        summary = SummaryMetricFamily("posedge_storage_commit_seconds", "COMMIT statements and the time they took",
                                      count_value=commits["commit_statements"],
                                      sum_value=float(commits.get("commit_s_total") or 0.0))
        yield summary
    recent = commits.get("recent_commit_max_ms")
    yield _gauge("posedge_storage_recent_commit_max_seconds", "The slowest of the last 16 fsync'd COMMITs",
                 recent / 1000 if isinstance(recent, (int, float)) else None)
    ok = GaugeMetricFamily("posedge_storage_ok", "1 when storage takes writes, 0 when it failed (state says why)",
                           labels=["state"])
    ok.add_metric([str(storage.get("state", "unknown"))], 1.0 if storage.get("state") == "ok" else 0.0)
    yield ok
    for key, name, help_ in (("size_bytes", "posedge_storage_database_bytes", "The database file's size"),
                             ("wal_bytes", "posedge_storage_wal_bytes", "The write-ahead log's size"),
                             ("free_bytes", "posedge_storage_free_bytes", "Free space on the database's disk")):
        yield _gauge(name, help_, storage.get(key))


def outbox_families(outbox: dict[str, Any]) -> Iterator[Metric]:
    yield _gauge("posedge_outbox_depth", "Events not yet acknowledged by HQ", outbox.get("depth"))
    yield _gauge("posedge_outbox_oldest_pending_age_seconds", "Age of the oldest event HQ has not acknowledged "
                 "(absent when none is pending)", outbox.get("oldest_pending_age_s"))


def sale_families(sales: dict[str, Any], refunds: dict[str, Any]) -> Iterator[Metric]:
    for source, key, name, help_ in (
        (sales, "recorded", "posedge_sales", "Sales recorded since start"),
        (sales, "recorded_fen", "posedge_sales_fen", "Total of the sales recorded since start, in fen"),
        (sales, "replayed", "posedge_sale_retries", "Identical sale retries answered with the first answer"),
        (sales, "conflicts", "posedge_sale_conflicts", "Sales refused: the sale_id came with another body"),
        (refunds, "recorded", "posedge_refunds", "Refunds recorded since start"),
        (refunds, "refunded_fen", "posedge_refunds_fen", "Total refunded since start, in fen"),
        (refunds, "replayed", "posedge_refund_retries", "Identical refund retries answered with the first answer"),
    ):
        if isinstance(source.get(key), int):
            yield CounterMetricFamily(name, help_, value=source[key])


def scan_families(scanners: dict[str, Any]) -> Iterator[Metric]:
    pipeline = scanners.get("pipeline", {})
    scans = CounterMetricFamily("posedge_scans", "Scans classified, by scanner and kind (duplicates as 'duplicate')",
                                labels=["scanner", "kind"])
    for scanner, kinds in sorted(pipeline.get("by_scanner", {}).items()):
        for kind, count in sorted(kinds.items()):
            scans.add_metric([scanner, kind], count)
    yield scans
    rejected = CounterMetricFamily("posedge_scan_rejections", "Scans refused by the pipeline, by reason",
                                   labels=["reason"])
    for reason, count in sorted(pipeline.get("rejected", {}).items()):
        rejected.add_metric([reason], count)
    yield rejected
    events = pipeline.get("events", {})
    yield _gauge("posedge_event_subscribers", "Open GET /v1/events streams", events.get("subscribers"))
    if isinstance(events.get("published"), int):
        yield CounterMetricFamily("posedge_events_published", "Events published to the POS", value=events["published"])
    if isinstance(events.get("cut_off"), int):
        yield CounterMetricFamily("posedge_event_subscribers_cut_off", "Event streams cut off for falling behind",
                                  value=events["cut_off"])


def device_families(devices: list[dict[str, Any]]) -> Iterator[Metric]:
    states = StateSetMetricFamily("posedge_scanner_state", "Each scanner's state", labels=["scanner"])
    counters = CounterMetricFamily("posedge_scanner_events", "Each scanner's counters (scans, rejected_<reason>, ...)",
                                   labels=["scanner", "counter"])
    for device in devices:
        name = str(device.get("name"))
        states.add_metric([name], {state: device.get("state") == state for state in DEVICE_STATES})
        for counter, value in sorted(device.get("counters", {}).items()):
            counters.add_metric([name, counter], value)
    yield states
    yield counters


def printer_families(receipts: dict[str, Any]) -> Iterator[Metric]:
    states = StateSetMetricFamily("posedge_printer_state", "Each printer's state", labels=["printer"])
    queued = GaugeMetricFamily("posedge_print_queue_depth", "Print jobs waiting or being sent", labels=["printer"])
    printed = CounterMetricFamily("posedge_print_jobs_printed", "Print jobs done since start", labels=["printer"])
    failures = CounterMetricFamily("posedge_print_render_failures", "Print jobs that could not be rendered",
                                   labels=["printer"])
    for printer in receipts.get("printers", []):
        name = str(printer.get("name"))
        states.add_metric([name], {state: printer.get("state") == state for state in PRINTER_STATES})
        queued.add_metric([name], printer.get("queued", 0))
        if isinstance(printer.get("printed"), int):
            printed.add_metric([name], printer["printed"])
        if isinstance(printer.get("render_failures"), int):
            failures.add_metric([name], printer["render_failures"])
    yield from (states, queued, printed, failures)


def sync_families(sync: dict[str, Any]) -> Iterator[Metric]:
    state = StateSetMetricFamily("posedge_sync_state", "The HQ link's state", labels=[])
    state.add_metric([], {name: sync.get("state") == name for name in SYNC_STATES})
    yield state
    for key, name, help_ in (("reconnects", "posedge_sync_reconnects", "Connections to the broker after the first"),
                             ("connections", "posedge_sync_connections", "Connections the broker accepted"),
                             ("batches_sent", "posedge_sync_batches_sent", "Batches published to HQ"),
                             ("events_sent", "posedge_sync_events_sent", "Outbox events published to HQ"),
                             ("resends", "posedge_sync_resends", "Batches sent again (go-back-N)"),
                             ("acks", "posedge_sync_acks", "Acknowledgements from HQ"),
                             ("ack_timeouts", "posedge_sync_ack_timeouts", "Batches HQ did not acknowledge in time")):
        if isinstance(sync.get(key), int):
            yield CounterMetricFamily(name, help_, value=sync[key])
    rejected = CounterMetricFamily("posedge_sync_rejected_acks", "Acks from HQ ignored, by reason", labels=["reason"])
    for reason, count in sorted((sync.get("rejected_acks") or {}).items()):
        rejected.add_metric([reason], count)
    yield rejected
    yield _gauge("posedge_sync_last_contact_timestamp_seconds", "When HQ last acknowledged (Unix time)",
                 _timestamp(sync.get("last_contact")))


def config_families(config: Any) -> Iterator[Metric]:
    """The pushed config's version (0 while the agent runs on its file only) and pushes refused."""
    section = config if isinstance(config, dict) else {}
    version = section.get("version")
    yield _gauge("posedge_config_version", "Version of the applied pushed config; 0: the config file only",
                 version if isinstance(version, int) else 0)
    rejected = section.get("rejected")
    count = rejected if isinstance(rejected, int) else len(rejected) if isinstance(rejected, list) else None
    if count is not None:
        yield CounterMetricFamily("posedge_config_rejected", "Pushed configs refused", value=count)


def api_families(api: dict[str, Any]) -> Iterator[Metric]:
    for key, value in sorted(api.items()):
        if isinstance(value, int):
            yield CounterMetricFamily(f"posedge_api_{key}", f"API: {key.replace('_', ' ')} since start", value=value)


def _gauge(name: str, help_: str, value: Any) -> Metric:
    family = GaugeMetricFamily(name, help_)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        family.add_metric([], value)
    return family


def _timestamp(iso: Any) -> float | None:
    if not isinstance(iso, str):
        return None
    try:
        return datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return None
