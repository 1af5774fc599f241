"""The agent: composes the store, the devices and the API, and starts and stops them in order."""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from datetime import datetime, timezone
from typing import Any, Callable

from posedge import __version__
from posedge.agent.activity import TillActivity
from posedge.agent.commands.feature import Commands, wire as wire_commands
from posedge.agent.config import Config
from posedge.agent.errors import StorageError
from posedge.agent.events import EventHub
from posedge.agent.feature import Feature, Reconfigurable
from posedge.agent.hq_sync.confirmer import HqConfirmer
from posedge.agent.hq_sync.feature import HqSync
from posedge.agent.hq_sync.inbox import RecordsInbox
from posedge.agent.metrics.feature import Metrics
from posedge.agent.receipts.feature import Receipts
from posedge.agent.reconfig.feature import ApplyResult, PushedConfig
from posedge.agent.retention.feature import Retention
from posedge.agent.sales import SaleService
from posedge.agent.scans.feature import Scans
from posedge.agent.store.reader import StoreReader
from posedge.agent.store.writer import StoreWriter
from posedge.agent.till.feature import Till, receipt_facts
from posedge.agent.till.refunds import Refunds
from posedge.agent.token import load_or_create_token
from posedge.sync import outbox

log = logging.getLogger("posedge.agent")

StatusProvider = Callable[[], dict[str, Any]]
# Tables that take effect only at a restart (none of them can be pushed; a SIGHUP that changes one keeps
# the running values and says so).
RESTART_ONLY = ("store", "storage", "api", "mqtt", "events")


class Agent:
    def __init__(self, config: Config, file_raw: dict[str, Any] | None = None, source: str = "<config>") -> None:
        """`file_raw`: the config file's tables as read (pushed config merges over them); None: `config`'s own."""
        # HQ's last good pushed documents (on disk) run from the start, merged over the file.
        self.pushed_config = PushedConfig(config, config.model_dump() if file_raw is None else file_raw, source)
        config = self.pushed_config.effective_at_start(config)
        self.config_path = source if file_raw is not None else None  # what reload (SIGHUP, HQ's command) reads
        self.config = config
        self._apply_lock = asyncio.Lock()
        self.started_at = datetime.now(timezone.utc)
        self._started_mono = time.monotonic()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.token = load_or_create_token(config.api.token_file, _secret(config.api.token))
        self.status_providers: dict[str, StatusProvider] = {}
        self.till_activity = TillActivity()  # POSTs being served (counted by the API's guard)

        storage = config.storage
        self.writer = StoreWriter(storage.path, group_commit_max=storage.group_commit_max,
                                  busy_timeout_ms=storage.busy_timeout_ms, inline_max_ms=storage.inline_max_ms)
        self.reader = StoreReader(storage.path, busy_timeout_ms=storage.busy_timeout_ms)
        self.events = EventHub(config.events.buffer)

        # The features, in order: each starts after the ones before it and stops before them, and its sale
        # participants come after theirs (the receipt's contributors read what the till wrote).
        self.metrics = Metrics(self.status, self.events)  # first: it keeps the warnings of the others' start
        self.scanning = Scans(config, self.events)
        self.till = Till(config, self.reader, self.writer)
        self.receipts = Receipts(config, self.writer.submit, self.reader)
        self.sync = HqSync(config, self.reader, self.writer)  # last: it starts once the others serve
        self.retention = Retention(config.retention, self.writer)
        self.commands = Commands(config, self.writer)  # HQ's signed commands (agent/commands/)
        self.features: list[Feature] = [self.metrics, self.scanning, self.till, self.receipts, self.pushed_config,
                                        self.commands, self.sync, self.retention]

        self.scans = self.scanning.pipeline  # POST /v1/scans and payment-code claims go to it
        self.refunds = Refunds(self.writer, config.coupons.return_on_refund)
        self.sales = SaleService(self.writer, self.reader, config.store)
        self.status_providers.update(sales=self.sales.status, refunds=self.refunds.status)
        for feature in self.features:
            feature.listeners.append(self.events.publish)  # what a feature tells the POS reaches GET /v1/events
            self.sales.participants += feature.participants
            self.status_providers[feature.name] = feature.status
        self._link_features()

    def _link_features(self) -> None:
        """What one feature needs of another: the till prices the sale and resolves member, coupon and pickup
        scans; the receipt prints the till's facts and the claim the till signed with the store's key."""
        self.sales.pricing = self.till
        self.scans.add_resolver(("member", "coupon", "pickup"), self.till.scan_resolver)
        self.receipts.participant.contributors.append(receipt_facts)
        self.sync.feature_status = {"till": self.till.status, "receipts": self.receipts.status,
                                    "scans": self.scanning.status}  # what the retained MQTT status reports
        RecordsInbox(self.sync, self.till).register()  # HQ's records documents go through the till's apply logic
        self.pushed_config.apply = self.apply_config
        self.pushed_config.send = self.sync.send
        self.sync.down_routes["config"] = self.pushed_config.on_down
        self.sync.config_version = self.pushed_config.version
        self.sync.version_sources.append(self.pushed_config.versions)
        self.sync.till_busy = self.till_activity.busy  # the drain gives way to checkouts
        self.sync.till_waiting = self.till_activity.waiting  # and never to one that waits for the link
        wire_commands(self)  # HQ's commands: reload, resync, diagnostics, rotate_token, over down/command
        if self.receipts.signer is not None:
            self.till.claim_signer = self.receipts.signer.for_store(self.config.store.tenant, self.config.store.id)
        if self.config.mqtt.enabled:  # the till asks HQ over the link (HQ's verdicts come as records documents)
            self.till.confirmer = HqConfirmer(self.config, self.sync, self.writer, self.till_activity)

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        failure = await asyncio.to_thread(self.writer.start)
        if failure is not None:
            log.error("event=agent_degraded reason=%s message=%r", failure.code, failure.message)
        for feature in self.features:
            await feature.start()
        log.info("event=agent_started version=%s store=%s/%s", __version__, self.config.store.tenant,
                 self.config.store.id)

    def stop_requested(self) -> None:
        """At SIGTERM, at once (a signal handler, on the loop's thread): scans read from now on are not acted on."""
        self.scanning.pipeline.close_intake()

    async def stop_taking_scans(self) -> None:
        """A stop's first step, before the API drains: scanners closed, scans read before the stop processed,
        then the event streams end (so the API's wait for requests in flight is short)."""
        await self.scanning.stop_intake()
        self.events.close_streams()

    async def stop(self) -> None:
        """The rest of the stop, once the API has answered the requests in flight (docs/architecture.md,
        "Stopping"): scans (again, if not done), the print queue settled, then every feature in reverse order
        (the sync link flushes its window and says offline; printers and other devices close), the store."""
        await self.stop_taking_scans()
        await self.receipts.settle()
        for feature in reversed(self.features):
            await feature.stop()
        await asyncio.to_thread(self.writer.stop)
        self.reader.close()
        log.info("event=agent_stopped")

    # -- config, live ------------------------------------------------------------------------
    async def apply_config(self, new: Config) -> ApplyResult:
        """Make `new` the running config: each feature re-creates what its changed tables need
        (`Reconfigurable`); when one fails, those already changed are put back (swapped arguments) and the
        previous config keeps running. Used by pushed config and by SIGHUP's reload; on the loop."""
        async with self._apply_lock:
            old = self.config
            held_back = tuple(t for t in RESTART_ONLY if getattr(new, t) != getattr(old, t))
            if held_back:
                log.warning("event=config_needs_restart tables=%s (running values kept until a restart)",
                            ",".join(held_back))
                new = new.model_copy(update={t: getattr(old, t) for t in held_back})
            changed = tuple(name for name in Config.model_fields if getattr(new, name) != getattr(old, name))
            if not changed:
                return ApplyResult(True, (), None, held_back)
            done: list[Reconfigurable] = []
            try:
                for feature in self.features:
                    if isinstance(feature, Reconfigurable):
                        done.append(feature)
                        await feature.reconfigure(old, new)
            except Exception as exc:
                log.error("event=config_apply_failed tables=%s error=%r (rolling back)", ",".join(changed), str(exc))
                await self._roll_back(done, new, old)
                return ApplyResult(False, changed, f"{exc.__class__.__name__}: {exc}", held_back)
            self._use_config(new)
            log.info("event=config_applied tables=%s", ",".join(changed))
            return ApplyResult(True, changed, None, held_back)

    async def _roll_back(self, done: list[Reconfigurable], new: Config, old: Config) -> None:
        for feature in reversed(done):
            try:
                await feature.reconfigure(new, old)
            except Exception:  # keep restoring the others; this one's status shows what it lacks
                log.exception("event=config_rollback_failed feature=%s", getattr(feature, "name", "?"))

    def _use_config(self, new: Config) -> None:
        self.config = new
        self.refunds.return_coupons = new.coupons.return_on_refund
        self.sync.config = new

    # -- health and status -----------------------------------------------------------------
    def storage_failure(self) -> StorageError | None:
        return self.writer.failure

    def health(self) -> dict[str, Any]:
        failure = self.storage_failure()
        if failure is None:
            return {"status": "ok", "version": __version__}
        return {"status": "degraded", "version": __version__, "problems": [failure.body()]}

    def status(self) -> dict[str, Any]:
        """Everything `GET /v1/status` and `posedge status` show. Reads the database: call off the loop."""
        status = {
            "agent": {
                "version": __version__,
                "started_at": self.started_at.isoformat(),
                "uptime_s": round(time.monotonic() - self._started_mono, 1),
                "tenant": self.config.store.tenant,
                "store_id": self.config.store.id,
            },
            "storage": storage_status(self),
            "outbox": outbox_status(self.reader),
            "devices": [device.status().as_dict() for device in self.scanning.devices],
        }
        for name, provider in self.status_providers.items():
            try:
                status[name] = provider()
            except Exception as exc:  # one broken section must not hide the others
                log.exception("event=status_provider_failed section=%s", name)
                status[name] = {"error": f"{exc.__class__.__name__}: {exc}"}
        return status


def storage_status(agent: Agent) -> dict[str, Any]:
    path = agent.config.storage.path
    failure = agent.storage_failure()
    info: dict[str, Any] = {"path": str(path), "state": "ok" if failure is None else failure.code,
                            "commits": agent.writer.status()}
    if failure is not None:
        info["error"] = failure.message
    for suffix, key in (("", "size_bytes"), ("-wal", "wal_bytes")):
        try:
            info[key] = (path.parent / (path.name + suffix)).stat().st_size
        except OSError:
            info[key] = None
    try:
        info["free_bytes"] = shutil.disk_usage(path.parent).free
    except OSError:
        info["free_bytes"] = None
    return info


def outbox_status(reader: StoreReader) -> dict[str, Any]:
    try:
        stats = reader.read_sync(outbox.stats)
    except StorageError as exc:
        return {"depth": None, "error": exc.message}
    age = stats.oldest_age_s()
    return {
        "depth": stats.depth,
        "oldest_pending_at": stats.oldest_created_at.isoformat() if stats.oldest_created_at else None,
        "oldest_pending_age_s": round(age, 1) if age is not None else None,
    }


def _secret(value: Any) -> str | None:
    return value.get_secret_value() if value is not None else None
